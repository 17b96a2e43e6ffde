"""Server-side ensemble vs the same pipeline fused in the client, side by side.

    python bench/ensemble_vs_client.py [--record]

Server side: one request per sample batch to the ``digits`` ensemble (members and fusion
run inside Triton). Client side: for each batch the client calls the three members itself
(concurrently) and fuses their outputs with the same ``ops.fuse``. Both use the same asyncio
gRPC client code, concurrency and batches, in alternating rounds; the ratio is the median of
per-round throughput ratios. Goal: >= 1.5x.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import numpy as np

from common import ROOT, SPEC_DIR, bench_parser, machine, markdown_table, publish, today

MEMBERS = ("cnn_small_a", "cnn_small_b", "cnn_small_c")


async def _throughput(url: str, batches, concurrency: int, seconds: float, client_side: bool) -> float:
    import tritonclient.grpc.aio as grpcclient

    from tritonfleet.builder.runtime import ops

    client = grpcclient.InferenceServerClient(url)
    cycle = itertools.cycle(batches)
    done, stop = [0], [False]

    def inputs(batch):
        tensor = grpcclient.InferInput("image", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        return [tensor]

    async def one(batch) -> None:
        if client_side:
            results = await asyncio.gather(*(client.infer(m, inputs(batch)) for m in MEMBERS))
            ops.fuse({"type": "mean"}, [r.as_numpy("logits") for r in results])
        else:
            (await client.infer("digits", inputs(batch))).as_numpy("probabilities")
        done[0] += len(batch)

    async def worker() -> None:
        while not stop[0]:
            await one(next(cycle))

    tasks = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
    await asyncio.sleep(1.0)
    start, t0 = done[0], time.perf_counter()
    await asyncio.sleep(seconds)
    rate = (done[0] - start) / (time.perf_counter() - t0)
    stop[0] = True
    await asyncio.gather(*tasks)
    await client.close()
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0)
    args = parser.parse_args(argv)

    from tritonfleet.builder.spec import load_spec
    from tritonfleet.builder.spec.splits import load_split
    from tritonfleet.clients.loadgen import make_batches
    from tritonfleet.clients.server import TritonServer
    from tritonfleet.examples.workdir import build_examples

    results = build_examples(ROOT, ["digits"], output_dir=args.output, progress=False)
    x = load_split(load_spec(SPEC_DIR / "digits.yaml"), "test").inputs[0]
    rows, raw = [], []
    with TritonServer(results["digits"].repository) as server:
        url = server.url("grpc")
        for b in (int(v) for v in args.batch_sizes.split(",")):
            batches = [bt[0] for bt in make_batches([x], b)]
            ens, cli = [], []
            for _ in range(args.rounds):
                ens.append(asyncio.run(_throughput(url, batches, args.concurrency, args.seconds, False)))
                cli.append(asyncio.run(_throughput(url, batches, args.concurrency, args.seconds, True)))
            ratio = float(np.median(np.array(ens) / np.array(cli)))
            raw.append({"batch": b, "ensemble": ens, "client_side": cli, "ratio": ratio})
            rows.append([b, args.concurrency, f"{np.median(ens):,.0f}", f"{np.median(cli):,.0f}", f"{ratio:.2f}x",
                         "yes" if ratio >= 1.5 else "no"])
    table = markdown_table(["batch", "concurrency", "server-side ensemble infer/s", "client-side fusion infer/s",
                            "ratio (median of rounds)", "goal >= 1.5x"], rows)
    text = (f"{machine()}; `digits` ensemble (3 members + mean fusion), local target, gRPC asyncio client for both; "
            f"{args.rounds} alternating rounds of {args.seconds:g}s; {today()}\n\n{table}")
    publish(__file__, text, raw, args, argv, 'ensemble_vs_client',
            'Server-side ensemble vs client-side fusion')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
