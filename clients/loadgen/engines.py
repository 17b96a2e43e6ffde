"""The engines that send a load run's requests, and :func:`run_load`.

Two modes, as in perf_analyzer:

* **concurrency** (closed loop): ``concurrency`` requests are kept in flight;
* **request rate** (open loop): requests leave on a constant schedule whatever the
  responses do, and latency counts from the scheduled send time, so a server that falls
  behind shows it in latency instead of silently lowering the offered load.

Two engines, both asynchronous:

* :class:`CallbackEngine` (gRPC default): gRPC futures whose done-callbacks issue the next
  request; request protobufs are built once. No event loop, so the client takes little CPU
  from a server on the same machine. It also runs a fixed number of requests
  (``total=``), which is what a soak is (:mod:`.soak`);
* :class:`AsyncioEngine`: tritonclient's asyncio clients (HTTP default; selectable for gRPC).

After a warm-up, windows repeat until perf_analyzer's stability rule holds over the last
``stable_windows`` (:mod:`.windows`) or ``max_windows`` pass; the result reports those last
windows and says whether they were stable. Errors are counted, never raised.

With ``shared_memory`` (system or CUDA) both engines write the batches into registered
regions once, before the warm-up, and send requests that only say where they lie
(:func:`.requests.place_in_shared_memory`); the regions are unregistered and freed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import Iterator, Sequence

import numpy as np

from tritonfleet.clients.loadgen.config import LoadConfig
from tritonfleet.clients.loadgen.requests import (
    error_text,
    grpc_request,
    infer_inputs,
    place_in_shared_memory,
    request_batches,
    requested_outputs,
)
from tritonfleet.clients.loadgen.results import LoadResult, Recorder, diff_statistics, server_statistics
from tritonfleet.clients.loadgen.windows import WindowStats, is_stable, measure_windows
from tritonfleet.clients.metadata import ModelMetadata
from tritonfleet.clients.shm import SharedMemoryPool


def fetch_metadata(url: str, protocol: str, model: str) -> ModelMetadata:
    if protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    client = module.InferenceServerClient(url)
    try:
        return ModelMetadata.fetch(client, model, url)
    finally:
        client.close()


def run_load(url: str, config: LoadConfig, inputs: Sequence[np.ndarray] | None = None) -> LoadResult:
    """Measure ``config.model`` at ``url``; ``inputs`` is a dataset (one array per model
    input) or ``None`` for generated data of the model's signature."""
    meta = fetch_metadata(url, config.protocol, config.model)
    batches = request_batches(meta, config.batch_size, inputs)
    recorder = Recorder()
    engine = config.resolved_engine
    with shared_memory_pool(url, config) as pool:
        layout = place_in_shared_memory(pool, meta, batches, config.batch_size) if pool is not None else None
        if engine == "callback":
            windows, server = CallbackEngine(url, config, meta, batches, recorder, layout=layout).measure()
        else:
            windows, server = asyncio.run(AsyncioEngine(url, config, meta, batches, recorder, layout).measure())
    stable = is_stable(windows, config.stable_windows, config.stability_pct)
    return recorder.result(config, windows, stable, server, engine)


@contextlib.contextmanager
def shared_memory_pool(url: str, config: LoadConfig) -> Iterator[SharedMemoryPool | None]:
    """A :class:`SharedMemoryPool` registered with the server (``None`` without shared memory),
    unregistered and freed on exit."""
    if config.shared_memory == "none":
        yield None
        return
    if config.protocol == "grpc":
        import tritonclient.grpc as module
    else:
        import tritonclient.http as module
    client = module.InferenceServerClient(url)
    pool = SharedMemoryPool(client, config.shared_memory, config.device_id, prefix=f"loadgen_{config.model}")
    try:
        yield pool
    finally:
        pool.close()
        client.close()


class _Windows:
    """Closes windows and snapshots Triton's statistics at each boundary, so the server-side
    split covers exactly the reported windows."""

    def __init__(self, url: str, cfg: LoadConfig, recorder: Recorder):
        self.url, self.cfg, self.recorder = url, cfg, recorder
        self.snapshots: list[dict] = []

    def begin(self) -> float:
        self.snapshots.append(server_statistics(self.url, self.cfg.protocol))
        return time.perf_counter()

    def close(self, start: float, end: float) -> WindowStats:
        self.snapshots.append(server_statistics(self.url, self.cfg.protocol))
        return self.recorder.window(start, end)

    def generator(self, start: float):
        cfg = self.cfg
        return measure_windows(self.close, cfg.window_s, cfg.max_windows, cfg.stable_windows, cfg.stability_pct, start)

    def server(self, windows: list[WindowStats]) -> dict:
        reported = min(len(windows), self.cfg.stable_windows)
        return diff_statistics(self.snapshots[-reported - 1], self.snapshots[-1])


def _drive(gen, sleep):
    """Run a :func:`measure_windows` generator with a blocking ``sleep``; returns its windows."""
    try:
        seconds = next(gen)
        while True:
            sleep(seconds)
            seconds = gen.send(None)
    except StopIteration as stop:
        return stop.value


# --------------------------------------------------------------------------- callback engine
class CallbackEngine:
    """gRPC futures; each completion issues the next request (closed loop) or a scheduler
    thread issues them on time (open loop). ``total`` bounds the number of requests."""

    def __init__(self, url: str, cfg: LoadConfig, meta: ModelMetadata, batches, recorder: Recorder,
                 total: int | None = None, layout=None):
        import grpc
        from tritonclient.grpc import service_pb2_grpc

        self.url, self.cfg, self.recorder, self.total = url, cfg, recorder, total
        self.channel = grpc.insecure_channel(url, options=[("grpc.max_send_message_length", -1),
                                                           ("grpc.max_receive_message_length", -1)])
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        if layout is None:
            self.requests = [grpc_request(cfg.model, meta, batch, cfg.parameters, version=cfg.version)
                             for batch in batches]
        else:
            self.requests = [grpc_request(cfg.model, meta, batch, cfg.parameters, placed, layout.outputs, cfg.version)
                             for batch, placed in zip(layout.batches, layout.inputs)]
        self.stop = threading.Event()
        self.issued = 0
        self.in_flight = 0
        self.idle = threading.Condition()
        self.scheduler: threading.Thread | None = None

    # ---- lifecycle
    def start(self) -> None:
        if self.cfg.request_rate is None:
            for _ in range(self.cfg.concurrency if self.total is None else min(self.cfg.concurrency, self.total)):
                self._issue(time.perf_counter())
        else:
            self.scheduler = threading.Thread(target=self._schedule, daemon=True)
            self.scheduler.start()

    def drain(self) -> None:
        """Stop issuing, wait for the requests in flight, close the channel."""
        self.stop.set()
        if self.scheduler is not None:
            self.scheduler.join(self.cfg.timeout_s)
        with self.idle:
            self.idle.wait_for(lambda: self.in_flight == 0, self.cfg.timeout_s + 5)
        self.channel.close()

    def measure(self) -> tuple[list[WindowStats], dict]:
        windows = _Windows(self.url, self.cfg, self.recorder)
        try:
            self.start()
            time.sleep(self.cfg.warmup_s)
            result = _drive(windows.generator(windows.begin()), time.sleep)
        finally:
            self.drain()
        return result, windows.server(result)

    def run_total(self, timeout: float | None = None) -> None:
        """Send exactly ``total`` requests; return once every one has completed."""
        try:
            self.start()
            with self.idle:
                self.idle.wait_for(lambda: self.recorder.completed >= self.total, timeout)
        finally:
            self.drain()

    # ---- requests
    def _issue(self, scheduled: float) -> None:
        with self.idle:
            if self.stop.is_set() or (self.total is not None and self.issued >= self.total):
                return
            k = self.issued
            self.issued += 1
            self.in_flight += 1
        self.recorder.started()
        future = self.stub.ModelInfer.future(self.requests[k % len(self.requests)], timeout=self.cfg.timeout_s)
        future.add_done_callback(lambda f: self._done(f, scheduled))

    def _done(self, future, scheduled: float) -> None:
        error = future.exception()
        self.recorder.done(scheduled, error is None, None if error is None else error_text(error))
        if self.cfg.request_rate is None:
            self._issue(time.perf_counter())
        with self.idle:
            self.in_flight -= 1
            self.idle.notify_all()

    def _schedule(self) -> None:
        interval = 1.0 / self.cfg.request_rate
        start = time.perf_counter()
        for i in itertools.count():
            if self.stop.is_set() or (self.total is not None and self.issued >= self.total):
                return
            due = start + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self._issue(due)


# --------------------------------------------------------------------------- asyncio engine
class AsyncioEngine:
    """tritonclient's asyncio clients (gRPC or HTTP)."""

    def __init__(self, url: str, cfg: LoadConfig, meta: ModelMetadata, batches, recorder: Recorder, layout=None):
        self.url, self.cfg, self.meta, self.batches, self.recorder = url, cfg, meta, batches, recorder
        self.layout = layout
        self.stop = False

    async def measure(self) -> tuple[list[WindowStats], dict]:
        cfg = self.cfg
        if cfg.protocol == "grpc":
            import tritonclient.grpc.aio as module

            client = module.InferenceServerClient(self.url)
        else:
            import tritonclient.http.aio as module

            client = module.InferenceServerClient(self.url, conn_limit=max(cfg.concurrency, 16),
                                                  conn_timeout=cfg.timeout_s)
        self.client = client
        if self.layout is None:
            outputs = requested_outputs(module, self.meta)
            cycle = itertools.cycle([(infer_inputs(module, self.meta, batch), outputs) for batch in self.batches])
        else:
            outputs = requested_outputs(module, self.meta, self.layout.outputs)
            cycle = itertools.cycle([(infer_inputs(module, self.meta, batch, placed), outputs)
                                     for batch, placed in zip(self.layout.batches, self.layout.inputs)])
        windows = _Windows(self.url, cfg, self.recorder)
        try:
            if cfg.request_rate is None:
                tasks = [asyncio.ensure_future(self._worker(cycle)) for _ in range(cfg.concurrency)]
            else:
                tasks = [asyncio.ensure_future(self._scheduler(cycle))]
            await asyncio.sleep(cfg.warmup_s)
            gen = windows.generator(windows.begin())
            try:
                seconds = next(gen)
                while True:
                    await asyncio.sleep(seconds)
                    seconds = gen.send(None)
            except StopIteration as stop:
                result = stop.value
            self.stop = True
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), cfg.timeout_s + 5)
        finally:
            await client.close()
        return result, windows.server(result)

    async def _send(self, request, scheduled: float) -> None:
        cfg = self.cfg
        self.recorder.started()
        inputs, outputs = request
        kw = {"client_timeout": cfg.timeout_s} if cfg.protocol == "grpc" else {}
        if cfg.parameters:
            kw["parameters"] = cfg.parameters
        try:
            await self.client.infer(cfg.model, inputs, outputs=outputs, model_version=cfg.version, **kw)
        except Exception as exc:  # counted, never raised: the run measures errors
            self.recorder.done(scheduled, False, error_text(exc))
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
