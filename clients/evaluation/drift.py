"""Drift of binned traffic against a reference profile: PSI and the two-sample KS statistic.

Pure numpy (scipy for the KS statistic of raw samples). The served pipeline model counts its
traffic in the bins of the reference profile the build stored in ``manifest.json``
(``tritonfleet_monitoring.py``); these functions compare such counts with the reference's
fractions, exactly as the alert rules of ``tritonfleet monitor --alert-rules`` do in PromQL:

* PSI (population stability index) = sum over bins of ``(p - q) * ln(p / q)``, with ``p`` the
  live share and ``q`` the reference share of a bin, both raised to at least :data:`EPS`
  (empty bins); 0 for identical distributions, > 0.2 is the usual "significant shift".
* KS on binned data = the largest gap between the two cumulative distributions at the bin
  edges. It equals the KS statistic of the raw samples when no sample lies strictly inside a
  bin, and is never larger (the raw samples' maximum gap may fall inside a bin).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EPS = 1e-4  # floor of a bin's share in PSI (the same constant is in the alert rules)


def shares(counts: Sequence[float]) -> np.ndarray:
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    return counts / total if total > 0 else np.zeros_like(counts)


def _aligned(reference: Sequence[float], counts: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    q = np.asarray(reference, dtype=np.float64)
    p = shares(counts)
    if q.shape != p.shape:
        raise ValueError(f"{len(p)} live bins for {len(q)} reference bins")
    return p, q


def psi(reference: Sequence[float], counts: Sequence[float], eps: float = EPS) -> float:
    """PSI of live bin ``counts`` against the reference bin ``fractions``."""
    p, q = _aligned(reference, counts)
    p, q = np.maximum(p, eps), np.maximum(q, eps)
    return float(np.sum((p - q) * np.log(p / q)))


def ks_binned(reference: Sequence[float], counts: Sequence[float]) -> float:
    """Largest gap between the cumulative live and reference shares at the bin edges."""
    p, q = _aligned(reference, counts)
    if len(p) < 2:
        return 0.0
    return float(np.max(np.abs(np.cumsum(p)[:-1] - np.cumsum(q)[:-1])))


def ks_samples(a: Sequence[float], b: Sequence[float]) -> float:
    """The two-sample KS statistic of raw samples (scipy)."""
    from scipy.stats import ks_2samp

    return float(ks_2samp(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)).statistic)
