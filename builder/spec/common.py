"""Building blocks of the spec schema: strict models, names, dtypes and paths.

Relative paths in a spec are resolved against the folder of the spec file, which
:func:`tritonfleet.builder.spec.load.parse_spec` passes as validation context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo

from tritonfleet.clients.dtypes import DTYPE_NAMES
from tritonfleet.clients.vocabulary import Precision  # noqa: F401  (re-exported for the schema)

# Triton accepts almost any folder name; tritonfleet keeps names that are safe as a
# single path component on every OS and in URLs: no separators, no dots, no "..".
MODEL_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
TENSOR_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$"
MAX_BATCH_LIMIT = 4096

ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
TensorName = Annotated[str, Field(pattern=TENSOR_NAME_PATTERN)]
DType = Literal[DTYPE_NAMES]  # type: ignore[valid-type]


# --------------------------------------------------------------------------- paths
def _resolve(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    path = path.expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path.resolve()


def _existing_file(path: Path, info: ValidationInfo) -> Path:
    resolved = _resolve(path, info)
    if not resolved.is_file():
        raise ValueError(
            f"file not found: {resolved} (relative paths are resolved against the spec's folder)"
        )
    return resolved


ExistingFile = Annotated[Path, AfterValidator(_existing_file)]


def _architecture(value: str, info: ValidationInfo) -> str:
    """``pkg.module:Class`` stays; ``file.py:Class`` gets an absolute, existing path."""
    target, sep, class_name = value.rpartition(":")
    if not sep or not target or not class_name.isidentifier():
        raise ValueError(
            f"'{value}' must look like 'package.module:Class' or 'path/to/file.py:Class'"
        )
    if target.endswith(".py"):
        return f"{_existing_file(Path(target), info)}:{class_name}"
    return value


Architecture = Annotated[str, AfterValidator(_architecture)]
ResolvedPath = Annotated[Path, AfterValidator(_resolve)]


class _Strict(BaseModel):
    """Frozen model that rejects unknown keys (reported with a did-you-mean hint)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


