"""Measurement windows and perf_analyzer's stability rule.

perf_analyzer measures in windows and calls a measurement stable when, over the last
``n`` windows (3 by default), both the throughput and the latency satisfy
``max / min <= 1 + pct / 100`` (10% by default). Only those windows are reported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class WindowStats:
    start: float  # perf_counter seconds
    seconds: float
    requests: int
    errors: int
    requests_per_s: float
    mean_latency_ms: float

    @property
    def end(self) -> float:
        return self.start + self.seconds


def spread(values: Sequence[float]) -> float:
    """max / min of positive, finite values; ``inf`` when any is zero, negative or NaN."""
    if not values or any(not math.isfinite(v) or v <= 0 for v in values):
        return math.inf
    return max(values) / min(values)


def is_stable(windows: Sequence[WindowStats], n: int, pct: float) -> bool:
    """perf_analyzer's rule over the last ``n`` windows, for throughput and for latency."""
    if len(windows) < n:
        return False
    last = windows[-n:]
    limit = 1 + pct / 100
    return (spread([w.requests_per_s for w in last]) <= limit
            and spread([w.mean_latency_ms for w in last]) <= limit)


def measure_windows(close_window, window_s: float, max_windows: int, n: int, pct: float,
                    start: float) -> Generator[float, None, list[WindowStats]]:
    """Yield how long to wait before each window closes; ``close_window(start, end)`` turns
    the elapsed span into :class:`WindowStats`. Stops once the last ``n`` windows are
    stable or after ``max_windows``; returns every window (the caller reports the last ``n``)."""
    windows: list[WindowStats] = []
    for _ in range(max_windows):
        yield window_s
        end = time.perf_counter()
        windows.append(close_window(start, end))
        start = end
        if is_stable(windows, n, pct):
            break
    return windows
