"""Soak: a fixed number of requests at a fixed concurrency, every one accounted for.

A soak is the callback engine in its fixed-count mode (:class:`.engines.CallbackEngine`
with ``total``): every request's start, end and outcome is recorded, and the server's
resident memory (tritonserver and its Python-backend stubs, from ``/proc``) is sampled once
a second after the warm-up. The result splits the measured requests into tenths *of the
run's time*, keeping empty tenths (an outage shows as a tenth with failures and no
successes), and keeps the timestamps so a fault's outage can be measured from them. A fault
(``fault``, e.g. killing a stub) runs once ``fault_at`` of the requests have completed, and the
time it ran is recorded (``fault_s``), not estimated.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tritonfleet.clients.loadgen.config import LoadConfig
from tritonfleet.clients.loadgen.engines import CallbackEngine, fetch_metadata
from tritonfleet.clients.loadgen.requests import request_batches
from tritonfleet.clients.loadgen.results import Recorder


@dataclass
class SoakResult:
    model: str
    total: int
    concurrency: int
    completed: int
    failures: int
    seconds: float
    requests_per_s: float
    t0: float  # perf_counter at the first request; every time below is relative to it
    segments: list[dict] = field(default_factory=list)  # per tenth of the measured time
    rss_mb: list[float] = field(default_factory=list)   # one sample a second, after warm-up
    error_messages: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[float, float, bool]] = field(default_factory=list, repr=False)  # (start, end, ok)
    fault_s: float | None = None  # when the fault ran, from t0 (None: no fault)
    fault_after: int | None = None  # requests completed when it ran

    @property
    def rss_growth(self) -> float:
        """Last RSS sample over the first (after warm-up), minus 1."""
        return self.rss_mb[-1] / self.rss_mb[0] - 1 if len(self.rss_mb) >= 2 and self.rss_mb[0] else 0.0

    @property
    def latency_drift(self) -> float | None:
        """p50 of the last tenth over p50 of the first, minus 1 (None if either has no success)."""
        if not self.segments:
            return None
        first, last = self.segments[0]["p50_ms"], self.segments[-1]["p50_ms"]
        return None if not first or not last else last / first - 1

    def failed_between(self, start: float, end: float) -> int:
        return sum(1 for s, e, ok in self.requests if not ok and start <= e < end)

    def outage(self) -> tuple[float, float] | None:
        """(first failure end, first success after the last failure) in seconds from t0."""
        failed = [e for _, e, ok in self.requests if not ok]
        if not failed:
            return None
        recovered = [e for _, e, ok in self.requests if ok and e > max(failed)]
        return min(failed), min(recovered) if recovered else float("nan")

    def outage_summary(self) -> dict | None:
        """The outage from the timestamps: when it began and ended, how long, and what came after."""
        span = self.outage()
        if span is None:
            return None
        first, recovered = span
        last = max(e for _, e, ok in self.requests if not ok)
        after = [ok for _, e, ok in self.requests if e >= recovered]
        return {"first_failure_s": first, "last_failure_s": last, "recovered_s": recovered,
                "seconds": recovered - first, "requests_after": len(after), "failed_after": after.count(False)}

    def to_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if k != "requests"}
        return {**data, "rss_growth": self.rss_growth, "latency_drift": self.latency_drift, "outage": self.outage(),
                "outage_summary": self.outage_summary()}


def process_tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and its direct children (tritonserver and its stubs)."""
    total = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            status = (proc / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if proc.name == str(pid) or fields.get("PPid", "").strip() == str(pid):
            total += int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    return total


def run_soak(url: str, model: str, inputs: Sequence[np.ndarray], total: int = 100_000, concurrency: int = 16,
             server_pid: int | None = None, warmup: int = 1000, timeout_s: float = 30.0,
             fault: Callable[[], None] | None = None, fault_at: float = 0.5) -> SoakResult:
    config = LoadConfig(model, concurrency=concurrency, timeout_s=timeout_s, engine="callback")
    meta = fetch_metadata(url, "grpc", model)
    recorder = Recorder()
    engine = CallbackEngine(url, config, meta, request_batches(meta, 1, inputs), recorder, total=total)
    done = threading.Event()
    rss: list[float] = []

    def sample_memory() -> None:
        while recorder.completed < min(warmup, total) and not done.is_set():
            done.wait(0.05)
        while server_pid is not None and not done.is_set():
            rss.append(process_tree_rss(server_pid) / 2**20)
            done.wait(1.0)
        if server_pid is not None:
            rss.append(process_tree_rss(server_pid) / 2**20)

    fault_time: list[tuple[float, int]] = []

    def inject() -> None:  # once fault_at of the requests have completed
        while recorder.completed < fault_at * total and not done.is_set():
            done.wait(0.005)
        if not done.is_set():
            after = recorder.completed
            fault()
            fault_time.append((time.perf_counter(), after))

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    injector = threading.Thread(target=inject, daemon=True) if fault is not None else None
    t0 = time.perf_counter()
    if injector is not None:
        injector.start()
    try:
        engine.run_total()
    finally:
        done.set()
        sampler.join(5)
        if injector is not None:
            injector.join(5)
    seconds = time.perf_counter() - t0
    records = sorted(((s - t0, e - t0, ok) for s, e, ok in recorder.records), key=lambda r: r[1])
    measured = records[min(warmup, len(records) - 1):]
    return SoakResult(model, total, concurrency, recorder.completed, sum(1 for *_, ok in records if not ok), seconds,
                      total / seconds, t0, _tenths(measured), rss, dict(recorder.errors.most_common(5)), records,
                      fault_time[0][0] - t0 if fault_time else None, fault_time[0][1] if fault_time else None)


def _tenths(records: list[tuple[float, float, bool]]) -> list[dict]:
    """Ten equal spans of time over the measured requests; empty spans are kept."""
    if not records:
        return []
    start, end = records[0][1], records[-1][1]
    edges = np.linspace(start, end, 11)
    edges[-1] = np.nextafter(end, np.inf)
    ends = np.array([e for _, e, _ in records])
    ok = np.array([k for *_, k in records])
    lat = np.array([e - s for s, e, _ in records])
    segments = []
    for a, b in zip(edges[:-1], edges[1:]):
        inside = (ends >= a) & (ends < b)
        good = lat[inside & ok]
        segments.append({
            "start_s": float(a), "end_s": float(b), "requests": int(inside.sum()),
            "failures": int((inside & ~ok).sum()), "requests_per_s": float(good.size / (b - a)) if b > a else 0.0,
            "p50_ms": 1e3 * float(np.percentile(good, 50)) if good.size else None,
            "p99_ms": 1e3 * float(np.percentile(good, 99)) if good.size else None,
        })
    return segments
