"""Paired comparison of two classifiers on the same samples: pure numpy, no Triton.

Both models answer the same test samples, so their correctness is *paired*:

* :func:`mcnemar_exact` — the exact McNemar test. Only the discordant samples carry evidence
  (``b``: the first model right and the second wrong, ``c``: the reverse); under "equally
  accurate" each discordant sample goes either way with probability 1/2, so the two-sided
  p-value is a binomial tail, ``min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)])``
  (``b + c == 0``: no evidence, ``p = 1``). The same value as
  ``scipy.stats.binomtest(b, b + c, 0.5).pvalue``.
* :func:`paired_bootstrap_ci` — percentile confidence interval of the accuracy difference
  (second minus first, in points): resample the *samples* (pairs stay together), seeded.
* :func:`accuracy_gain` — both together: accuracies, gain, p-value, interval.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from tritonfleet.clients.errors import UsageError
from tritonfleet.clients.evaluation.replicates import difference_interval


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=bool).ravel(), np.asarray(b, dtype=bool).ravel()
    if a.shape != b.shape:
        raise UsageError(f"paired comparison needs one outcome per sample for both models, got {a.size} and {b.size}")
    if a.size == 0:
        raise UsageError("paired comparison needs at least one sample")
    return a, b


@dataclass(frozen=True)
class McNemar:
    b: int          # first right, second wrong
    c: int          # first wrong, second right
    p_value: float  # exact, two-sided

    @property
    def discordant(self) -> int:
        return self.b + self.c


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of ``k`` successes in ``n`` fair coin flips (symmetric tails)."""
    if not 0 <= k <= n:
        raise UsageError(f"binomial test needs 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return 1.0
    low = min(k, n - k)
    if n <= 2000:  # exact integers: int / int division rounds correctly however large they are
        return min(1.0, 2 * sum(math.comb(n, i) for i in range(low + 1)) / (1 << n))
    logs = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(low + 1)])
    top = logs.max()
    return min(1.0, 2.0 * math.exp(top + math.log(np.exp(logs - top).sum()) - n * math.log(2.0)))


def mcnemar_exact(correct_first, correct_second) -> McNemar:
    """Exact McNemar test of two models' per-sample correctness (boolean arrays, same order)."""
    a, b = _paired(correct_first, correct_second)
    first_only, second_only = int(np.sum(a & ~b)), int(np.sum(~a & b))
    return McNemar(first_only, second_only, binomial_two_sided(first_only, first_only + second_only))


def paired_bootstrap_ci(correct_first, correct_second, *, confidence: float = 0.95, resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``accuracy(second) - accuracy(first)``, in points (the samples
    resampled together: one replicate per side of :func:`.replicates.difference_interval`)."""
    a, b = _paired(correct_first, correct_second)
    interval = difference_interval(b, a, confidence=confidence, resamples=resamples, seed=seed)
    return interval.low, interval.high


@dataclass(frozen=True)
class AccuracyComparison:
    """A candidate against the current model on the same labelled samples."""

    samples: int
    current_accuracy: float
    candidate_accuracy: float
    gain_pt: float                     # candidate - current, in top-1 points
    ci_pt: tuple[float, float]         # paired bootstrap interval of gain_pt
    confidence: float
    only_current_right: int            # McNemar b
    only_candidate_right: int          # McNemar c
    p_value: float                     # exact McNemar, two-sided

    def to_dict(self) -> dict:
        return {**asdict(self), "ci_pt": list(self.ci_pt)}


def accuracy_gain(correct_current, correct_candidate, *, confidence: float = 0.95, resamples: int = 2000,
                  seed: int = 0) -> AccuracyComparison:
    a, b = _paired(correct_current, correct_candidate)
    test = mcnemar_exact(a, b)
    ci = paired_bootstrap_ci(a, b, confidence=confidence, resamples=resamples, seed=seed)
    return AccuracyComparison(int(a.size), float(a.mean()), float(b.mean()), float((b.mean() - a.mean()) * 100.0),
                              ci, confidence, test.b, test.c, test.p_value)
