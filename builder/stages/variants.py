"""Precision variants: what each one costs in accuracy, what it gains in speed, and which
one a member serves.

Accuracy is top-1 on the spec's splits, run in-process with onnxruntime (the served
accuracy is measured again through Triton by the clients). Speed is a short in-process
onnxruntime benchmark on the build machine with the serving thread count — a proxy for the
served speed, measured for all variants of a model side by side (alternating rounds).

Selection rule for ``precision.serve: auto``: among the variants that passed parity and
whose validation top-1 drop versus fp32 is within ``accuracy_budget`` points, take the
fastest; a lower precision replaces a higher one only when it is at least ``min_speedup``
times faster, so measurement noise never trades accuracy for nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tritonfleet.clients.evaluation.accuracy import drop_points
from tritonfleet.clients.vocabulary import PRECISIONS


@dataclass(frozen=True)
class VariantStats:
    precision: str
    parity_passed: bool
    size_bytes: int
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    samples_per_s: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Selection:
    member: str
    precision: str
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def select_variant(member: str, stats: Sequence[VariantStats], budget: float, min_speedup: float) -> Selection:
    """The fastest variant within the accuracy budget (see the module docstring)."""
    by_precision = {s.precision: s for s in stats}
    base = by_precision.get("fp32")
    if base is None or base.val_accuracy is None or base.samples_per_s is None:
        raise ValueError(f"{member}: selection needs the fp32 variant's validation accuracy and speed")
    chosen = base
    notes = []
    for precision in PRECISIONS[1:]:
        cand = by_precision.get(precision)
        if cand is None:
            continue
        drop = drop_points(base.val_accuracy, cand.val_accuracy)
        speedup = (cand.samples_per_s or 0.0) / base.samples_per_s
        if not cand.parity_passed:
            notes.append(f"{precision} failed parity")
        elif drop is None or drop > budget:
            notes.append(f"{precision} drops {drop:.2f} pt > budget {budget:g}")
        elif speedup < min_speedup:
            notes.append(f"{precision} is only {speedup:.2f}x fp32 (< {min_speedup:g}x)")
        elif cand.samples_per_s > chosen.samples_per_s:
            chosen = cand
    if chosen is base:
        reason = "fp32: no lower precision is both within budget and faster" + (f" ({'; '.join(notes)})" if notes else "")
    else:
        reason = (f"{chosen.precision}: {chosen.samples_per_s / base.samples_per_s:.2f}x fp32 speed, drop "
                  f"{drop_points(base.val_accuracy, chosen.val_accuracy):.2f} pt <= budget {budget:g}")
    return Selection(member, chosen.precision, reason)


# --------------------------------------------------------------------------- measurements
def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_accuracy(path: Path, inputs: Mapping[str, np.ndarray], labels: np.ndarray, threads: int = 0) -> float:
    session = _session(path, threads)
    output = session.get_outputs()[0].name
    n = len(labels)
    preds = np.concatenate([
        session.run([output], {k: v[s:s + 256] for k, v in inputs.items()})[0].reshape(min(256, n - s), -1).argmax(1)
        for s in range(0, n, 256)
    ])
    return float((preds == labels).mean())


def compare_throughput(paths: Mapping[str, Path], inputs: Mapping[str, np.ndarray], batch_size: int,
                       threads: int, rounds: int = 5, seconds: float = 0.1) -> dict[str, float]:
    """Samples/s of each ONNX file, measured side by side: ``rounds`` alternating slices of
    ``seconds`` each, median per file, so machine drift hits every variant alike."""
    sessions = {key: _session(path, threads) for key, path in paths.items()}
    n = len(next(iter(inputs.values())))
    idx = np.arange(batch_size) % n
    feed = {k: np.ascontiguousarray(v[idx]) for k, v in inputs.items()}
    for session in sessions.values():
        for _ in range(3):
            session.run(None, feed)
    rates: dict[str, list[float]] = {key: [] for key in sessions}
    for _ in range(rounds):
        for key, session in sessions.items():
            runs, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < seconds or runs < 3:
                session.run(None, feed)
                runs += 1
            rates[key].append(runs * batch_size / elapsed)
    return {key: float(np.median(r)) for key, r in rates.items()}
