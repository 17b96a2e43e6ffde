"""Accuracy over several training seeds and one test set: estimates with confidence intervals.

Two sources of noise make one accuracy number uncertain: which samples the test set holds
(360 digits give a standard error of about 2.5 points at 70 %), and which training run the
model came from (seed, data order). Each function takes per-sample correctness as a boolean
array ``[seeds, samples]`` — one row per independently trained replicate, the same test
samples in every row — and resamples both: samples with replacement (shared by the two
sides of a difference, which answer the same samples) and replicates with replacement
(independently per side: seeds are not paired). Percentile intervals, seeded, pure numpy.

* :func:`accuracy_interval` — mean accuracy over replicates and its interval;
* :func:`difference_interval` — accuracy of ``a`` minus accuracy of ``b``, in points;
* :func:`choose_best` — the candidate with the best mean *validation* accuracy (ties: the
  first, i.e. the cheapest when candidates are ordered by cost), so the test set that
  judges it played no part in choosing it;
* :func:`interval_verdict` — "higher" / "lower" only when the interval excludes zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from tritonfleet.clients.errors import UsageError


def _as_matrix(correct, name: str) -> np.ndarray:
    m = np.asarray(correct, dtype=bool)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise UsageError(f"{name}: expected correctness as [replicates, samples], got shape {np.shape(correct)}")
    return m


def _replicate_means(m: np.ndarray, sample_idx: np.ndarray, rng, resamples: int) -> np.ndarray:
    """Per resample: mean over resampled replicates of each replicate's accuracy on resampled samples."""
    per = np.stack([row[sample_idx].mean(axis=1) for row in m.astype(np.float32)], axis=1)  # [B, replicates]
    picks = rng.integers(0, m.shape[0], size=(resamples, m.shape[0]))
    return np.take_along_axis(per, picks, axis=1).mean(axis=1)


@dataclass(frozen=True)
class Interval:
    estimate: float  # in points (percent)
    low: float
    high: float
    confidence: float
    replicates: int
    samples: int

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self, digits: int = 1, signed: bool = False) -> str:
        f = f"{{:{'+' if signed else ''}.{digits}f}}"
        return f"{f.format(self.estimate)} [{f.format(self.low)}, {f.format(self.high)}]"


def _check(confidence: float, resamples: int) -> None:
    if not 0 < confidence < 1:
        raise UsageError(f"confidence must be in (0, 1), got {confidence}")
    if resamples < 1:
        raise UsageError(f"resamples must be >= 1, got {resamples}")


def accuracy_interval(correct, *, confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> Interval:
    """Mean top-1 over replicates (points) with its bootstrap interval over samples and replicates."""
    _check(confidence, resamples)
    m = _as_matrix(correct, "correct")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, m.shape[1], size=(resamples, m.shape[1]))
    means = _replicate_means(m, idx, rng, resamples)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return Interval(100 * float(m.mean()), 100 * float(low), 100 * float(high), confidence, m.shape[0], m.shape[1])


def difference_interval(correct_a, correct_b, *, confidence: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> Interval:
    """Mean accuracy of ``a`` minus that of ``b`` (points): samples resampled together (paired),
    replicates resampled per side."""
    _check(confidence, resamples)
    a, b = _as_matrix(correct_a, "correct_a"), _as_matrix(correct_b, "correct_b")
    if a.shape[1] != b.shape[1]:
        raise UsageError(f"both sides must answer the same samples, got {a.shape[1]} and {b.shape[1]}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.shape[1], size=(resamples, a.shape[1]))
    diffs = _replicate_means(a, idx, rng, resamples) - _replicate_means(b, idx, rng, resamples)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return Interval(100 * float(a.mean() - b.mean()), 100 * float(low), 100 * float(high), confidence,
                    min(a.shape[0], b.shape[0]), a.shape[1])


def choose_best(validation_accuracy: Mapping[object, Sequence[float]]):
    """The key with the highest mean validation accuracy; ties go to the first key."""
    if not validation_accuracy:
        raise UsageError("choose_best needs at least one candidate")
    best, best_mean = None, -np.inf
    for key, values in validation_accuracy.items():
        mean = float(np.mean(values))
        if mean > best_mean + 1e-12:
            best, best_mean = key, mean
    return best


def interval_verdict(interval: Interval) -> str:
    """``higher`` when the whole interval is above zero, ``lower`` when below, else ``no verdict``."""
    if interval.low > 0:
        return "higher"
    if interval.high < 0:
        return "lower"
    return "no verdict"
