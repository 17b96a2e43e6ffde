"""Soak: a bounded number of requests at a fixed concurrency, every one accounted for.

:func:`run_soak` sends ``total`` requests (gRPC futures, request protobufs built once) with
``concurrency`` in flight, records each one's latency and outcome, and samples the server's
resident memory (tritonserver plus its Python-backend stubs, from ``/proc``) once a second.
The first ``warmup`` requests are excluded from the latency segments and from the memory
baseline. Reports failures, latency per tenth of the run (drift) and RSS growth.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from clients.loadgen import LoadConfig, _error_text, _ModelInfo, _request_protobuf


@dataclass
class SoakResult:
    model: str
    total: int
    concurrency: int
    completed: int
    failures: int
    seconds: float
    requests_per_s: float
    segments: list[dict] = field(default_factory=list)  # per tenth: p50/p99 ms, requests/s
    rss_mb: list[float] = field(default_factory=list)   # one sample a second, after warm-up
    error_messages: dict[str, int] = field(default_factory=dict)

    @property
    def rss_growth(self) -> float:
        """Last RSS sample over the first (after warm-up), minus 1."""
        return self.rss_mb[-1] / self.rss_mb[0] - 1 if len(self.rss_mb) >= 2 and self.rss_mb[0] else 0.0

    @property
    def latency_drift(self) -> float:
        """p50 of the last tenth over p50 of the first, minus 1."""
        if len(self.segments) < 2:
            return 0.0
        return self.segments[-1]["p50_ms"] / self.segments[0]["p50_ms"] - 1

    def to_dict(self) -> dict:
        return {**asdict(self), "rss_growth": self.rss_growth, "latency_drift": self.latency_drift}


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
             server_pid: int | None = None, warmup: int = 1000, timeout_s: float = 30.0) -> SoakResult:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    config = LoadConfig(model, concurrency=concurrency, timeout_s=timeout_s)
    meta = _ModelInfo.fetch(url, config)
    requests = [_request_protobuf(config, meta, batch) for batch in meta.batches(config, inputs)]
    channel = grpc.insecure_channel(url, options=[("grpc.max_receive_message_length", -1)])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)

    lock = threading.Lock()
    done = threading.Event()
    issued, finished = [0], [0]
    latencies = np.zeros(total)
    ends = np.zeros(total)
    ok = np.zeros(total, bool)
    errors: Counter[str] = Counter()
    rss: list[float] = []
    warm = threading.Event()

    def issue() -> None:
        with lock:
            if issued[0] >= total:
                return
            i = issued[0]
            issued[0] += 1
        start = time.perf_counter()
        future = stub.ModelInfer.future(requests[i % len(requests)], timeout=timeout_s)
        future.add_done_callback(lambda f: complete(f, i, start))

    def complete(future, i: int, start: float) -> None:
        error = future.exception()
        now = time.perf_counter()
        latencies[i], ends[i], ok[i] = now - start, now, error is None
        with lock:
            if error is not None:
                errors[_error_text(error)] += 1
            finished[0] += 1
            count = finished[0]
        if count >= warmup:
            warm.set()
        if count == total:
            done.set()
        issue()

    def sample_memory() -> None:
        warm.wait()
        while not done.is_set() and server_pid is not None:
            rss.append(process_tree_rss(server_pid) / 2**20)
            done.wait(1.0)
        if server_pid is not None:
            rss.append(process_tree_rss(server_pid) / 2**20)

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    for _ in range(min(concurrency, total)):
        issue()
    done.wait()
    seconds = time.perf_counter() - t0
    warm.set()
    sampler.join(5)
    channel.close()

    measured = np.arange(min(warmup, total - 1), total)
    segments = []
    for part in np.array_split(measured[np.argsort(ends[measured])], 10):
        good = part[ok[part]]
        if len(good) == 0:
            continue
        span = ends[part].max() - ends[part].min()
        segments.append({"p50_ms": 1e3 * float(np.percentile(latencies[good], 50)),
                         "p99_ms": 1e3 * float(np.percentile(latencies[good], 99)),
                         "requests_per_s": len(part) / span if span > 0 else float("nan")})
    failures = int((~ok).sum())
    return SoakResult(model, total, concurrency, finished[0], failures, seconds, total / seconds, segments, rss,
                      dict(errors.most_common(5)))
