"""``manifest.json``: what built each model of a repository, and how close it is to PyTorch.

One file at the repository root. For every model: the pipeline that owns it, its kind,
version, the sha256 of each file and its parity records; for every pipeline: the resolved
spec, its target and the tool versions that built it.
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

from builder.errors import RepositoryError

MANIFEST = "manifest.json"
FORMAT = 1
TOOLS = ("tritonfleet", "torch", "onnx", "onnxruntime", "onnxscript", "tritonclient",
         "nvidia-pytriton", "numpy", "tensorrt", "polygraphy")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def hash_tree(root: Path) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file under ``root``."""
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


def empty_manifest() -> dict[str, Any]:
    return {"format": FORMAT, "pipelines": {}, "models": {}}


def read_manifest(repo: Path) -> dict[str, Any]:
    path = Path(repo) / MANIFEST
    if not path.is_file():
        return empty_manifest()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RepositoryError(
            f"{path} is not valid JSON ({exc}); restore it from a backup or rebuild into an "
            "empty output_dir"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RepositoryError(f"{path} is not a tritonfleet manifest (format {FORMAT})")
    return data


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temporary file beside ``path`` and rename it into place."""
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
