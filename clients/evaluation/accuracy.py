"""Accuracy of a served model on a labelled split, measured through the server."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tritonfleet.clients.infer import TritonClient


@dataclass(frozen=True)
class AccuracyResult:
    model: str
    samples: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.samples if self.samples else float("nan")


def drop_points(reference: float | None, accuracy: float | None) -> float | None:
    """Top-1 drop in percentage points (positive = worse than the reference)."""
    if reference is None or accuracy is None:
        return None
    return 100.0 * (reference - accuracy)


def predicted_classes(outputs: dict[str, np.ndarray], output: str | None = None) -> np.ndarray:
    """Class per sample: the named output, else the first integer output, else the
    arg-max of the first float output."""
    if output is not None:
        chosen = outputs[output]
    else:
        ints = [v for v in outputs.values() if np.issubdtype(v.dtype, np.integer)]
        chosen = ints[0] if ints else next(iter(outputs.values()))
    chosen = np.asarray(chosen)
    if np.issubdtype(chosen.dtype, np.integer):
        return chosen.reshape(len(chosen), -1)[:, 0].astype(np.int64)
    return chosen.reshape(len(chosen), -1).argmax(axis=1)


def evaluate_accuracy(client: TritonClient, model: str, inputs: np.ndarray | Sequence[np.ndarray],
                      labels: np.ndarray, batch_size: int | None = None,
                      output: str | None = None) -> AccuracyResult:
    outputs = client.infer_batched(model, inputs, batch_size=batch_size)
    pred = predicted_classes(outputs, output)
    labels = np.asarray(labels).astype(np.int64)
    return AccuracyResult(model, int(len(labels)), int((pred == labels).sum()))
