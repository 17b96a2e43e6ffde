"""Writing ``manifest.json``: file hashes, tool versions and atomic, durable JSON writes.

The manifest's format and its read-only view live in :mod:`tritonfleet.clients.manifest`
(everything that only reads a repository uses that); the builder fills it in through
:mod:`.records` and commits it last (:mod:`.journal`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

TOOLS = ("tritonfleet", "torch", "onnx", "onnxruntime", "onnxscript", "onnxconverter-common", "tritonclient",
         "nvidia-pytriton", "numpy", "tensorrt", "polygraphy")

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file under ``root``.

    ``__pycache__`` is left out: Triton's Python-backend stub writes bytecode beside the
    ``model.py`` it imports, in the version folders of a served repository.
    """
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def fsync_dir(path: Path) -> None:
    """Make the entries of a folder (renames into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside ``path``, fsync it, rename it into place and
    fsync the folder: after a crash the file is either the old one or the new one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
