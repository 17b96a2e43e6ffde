"""Fusion math: pure numpy, no Triton or tritonfleet imports.

This file is copied verbatim into every fusion model's version folder (as ``ops.py``) so
a repository is self-contained; the Python-backend adapter ``model.py`` beside it only
moves tensors in and out. Every function works on whole batches (``[batch, classes]``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np


class FusionError(ValueError):
    """Inputs a fusion function cannot combine (shape mismatch, NaN, bad parameters)."""


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64 precision, returned as float32."""
    z = np.asarray(x, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def to_probabilities(scores: np.ndarray, activation: str) -> np.ndarray:
    if activation == "softmax":
        return softmax(scores)
    if activation == "none":
        return np.asarray(scores, dtype=np.float32)
    raise FusionError(f"unknown activation '{activation}' (use 'softmax' or 'none')")


def check_scores(scores: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Members' scores as float arrays of one shape ``[batch, classes]``, all finite."""
    if len(scores) == 0:
        raise FusionError("fusion needs at least one member output")
    arrays = [np.asarray(s) for s in scores]
    first = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.ndim != 2:
            raise FusionError(f"member {i} scores have shape {list(a.shape)}; expected [batch, classes]")
        if a.shape != first:
            raise FusionError(f"member {i} scores have shape {list(a.shape)}, member 0 {list(first)}")
        if not np.all(np.isfinite(a)):
            raise FusionError(f"member {i} scores hold NaN or inf values")
    return arrays


def mean_probabilities(scores: Sequence[np.ndarray], activation: str = "softmax") -> np.ndarray:
    """Arithmetic mean over members of per-member class probabilities."""
    arrays = check_scores(scores)
    probs = np.stack([to_probabilities(a, activation) for a in arrays])
    return probs.mean(axis=0, dtype=np.float64).astype(np.float32)


def class_index(probabilities: np.ndarray) -> np.ndarray:
    """Arg-max class as int64 ``[batch, 1]``; ties go to the lowest class index."""
    return np.argmax(probabilities, axis=1).astype(np.int64)[:, None]


FUSIONS = {
    "mean": lambda scores, p: mean_probabilities(scores, p.get("activation", "softmax")),
}


def fuse(params: Mapping[str, Any], scores: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Dispatch on ``params["type"]``; return ``{"probabilities": ..., "class_index": ...}``."""
    kind = params.get("type")
    if kind not in FUSIONS:
        raise FusionError(f"unknown fusion type '{kind}'; known: {', '.join(sorted(FUSIONS))}")
    probs = FUSIONS[kind](scores, params)
    return {"probabilities": probs, "class_index": class_index(probs)}
