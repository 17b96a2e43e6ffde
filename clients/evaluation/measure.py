"""Accuracy and speed of several served models, measured through one server, joined."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np

from tritonfleet.clients.evaluation.accuracy import evaluate_accuracy
from tritonfleet.clients.infer import TritonClient
from tritonfleet.clients.loadgen import LoadConfig, LoadResult, run_load


@dataclass
class Measurement:
    model: str
    kind: str  # "member" | "baseline" | "ensemble" | ...
    accuracy: float | None
    samples: int
    load: LoadResult | None

    def to_dict(self) -> dict:
        return asdict(self)


def measure_models(
    url_grpc: str,
    models: Sequence[tuple[str, str]],
    inputs: Sequence[np.ndarray],
    labels: np.ndarray | None,
    load: LoadConfig | None,
    on_model: Callable[[str], None] = lambda name: None,
) -> list[Measurement]:
    """For each ``(model, kind)``: accuracy on ``inputs``/``labels`` and a load run."""
    results = []
    with TritonClient(url_grpc, protocol="grpc") as client:
        for name, kind in models:
            on_model(name)
            acc, n = None, 0
            if labels is not None:
                res = evaluate_accuracy(client, name, inputs, labels)
                acc, n = res.accuracy, res.samples
            speed = run_load(url_grpc, replace(load, model=name), inputs) if load else None
            results.append(Measurement(name, kind, acc, n, speed))
    return results
