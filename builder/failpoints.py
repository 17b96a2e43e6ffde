"""Named fault points for the interrupted-build tests.

``failpoint("after-export")`` does nothing unless the environment variable
``TRITONFLEET_FAILPOINT`` names that point (never, outside tests):

* ``TRITONFLEET_FAILPOINT=after-export`` kills the process there with SIGKILL, as the kernel's
  OOM killer or a crash would. A killed process loses nothing the kernel already has, so this
  tests the journal's recovery, not durability across a power cut; that rests on the commit's
  fsync order (files before they are renamed into place, folders after), which
  ``tests/test_reliability.py::test_the_commit_fsyncs_before_it_renames`` checks call by call;
* ``TRITONFLEET_FAILPOINT=after-export:eio`` raises ``OSError(EIO)`` there instead, as a failing
  disk would: the error path (roll back, one clear message) runs for real.
"""

from __future__ import annotations

import errno
import os
import signal
from pathlib import Path

ENV = "TRITONFLEET_FAILPOINT"


def failpoint(name: str, path: str | Path | None = None) -> None:
    """Kill the process, or raise an I/O error about ``path``, where the environment names ``name``."""
    wanted = os.environ.get(ENV)
    if wanted == name:
        os.kill(os.getpid(), signal.SIGKILL)
    elif wanted == f"{name}:eio":
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path) if path is not None else None)
