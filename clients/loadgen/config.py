"""What a load run does: model, mode (concurrency or request rate), batch, windows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from tritonfleet.clients.errors import UsageError

# perf_analyzer's defaults: stable when the last 3 windows are within 10% (max/min <= 1.1)
STABLE_WINDOWS = 3
STABILITY_PCT = 10.0


@dataclass(frozen=True)
class LoadConfig:
    model: str
    concurrency: int = 8
    request_rate: float | None = None  # requests/s; None: concurrency mode
    batch_size: int = 1
    warmup_s: float = 1.0
    window_s: float = 2.0
    max_windows: int = 10
    stable_windows: int = STABLE_WINDOWS
    stability_pct: float = STABILITY_PCT
    protocol: Literal["grpc", "http"] = "grpc"
    timeout_s: float = 30.0
    parameters: dict | None = None  # request parameters, e.g. {"threshold": 0.9} for a cascade
    engine: Literal["auto", "callback", "asyncio"] = "auto"
    # inputs placed once in registered regions, outputs written there: "system" or "cuda" (see clients.shm)
    shared_memory: Literal["none", "system", "cuda"] = "none"
    device_id: int = 0  # the GPU of CUDA shared-memory regions
    version: str = ""  # a loaded version of the model ("": the server's choice, the newest loaded)

    def __post_init__(self):
        checks = (
            (self.concurrency >= 1, "concurrency", "must be >= 1"),
            (self.request_rate is None or self.request_rate > 0, "request_rate", "must be > 0"),
            (self.batch_size >= 1, "batch_size", "must be >= 1"),
            (self.warmup_s >= 0, "warmup_s", "must be >= 0"),
            (self.window_s > 0, "window_s", "must be > 0"),
            (self.stable_windows >= 1, "stable_windows", "must be >= 1"),
            (self.max_windows >= self.stable_windows, "max_windows", f"must be >= stable_windows ({self.stable_windows})"),
            (self.stability_pct > 0, "stability_pct", "must be > 0"),
            (self.timeout_s > 0, "timeout_s", "must be > 0"),
            (self.engine != "callback" or self.protocol == "grpc", "engine",
             "the callback engine speaks gRPC; use engine='asyncio' for HTTP"),
            (self.shared_memory in ("none", "system", "cuda"), "shared_memory", "must be none, system or cuda"),
            (self.device_id >= 0, "device_id", "must be >= 0"),
        )
        for ok, name, rule in checks:
            if not ok:
                raise UsageError(f"load {name} {rule} (got {getattr(self, name)!r})")

    @property
    def mode(self) -> str:
        return "rate" if self.request_rate else "concurrency"

    @property
    def resolved_engine(self) -> str:
        if self.engine != "auto":
            return self.engine
        return "callback" if self.protocol == "grpc" else "asyncio"
