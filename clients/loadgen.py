"""Load generator for a Triton model: concurrency or request-rate mode, stable windows.

Two modes, as in perf_analyzer:

* **concurrency** (closed loop): ``concurrency`` requests are kept in flight;
* **request rate** (open loop): requests leave on a constant schedule whatever the
  responses do, and latency counts from the scheduled send time, so a server that falls
  behind shows it in latency instead of silently lowering the offered load.

Two engines send the requests, both asynchronous:

* ``callback`` (gRPC default): gRPC's future API with done-callbacks re-issuing the next
  request, request protobufs built once. No event loop, so the client takes little CPU
  from a server on the same machine (measured side by side with perf_analyzer: see
  docs/BENCHMARKS.md);
* ``asyncio``: tritonclient's asyncio clients (HTTP default; selectable for gRPC).

After a warm-up, measurement windows repeat until the last ``stable_windows`` agree within
``stability_pct`` on throughput and mean latency (perf_analyzer's stability criterion) or
``max_windows`` pass. Server-side time per model (queue, compute input/infer/output) comes
from Triton's statistics API, diffed over the measured windows, so every ensemble step
(the fusion step included) shows its own cost. Errors are counted, never raised.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

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
    engine: Literal["auto", "callback", "asyncio"] = "auto"

    def __post_init__(self):
        if self.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if self.request_rate is not None and self.request_rate <= 0:
            raise ValueError("request_rate must be > 0")
        if self.batch_size < 1 or self.window_s <= 0 or self.max_windows < 1:
            raise ValueError("batch_size, window_s and max_windows must be positive")
        if self.engine == "callback" and self.protocol != "grpc":
            raise ValueError("the callback engine speaks gRPC; use engine='asyncio' for HTTP")

    @property
    def mode(self) -> str:
        return "rate" if self.request_rate else "concurrency"

    @property
    def resolved_engine(self) -> str:
        if self.engine != "auto":
            return self.engine
        return "callback" if self.protocol == "grpc" else "asyncio"


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
    engine: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> LoadResult:
        data = dict(data)
        data["windows"] = [WindowStats(**w) for w in data.get("windows", [])]
        data["server"] = {k: ServerTime(**v) for k, v in data.get("server", {}).items()}
        return cls(**data)


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
    """Measure ``config.model`` at ``url``; ``inputs`` is a dataset (one array per model
    input) or ``None`` for random data of the model's signature."""
    meta = _ModelInfo.fetch(url, config)
    batches = meta.batches(config, inputs)
    recorder = _Recorder()
    engine = config.resolved_engine
    if engine == "callback":
        run = _CallbackEngine(url, config, meta, batches, recorder)
        t0, t1, windows, server = run.run()
    else:
        t0, t1, windows, server = asyncio.run(_AsyncioEngine(url, config, meta, batches, recorder).run())
    return recorder.result(config, t0, t1, windows, server, engine)


# --------------------------------------------------------------------------- shared parts
@dataclass
class _ModelInfo:
    inputs: list[dict]
    outputs: list[str]
    max_batch_size: int

    @classmethod
    def fetch(cls, url: str, config: LoadConfig) -> _ModelInfo:
        module = _sync_module(config.protocol)
        client = module.InferenceServerClient(url)
        kw = {"as_json": True} if config.protocol == "grpc" else {}
        try:
            meta = client.get_model_metadata(config.model, **kw)
            model_config = client.get_model_config(config.model, **kw)
        except module.InferenceServerException as exc:
            raise ServerError(f"model '{config.model}' at {url}: {exc.message()}") from None
        finally:
            client.close()
        model_config = model_config.get("config", model_config)
        max_batch = int(model_config.get("max_batch_size", 0))
        if max_batch and config.batch_size > max_batch:
            raise ServerError(f"batch_size {config.batch_size} exceeds '{config.model}' max_batch_size {max_batch}")
        return cls(meta["inputs"], [o["name"] for o in meta["outputs"]], max_batch)

    def batches(self, config: LoadConfig, inputs) -> list[tuple[np.ndarray, ...]]:
        dataset = inputs if inputs is not None else _random_inputs(self.inputs, self.max_batch_size > 0)
        return make_batches(dataset, config.batch_size) if self.max_batch_size else [tuple(dataset)]


def _sync_module(protocol: str):
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    return module


class _Recorder:
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

    def window(self, start: float, end: float) -> WindowStats:
        with self.lock:
            done = [(s, e, ok) for s, e, ok in self.records if start <= e < end]
        lat = [e - s for s, e, ok in done if ok]
        errors = sum(1 for *_, ok in done if not ok)
        return WindowStats(end - start, len(done) - errors, errors, (len(done) - errors) / (end - start),
                           1e3 * float(np.mean(lat)) if lat else float("nan"))

    def result(self, cfg: LoadConfig, t0: float, t1: float, windows: list[WindowStats],
               server: dict[str, ServerTime], engine: str) -> LoadResult:
        with self.lock:
            done = [(s, e, ok) for s, e, ok in self.records if t0 <= e < t1]
            sent, completed, errors = self.sent, self.completed, dict(self.errors.most_common(5))
        lat_ms = np.array([1e3 * (e - s) for s, e, ok in done if ok])
        ok_count = len(lat_ms)
        seconds = t1 - t0
        latency = {f"p{p}": float(np.percentile(lat_ms, p)) for p in PERCENTILES} if ok_count else {}
        if ok_count:
            latency.update(mean=float(lat_ms.mean()), min=float(lat_ms.min()), max=float(lat_ms.max()))
        return LoadResult(
            model=cfg.model, mode=cfg.mode, concurrency=cfg.concurrency, request_rate=cfg.request_rate,
            batch_size=cfg.batch_size, seconds=seconds, requests=ok_count, errors=len(done) - ok_count,
            stable=_stable(windows, cfg.stable_windows, cfg.stability_pct),
            requests_per_s=ok_count / seconds, infer_per_s=ok_count * cfg.batch_size / seconds,
            latency_ms=latency, windows=windows, server=server, error_messages=errors, sent=sent,
            completed=completed, engine=engine,
        )


def _server_stats(url: str, protocol: str) -> dict[str, dict]:
    module = _sync_module(protocol)
    try:
        client = module.InferenceServerClient(url)
        try:
            stats = client.get_inference_statistics("", **({"as_json": True} if protocol == "grpc" else {}))
        finally:
            client.close()
    except Exception:
        return {}
    return {s["name"]: s for s in stats.get("model_stats", [])}


def _measure_windows(recorder: _Recorder, cfg: LoadConfig, t0: float):
    """Shared by both engines: yields how long to sleep before each window closes, returns
    the windows once they are stable or ``max_windows`` have passed."""
    windows: list[WindowStats] = []
    start = t0
    for _ in range(cfg.max_windows):
        yield cfg.window_s
        end = time.perf_counter()
        windows.append(recorder.window(start, end))
        start = end
        if _stable(windows, cfg.stable_windows, cfg.stability_pct):
            break
    return windows


def _error_text(exc: BaseException) -> str:
    if callable(getattr(exc, "details", None)):  # grpc.RpcError
        text = exc.details()
    elif callable(getattr(exc, "message", None)):  # tritonclient InferenceServerException
        text = exc.message()
    else:
        text = str(exc)
    return (text or type(exc).__name__).splitlines()[0][:160]


# --------------------------------------------------------------------------- callback engine
class _CallbackEngine:
    """gRPC futures; each completion re-issues the next request (closed loop) or a
    scheduler thread issues them on time (open loop)."""

    def __init__(self, url: str, cfg: LoadConfig, meta: _ModelInfo, batches, recorder: _Recorder):
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        self.url, self.cfg, self.recorder = url, cfg, recorder
        self.channel = grpc.insecure_channel(url, options=[("grpc.max_send_message_length", -1),
                                                           ("grpc.max_receive_message_length", -1)])
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.requests = [_request_protobuf(cfg, meta, batch) for batch in batches]
        self.stop = threading.Event()
        self.in_flight = 0
        self.idle = threading.Condition()

    def run(self):
        cfg = self.cfg
        try:
            scheduler = None
            if cfg.request_rate is None:
                for k in range(cfg.concurrency):
                    self._issue(k, time.perf_counter())
            else:
                scheduler = threading.Thread(target=self._schedule, daemon=True)
                scheduler.start()
            time.sleep(cfg.warmup_s)
            before = _server_stats(self.url, "grpc")
            t0 = time.perf_counter()
            windows = _drive(_measure_windows(self.recorder, cfg, t0), time.sleep)
            t1 = time.perf_counter()
            after = _server_stats(self.url, "grpc")
            self.stop.set()
            if scheduler is not None:
                scheduler.join(cfg.timeout_s)
            with self.idle:
                self.idle.wait_for(lambda: self.in_flight == 0, cfg.timeout_s + 5)
        finally:
            self.channel.close()
        return t0, t1, windows, _diff_stats(before, after)

    def _issue(self, k: int, scheduled: float) -> None:
        with self.idle:
            self.in_flight += 1
        self.recorder.started()
        future = self.stub.ModelInfer.future(self.requests[k % len(self.requests)], timeout=self.cfg.timeout_s)
        future.add_done_callback(lambda f: self._done(f, k, scheduled))

    def _done(self, future, k: int, scheduled: float) -> None:
        error = future.exception()
        self.recorder.done(scheduled, error is None, None if error is None else _error_text(error))
        if not self.stop.is_set() and self.cfg.request_rate is None:
            self._issue(k + self.cfg.concurrency, time.perf_counter())
        with self.idle:
            self.in_flight -= 1
            self.idle.notify_all()

    def _schedule(self) -> None:
        interval = 1.0 / self.cfg.request_rate
        start = time.perf_counter()
        for i in itertools.count():
            if self.stop.is_set():
                return
            due = start + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self._issue(i, due)


def _request_protobuf(cfg: LoadConfig, meta: _ModelInfo, batch):
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc._utils import _get_inference_request

    tensors = [module_infer_input(grpcclient, spec["name"], array) for spec, array in zip(meta.inputs, batch)]
    outputs = [grpcclient.InferRequestedOutput(n) for n in meta.outputs]
    return _get_inference_request(model_name=cfg.model, inputs=tensors, model_version="", request_id="",
                                  outputs=outputs, sequence_id=0, sequence_start=False, sequence_end=False,
                                  priority=0, timeout=None, parameters=cfg.parameters)


def _drive(gen, sleep):
    """Run a ``_measure_windows`` generator with a blocking ``sleep``."""
    try:
        seconds = next(gen)
        while True:
            sleep(seconds)
            seconds = gen.send(None)
    except StopIteration as stop:
        return stop.value


# --------------------------------------------------------------------------- asyncio engine
class _AsyncioEngine:
    """tritonclient's asyncio clients (gRPC or HTTP)."""

    def __init__(self, url: str, cfg: LoadConfig, meta: _ModelInfo, batches, recorder: _Recorder):
        self.url, self.cfg, self.meta, self.batches, self.recorder = url, cfg, meta, batches, recorder
        self.stop = False

    async def run(self):
        cfg = self.cfg
        if cfg.protocol == "grpc":
            import tritonclient.grpc.aio as module

            client = module.InferenceServerClient(self.url)
        else:
            import tritonclient.http.aio as module

            client = module.InferenceServerClient(self.url, conn_limit=max(cfg.concurrency, 16),
                                                  conn_timeout=cfg.timeout_s)
        self.module, self.client = module, client
        outputs = [module.InferRequestedOutput(n) for n in self.meta.outputs]
        requests = [([module_infer_input(module, s["name"], a) for s, a in zip(self.meta.inputs, batch)], outputs)
                    for batch in self.batches]
        cycle = itertools.cycle(requests)
        try:
            if cfg.request_rate is None:
                tasks = [asyncio.ensure_future(self._worker(cycle)) for _ in range(cfg.concurrency)]
            else:
                tasks = [asyncio.ensure_future(self._scheduler(cycle))]
            await asyncio.sleep(cfg.warmup_s)
            before = _server_stats(self.url, cfg.protocol)
            t0 = time.perf_counter()
            gen = _measure_windows(self.recorder, cfg, t0)
            try:
                seconds = next(gen)
                while True:
                    await asyncio.sleep(seconds)
                    seconds = gen.send(None)
            except StopIteration as stop:
                windows = stop.value
            t1 = time.perf_counter()
            after = _server_stats(self.url, cfg.protocol)
            self.stop = True
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), cfg.timeout_s + 5)
        finally:
            await client.close()
        return t0, t1, windows, _diff_stats(before, after)

    async def _send(self, request, scheduled: float) -> None:
        cfg = self.cfg
        self.recorder.started()
        inputs, outputs = request
        kw = {"client_timeout": cfg.timeout_s} if cfg.protocol == "grpc" else {}
        if cfg.parameters:
            kw["parameters"] = cfg.parameters
        try:
            await self.client.infer(cfg.model, inputs, outputs=outputs, **kw)
        except Exception as exc:  # counted, never raised: the run measures errors
            self.recorder.done(scheduled, False, _error_text(exc))
        else:
            self.recorder.done(scheduled, True)

    async def _worker(self, cycle) -> None:
        while not self.stop:
            await self._send(next(cycle), time.perf_counter())

    async def _scheduler(self, cycle) -> None:
        interval = 1.0 / self.cfg.request_rate
        start = time.perf_counter()
        pending: set[asyncio.Task] = set()
        for i in itertools.count():
            if self.stop:
                break
            due = start + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.ensure_future(self._send(next(cycle), due))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


# --------------------------------------------------------------------------- helpers
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
               for section in ("queue", "compute_input", "compute_infer", "compute_output")}
        out[name] = ServerTime(requests, executions, per["queue"], per["compute_input"], per["compute_infer"],
                               per["compute_output"])
    return out
