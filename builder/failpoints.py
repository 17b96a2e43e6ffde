"""Named crash points for the interrupted-build tests.

``failpoint("after-export")`` kills the process with SIGKILL when the environment variable
``TRITONFLEET_FAILPOINT`` names that point, which lets a test interrupt a build exactly
there, as a power cut or an OOM kill would. Unset (always, outside tests) it does nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "TRITONFLEET_FAILPOINT"


def failpoint(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
