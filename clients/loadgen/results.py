"""What a load run measured: every request's outcome, the windows, and the reported result.

:class:`Recorder` collects ``(start, end, ok)`` per request from any thread. A
:class:`LoadResult` reports only the last ``stable_windows`` windows (perf_analyzer's rule,
see :mod:`.windows`): throughput, latency percentiles and errors over that span, the spread
of those windows, and ``stable`` saying whether they met the rule. Server-side time per
model comes from Triton's statistics API, diffed over the same span.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np

from tritonfleet.clients.loadgen.windows import WindowStats, spread

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class ServerTime:
    """Mean server-side microseconds per request of one model over the measurement."""

    requests: int
    executions: int
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float
    request_us: float = math.nan  # server-side time per successful request (queue to response), end to end

    @property
    def compute_us(self) -> float:
        return self.compute_input_us + self.compute_infer_us + self.compute_output_us

    @property
    def batch_per_execution(self) -> float:
        """Requests per model execution: > 1 when the dynamic batcher grouped them."""
        return self.requests / self.executions if self.executions else math.nan


@dataclass
class LoadResult:
    model: str
    mode: str
    concurrency: int
    request_rate: float | None
    batch_size: int
    seconds: float            # span of the reported windows
    requests: int             # successful requests in that span
    errors: int
    stable: bool              # the reported windows met perf_analyzer's rule
    requests_per_s: float
    infer_per_s: float        # samples per second (requests x batch size)
    latency_ms: dict[str, float]
    windows: list[WindowStats] = field(default_factory=list)  # every window, the reported ones last
    reported_windows: int = 0
    throughput_spread: float = math.nan  # max/min over the reported windows
    latency_spread: float = math.nan
    server: dict[str, ServerTime] = field(default_factory=dict)
    error_messages: dict[str, int] = field(default_factory=dict)
    sent: int = 0             # requests started, warm-up included
    completed: int = 0        # responses and errors received for them
    engine: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LoadResult:
        data = dict(data)
        data["windows"] = [WindowStats(**w) for w in data.get("windows", [])]
        data["server"] = {k: ServerTime(**v) for k, v in data.get("server", {}).items()}
        return cls(**data)


class Recorder:
    """Completed requests as (start, end, ok); safe to append from gRPC's threads."""

    def __init__(self):
        self.records: list[tuple[float, float, bool]] = []
        self.errors: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.sent = 0
        self.completed = 0

    def started(self) -> None:
        with self.lock:
            self.sent += 1

    def done(self, start: float, ok: bool, error: str | None = None) -> None:
        end = time.perf_counter()
        with self.lock:
            self.completed += 1
            self.records.append((start, end, ok))
            if error is not None:
                self.errors[error] += 1

    def _between(self, start: float, end: float) -> list[tuple[float, float, bool]]:
        with self.lock:
            return [r for r in self.records if start <= r[1] < end]

    def window(self, start: float, end: float) -> WindowStats:
        done = self._between(start, end)
        lat = [e - s for s, e, ok in done if ok]
        errors = len(done) - len(lat)
        return WindowStats(start, end - start, len(lat), errors, len(lat) / (end - start),
                           1e3 * float(np.mean(lat)) if lat else math.nan)

    def result(self, cfg, windows: list[WindowStats], stable: bool, server: dict[str, ServerTime],
               engine: str) -> LoadResult:
        """The result over the last ``cfg.stable_windows`` windows (all of them if fewer)."""
        reported = windows[-cfg.stable_windows:]
        t0, t1 = reported[0].start, reported[-1].end
        done = self._between(t0, t1)
        with self.lock:
            sent, completed, errors = self.sent, self.completed, dict(self.errors.most_common(5))
        lat_ms = np.array([1e3 * (e - s) for s, e, ok in done if ok])
        seconds = t1 - t0
        latency = {f"p{p}": float(np.percentile(lat_ms, p)) for p in PERCENTILES} if len(lat_ms) else {}
        if len(lat_ms):
            latency.update(mean=float(lat_ms.mean()), min=float(lat_ms.min()), max=float(lat_ms.max()))
        return LoadResult(
            model=cfg.model, mode=cfg.mode, concurrency=cfg.concurrency, request_rate=cfg.request_rate,
            batch_size=cfg.batch_size, seconds=seconds, requests=len(lat_ms), errors=len(done) - len(lat_ms),
            stable=stable, requests_per_s=len(lat_ms) / seconds, infer_per_s=len(lat_ms) * cfg.batch_size / seconds,
            latency_ms=latency, windows=windows, reported_windows=len(reported),
            throughput_spread=spread([w.requests_per_s for w in reported]),
            latency_spread=spread([w.mean_latency_ms for w in reported]),
            server=server, error_messages=errors, sent=sent, completed=completed, engine=engine,
        )


def server_statistics(url: str, protocol: str) -> dict[str, dict]:
    """Triton's per-model statistics (``{}`` when the server cannot be asked)."""
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    try:
        client = module.InferenceServerClient(url)
        try:
            stats = client.get_inference_statistics("", **({"as_json": True} if protocol == "grpc" else {}))
        finally:
            client.close()
    except Exception:
        return {}
    return {s["name"]: s for s in stats.get("model_stats", [])}


def diff_statistics(before: dict[str, dict], after: dict[str, dict]) -> dict[str, ServerTime]:
    """Per-request server time of each model between two statistics snapshots."""

    def total(stats: dict, section: str, key: str) -> int:
        return int(stats.get("inference_stats", {}).get(section, {}).get(key, 0))

    out = {}
    for name, a in after.items():
        b = before.get(name, {})
        requests = total(a, "success", "count") - total(b, "success", "count")
        if requests <= 0:
            continue
        executions = int(a.get("execution_count", 0)) - int(b.get("execution_count", 0))
        per = {section: (total(a, section, "ns") - total(b, section, "ns")) / requests / 1e3
               for section in ("success", "queue", "compute_input", "compute_infer", "compute_output")}
        out[name] = ServerTime(requests, executions, per["queue"], per["compute_input"], per["compute_infer"],
                               per["compute_output"], per["success"])
    return out
