"""One model per request, or its members called by the client and fused there: measured alike.

bench/ensemble_vs_client.py and bench/compiled_vs_ensemble.py compare a served pipeline with
client-side fusion (the client calls the members concurrently and fuses with the same
``ops.fuse`` and parameters as the ensemble's fusion step). Both sides run on the same asyncio
gRPC client, with ``concurrency`` workers and windows until perf_analyzer's stability rule
holds (last 3 windows, max/min <= 1.1 for throughput and latency).
"""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np

from common import Sample

CLIENT_SIDE = "client_side"


class Calls:
    """Ways to answer a batch on one asyncio gRPC client: a served model by name, or
    :data:`CLIENT_SIDE` (the members, fused here)."""

    def __init__(self, client, params: dict, members: list[tuple[str, str]]):
        import tritonclient.grpc.aio as grpcclient

        from tritonfleet.builder.runtime import ops

        self.client, self.params, self.members, self.ops, self.grpc = client, params, members, ops, grpcclient

    def inputs(self, batch: np.ndarray):
        tensor = self.grpc.InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        return [tensor]

    def __call__(self, side: str):
        """The coroutine function answering a batch with ``side``'s probabilities."""
        if side == CLIENT_SIDE:
            return self.client_side

        async def served(batch: np.ndarray) -> np.ndarray:
            return (await self.client.infer(side, self.inputs(batch))).as_numpy("probabilities")

        return served

    async def client_side(self, batch: np.ndarray) -> np.ndarray:
        results = await asyncio.gather(*(self.client.infer(m, self.inputs(batch)) for m, _ in self.members))
        return self.ops.fuse(self.params, [r.as_numpy(out) for r, (_, out) in zip(results, self.members)])["probabilities"]


async def measure_side(url: str, side: str, batches, params: dict, members, concurrency: int, window: float,
                       max_windows: int) -> Sample:
    """Samples/s of one side: ``concurrency`` workers, windows until stable (or ``max_windows``)."""
    import tritonclient.grpc.aio as grpcclient

    from tritonfleet.clients.loadgen.requests import error_text
    from tritonfleet.clients.loadgen.results import Recorder
    from tritonfleet.clients.loadgen.windows import is_stable, measure_windows, spread

    client = grpcclient.InferenceServerClient(url)
    call = Calls(client, params, members)(side)
    recorder, cycle, stop = Recorder(), itertools.cycle(batches), [False]

    async def worker() -> None:
        while not stop[0]:
            batch, start = next(cycle), time.perf_counter()
            recorder.started()
            try:
                await call(batch)
            except Exception as exc:  # counted: a failing side shows as errors, not as speed
                recorder.done(start, False, error_text(exc))
            else:
                recorder.done(start, True)

    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    try:
        await asyncio.sleep(min(1.0, window))
        gen = measure_windows(recorder.window, window, max_windows, 3, 10.0, time.perf_counter())
        try:
            wait = next(gen)
            while True:
                await asyncio.sleep(wait)
                wait = gen.send(None)
        except StopIteration as done:
            windows = done.value
    finally:
        stop[0] = True
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
    last = windows[-3:]
    rate = sum(w.requests for w in last) * len(batches[0]) / sum(w.seconds for w in last)
    return Sample(rate, is_stable(windows, 3, 10.0),
                  {"errors": sum(w.errors for w in last), "windows": len(windows),
                   "spread": [spread([w.requests_per_s for w in last]), spread([w.mean_latency_ms for w in last])]})


async def max_difference(url: str, batch: np.ndarray, params: dict, members, side: str, other: str) -> float:
    """max |Δ probabilities| between two sides on one batch."""
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        calls = Calls(client, params, members)
        return float(np.abs(await calls(side)(batch) - await calls(other)(batch)).max())
    finally:
        await client.close()
