"""One table that maps tensor dtype names between the spec, numpy and Triton's configs."""

from __future__ import annotations

import numpy as np

from tritonfleet.clients.errors import UsageError

# spec name -> (Triton short name, numpy dtype)
_TABLE: dict[str, tuple[str, type]] = {
    "float32": ("FP32", np.float32),
    "float16": ("FP16", np.float16),
    "float64": ("FP64", np.float64),
    "int64": ("INT64", np.int64),
    "int32": ("INT32", np.int32),
    "int16": ("INT16", np.int16),
    "int8": ("INT8", np.int8),
    "uint8": ("UINT8", np.uint8),
    "bool": ("BOOL", np.bool_),
}

DTYPE_NAMES: tuple[str, ...] = tuple(_TABLE)
FLOAT_DTYPES: frozenset[str] = frozenset({"float32", "float16", "float64"})


def triton_config_dtype(name: str) -> str:
    """``"float32"`` -> ``"TYPE_FP32"`` (what config.pbtxt takes). ``"string"`` (Triton's BYTES) is
    known here for tritonfleet's own tensors (a member's error text), not as a spec dtype."""
    return "TYPE_STRING" if name == "string" else "TYPE_" + _TABLE[name][0]


def numpy_dtype(name: str) -> np.dtype:
    return np.dtype(_TABLE[name][1])


def from_numpy(dtype: np.dtype) -> str:
    """numpy dtype -> spec name."""
    dtype = np.dtype(dtype)
    for name, (_, np_type) in _TABLE.items():
        if np.dtype(np_type) == dtype:
            return name
    raise UsageError(f"numpy dtype {dtype} has no Triton equivalent (supported: {', '.join(DTYPE_NAMES)})")


def from_config_dtype(config_dtype: str) -> str:
    """``"TYPE_FP32"`` -> ``"float32"``."""
    short = config_dtype.removeprefix("TYPE_")
    if short == "STRING":
        return "string"
    for name, (triton, _) in _TABLE.items():
        if triton == short:
            return name
    raise KeyError(config_dtype)
