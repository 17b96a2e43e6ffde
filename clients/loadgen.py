"""Asynchronous load generator for a Triton model (tritonclient's asyncio clients).

Two modes, as in perf_analyzer:

* **concurrency** (closed loop): ``concurrency`` workers each keep one request in flight;
* **request rate** (open loop): requests leave on a constant schedule whatever the
  responses do, and latency counts from the scheduled send time, so a server that falls
  behind shows it in latency instead of silently lowering the offered load.

After a warm-up, measurement windows repeat until the last ``stable_windows`` agree within
``stability_pct`` on throughput and mean latency (perf_analyzer's stability criterion) or
``max_windows`` pass. Server-side time per model (queue, compute input/infer/output) comes
from Triton's statistics API, diffed over the measured windows, so every ensemble step
(the fusion step included) shows its own cost.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal, Sequence

import numpy as np

from builder.errors import ServerError

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True)
class LoadConfig:
    model: str
    concurrency: int = 8
    request_rate: float | None = None  # requests/s; None: concurrency mode
    batch_size: int = 1
    warmup_s: float = 1.0
    window_s: float = 2.0
    max_windows: int = 8
    stable_windows: int = 3
    stability_pct: float = 10.0
    protocol: Literal["grpc", "http"] = "grpc"
    timeout_s: float = 30.0
    parameters: dict | None = None  # request parameters, e.g. {"threshold": 0.9} for a cascade

    def __post_init__(self):
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.request_rate is not None and self.request_rate <= 0:
            raise ValueError("request_rate must be > 0")
        if self.batch_size < 1 or self.window_s <= 0 or self.max_windows < 1:
            raise ValueError("batch_size, window_s and max_windows must be positive")

    @property
    def mode(self) -> str:
        return "rate" if self.request_rate else "concurrency"


@dataclass(frozen=True)
class ServerTime:
    """Mean server-side microseconds per request of one model over the measurement."""

    requests: int
    executions: int
    queue_us: float
    compute_input_us: float
    compute_infer_us: float
    compute_output_us: float

    @property
    def compute_us(self) -> float:
        return self.compute_input_us + self.compute_infer_us + self.compute_output_us


@dataclass
class WindowStats:
    seconds: float
    requests: int
    errors: int
    requests_per_s: float
    mean_latency_ms: float


@dataclass
class LoadResult:
    model: str
    mode: str
    concurrency: int
    request_rate: float | None
    batch_size: int
    seconds: float
    requests: int
    errors: int
    stable: bool
    requests_per_s: float
    infer_per_s: float  # samples per second (requests x batch size)
    latency_ms: dict[str, float]
    windows: list[WindowStats] = field(default_factory=list)
    server: dict[str, ServerTime] = field(default_factory=dict)
    error_messages: dict[str, int] = field(default_factory=dict)
    sent: int = 0  # requests started, counted from the first request (warm-up included)
    completed: int = 0  # responses and errors received for them

    def to_dict(self) -> dict:
        return asdict(self)


def make_batches(inputs: Sequence[np.ndarray], batch_size: int, limit: int = 64) -> list[tuple[np.ndarray, ...]]:
    """Up to ``limit`` distinct batches cut from a dataset, cycled by the generator."""
    n = len(inputs[0])
    if n == 0:
        raise ValueError("no samples to send")
    batches = []
    for start in itertools.islice(itertools.count(0, batch_size), limit):
        idx = np.arange(start, start + batch_size) % n
        batches.append(tuple(np.ascontiguousarray(x[idx]) for x in inputs))
        if start + batch_size >= n:
            break
    return batches


def run_load(url: str, config: LoadConfig, inputs: Sequence[np.ndarray] | None = None) -> LoadResult:
    """Blocking entry point: ``inputs`` is a dataset (one array per model input) or
    ``None`` for random data of the model's signature."""
    return asyncio.run(_LoadRun(url, config, inputs).run())


class _LoadRun:
    def __init__(self, url: str, config: LoadConfig, inputs):
        self.url = url
        self.config = config
        self.dataset = inputs
        self.records: list[tuple[float, float, bool]] = []  # (start, end, ok)
        self.errors: Counter[str] = Counter()
        self.sent = 0
        self.completed = 0
        self.stop = False

    async def run(self) -> LoadResult:
        cfg = self.config
        if cfg.protocol == "grpc":
            import tritonclient.grpc.aio as module

            client = module.InferenceServerClient(self.url)
        else:
            import tritonclient.http.aio as module

            client = module.InferenceServerClient(self.url, conn_limit=max(cfg.concurrency, 16),
                                                  conn_timeout=cfg.timeout_s)
        self.module = module
        try:
            requests = await self._prepare(client)
            workers = self._start(client, requests)
            await asyncio.sleep(cfg.warmup_s)
            before = await self._server_stats(client)
            t0 = time.perf_counter()
            windows = await self._measure(t0)
            t1 = time.perf_counter()
            after = await self._server_stats(client)
            self.stop = True
            await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), cfg.timeout_s + 5)
        finally:
            await client.close()
        return self._result(t0, t1, windows, _diff_stats(before, after))

    async def _prepare(self, client) -> list[list]:
        cfg = self.config
        try:
            meta = await client.get_model_metadata(cfg.model, **self._json())
            config = await client.get_model_config(cfg.model, **self._json())
        except self.module.InferenceServerException as exc:
            raise ServerError(f"model '{cfg.model}' at {self.url}: {exc.message()}") from None
        config = config.get("config", config)
        max_batch = int(config.get("max_batch_size", 0))
        if max_batch and cfg.batch_size > max_batch:
            raise ServerError(f"batch_size {cfg.batch_size} exceeds '{cfg.model}' max_batch_size {max_batch}")
        self.inputs_meta = meta["inputs"]
        self.outputs = [o["name"] for o in meta["outputs"]]
        dataset = self.dataset if self.dataset is not None else _random_inputs(meta["inputs"], max_batch > 0)
        batches = make_batches(dataset, cfg.batch_size) if max_batch else [tuple(x for x in dataset)]
        requests = []
        for batch in batches:
            tensors = []
            for spec, array in zip(self.inputs_meta, batch):
                t = module_infer_input(self.module, spec["name"], array)
                tensors.append(t)
            requests.append(tensors)
        return requests

    def _start(self, client, requests) -> list[asyncio.Task]:
        cfg = self.config
        cycle = itertools.cycle(requests)
        outputs = [self.module.InferRequestedOutput(n) for n in self.outputs]
        if cfg.request_rate is None:
            return [asyncio.ensure_future(self._worker(client, cycle, outputs)) for _ in range(cfg.concurrency)]
        return [asyncio.ensure_future(self._scheduler(client, cycle, outputs))]

    async def _send(self, client, inputs, outputs, scheduled: float) -> None:
        self.sent += 1
        ok = True
        try:
            kw = {"client_timeout": self.config.timeout_s} if self.config.protocol == "grpc" else {}
            if self.config.parameters:
                kw["parameters"] = self.config.parameters
            await client.infer(self.config.model, inputs, outputs=outputs, **kw)
        except Exception as exc:  # counted, never raised: the run measures errors
            ok = False
            text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
            self.errors[(text or type(exc).__name__).splitlines()[0][:160]] += 1
        self.completed += 1
        self.records.append((scheduled, time.perf_counter(), ok))

    async def _worker(self, client, cycle, outputs) -> None:
        while not self.stop:
            await self._send(client, next(cycle), outputs, time.perf_counter())

    async def _scheduler(self, client, cycle, outputs) -> None:
        interval = 1.0 / self.config.request_rate
        start = time.perf_counter()
        pending: set[asyncio.Task] = set()
        for i in itertools.count():
            if self.stop:
                break
            due = start + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(self._send(client, next(cycle), outputs, due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _measure(self, t0: float) -> list[WindowStats]:
        cfg = self.config
        windows: list[WindowStats] = []
        start = t0
        for _ in range(cfg.max_windows):
            await asyncio.sleep(cfg.window_s)
            end = time.perf_counter()
            windows.append(self._window(start, end))
            start = end
            if _stable(windows, cfg.stable_windows, cfg.stability_pct):
                break
        return windows

    def _window(self, start: float, end: float) -> WindowStats:
        done = [(s, e, ok) for s, e, ok in self.records if start <= e < end]
        lat = [e - s for s, e, ok in done if ok]
        errors = sum(1 for *_, ok in done if not ok)
        return WindowStats(end - start, len(done) - errors, errors, (len(done) - errors) / (end - start),
                           1e3 * float(np.mean(lat)) if lat else float("nan"))

    async def _server_stats(self, client) -> dict[str, dict]:
        try:
            stats = await client.get_inference_statistics("", **self._json())
        except Exception:
            return {}
        return {s["name"]: s for s in stats.get("model_stats", [])}

    def _json(self) -> dict:
        return {"as_json": True} if self.config.protocol == "grpc" else {}

    def _result(self, t0: float, t1: float, windows: list[WindowStats], server: dict[str, ServerTime]) -> LoadResult:
        cfg = self.config
        done = [(s, e, ok) for s, e, ok in self.records if t0 <= e < t1]
        lat_ms = np.array([1e3 * (e - s) for s, e, ok in done if ok])
        ok_count = len(lat_ms)
        errors = len(done) - ok_count
        seconds = t1 - t0
        latency = {f"p{p}": float(np.percentile(lat_ms, p)) for p in PERCENTILES} if ok_count else {}
        if ok_count:
            latency.update(mean=float(lat_ms.mean()), min=float(lat_ms.min()), max=float(lat_ms.max()))
        return LoadResult(
            model=cfg.model, mode=cfg.mode, concurrency=cfg.concurrency, request_rate=cfg.request_rate,
            batch_size=cfg.batch_size, seconds=seconds, requests=ok_count, errors=errors,
            stable=_stable(windows, cfg.stable_windows, cfg.stability_pct),
            requests_per_s=ok_count / seconds, infer_per_s=ok_count * cfg.batch_size / seconds,
            latency_ms=latency, windows=windows, server=server,
            error_messages=dict(self.errors.most_common(5)), sent=self.sent, completed=self.completed,
        )


def module_infer_input(module, name: str, array: np.ndarray):
    from tritonclient.utils import np_to_triton_dtype

    tensor = module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
    tensor.set_data_from_numpy(array)
    return tensor


def _stable(windows: list[WindowStats], n: int, pct: float) -> bool:
    if len(windows) < n:
        return False
    last = windows[-n:]
    for values in ([w.requests_per_s for w in last], [w.mean_latency_ms for w in last]):
        mean = float(np.mean(values))
        if not np.isfinite(mean) or mean == 0 or any(abs(v - mean) > pct / 100 * mean for v in values):
            return False
    return True


def _random_inputs(inputs_meta: list[dict], batching: bool, n: int = 64) -> list[np.ndarray]:
    from tritonclient.utils import triton_to_np_dtype

    rng = np.random.default_rng(0)
    arrays = []
    for spec in inputs_meta:
        dims = [int(d) for d in spec["shape"]]
        dims = [1 if d == -1 else d for d in (dims[1:] if batching else dims)]
        dtype = np.dtype(triton_to_np_dtype(spec["datatype"]))
        shape = [n, *dims] if batching else dims
        if np.issubdtype(dtype, np.floating):
            arrays.append(rng.random(shape).astype(dtype))
        else:
            arrays.append(rng.integers(0, 10, shape).astype(dtype))
    return arrays


def _diff_stats(before: dict[str, dict], after: dict[str, dict]) -> dict[str, ServerTime]:
    out = {}
    for name, a in after.items():
        b = before.get(name, {})

        def delta(section: str, key: str) -> int:
            get = lambda s: int(s.get("inference_stats", {}).get(section, {}).get(key, 0))  # noqa: E731
            return get(a) - get(b)

        requests = delta("success", "count")
        if requests <= 0:
            continue
        executions = int(a.get("execution_count", 0)) - int(b.get("execution_count", 0))
        per = lambda section: delta(section, "ns") / requests / 1e3  # noqa: E731
        out[name] = ServerTime(requests, executions, per("queue"), per("compute_input"),
                               per("compute_infer"), per("compute_output"))
    return out
