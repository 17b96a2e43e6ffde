"""Fusion patterns side by side on digits, measured through one local tritonserver.

    python bench/fusion_report.py [--record]

1. Accuracy (test split, through the server) and speed of every member and every example
   pipeline, in one table.
2. The cost of the fusion step inside the ``digits`` ensemble at several batch sizes, from
   Triton's statistics API: compute per request of each member step and of the fusion step,
   and the fusion step's share. Beside it, the fusion *math* alone (``ops.fuse`` timed
   in-process on the same batch) and its share: the difference is the Python backend's
   per-step transport, which every Python-backend step pays (on the local target, members too).
"""

from __future__ import annotations

import time

import numpy as np

from common import ROOT, SPEC_DIR, bench_parser, machine, markdown_table, publish, today

MEMBERS = ("cnn_small_a", "cnn_small_b", "cnn_small_c", "cnn_large")
PIPELINES = ("digits", "digits_geometric", "digits_weighted", "digits_vote", "digits_stacking", "digits_rescore",
             "digits_chain", "digits_cascade", "digits_route")
STEPS = ("cnn_small_a", "cnn_small_b", "cnn_small_c", "digits_fusion")


def fusion_math_us(batch: int, repeats: int = 2000) -> float:
    from tritonfleet.builder.runtime import ops

    rng = np.random.default_rng(0)
    scores = [rng.normal(size=(batch, 10)).astype(np.float32) for _ in range(3)]
    params = {"type": "mean", "activation": "softmax"}
    ops.fuse(params, scores)
    start = time.perf_counter()
    for _ in range(repeats):
        ops.fuse(params, scores)
    return (time.perf_counter() - start) / repeats * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--window", type=float, default=1.5, help="seconds per measurement window")
    args = parser.parse_args(argv)

    from tritonfleet.builder.spec import load_spec
    from tritonfleet.builder.spec.splits import load_split
    from tritonfleet.clients.evaluation.measure import measure_models
    from tritonfleet.clients.loadgen import LoadConfig, run_load
    from tritonfleet.clients.server import TritonServer
    from tritonfleet.examples.workdir import build_examples

    results = build_examples(ROOT, [p for p in PIPELINES], output_dir=args.output, progress=False)
    repo = results["digits"].repository
    test = load_split(load_spec(SPEC_DIR / "digits.yaml"), "test")
    load = LoadConfig(model="", concurrency=args.concurrency, batch_size=8, warmup_s=0.5, window_s=args.window,
                      max_windows=5)
    with TritonServer(repo) as server:
        url = server.url("grpc")
        rows = measure_models(url, [(m, "member") for m in MEMBERS] + [(p, "pipeline") for p in PIPELINES],
                              test.inputs, test.labels, load)
        cost = []
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            res = run_load(url, LoadConfig("digits", concurrency=args.concurrency, batch_size=batch, warmup_s=1.0,
                                           window_s=args.window, max_windows=6), test.inputs)
            compute = {s: res.server[s].compute_us for s in STEPS}
            members = sum(compute[s] for s in STEPS[:-1])
            math_us = fusion_math_us(batch)
            e2e = res.server["digits"].compute_infer_us
            cost.append({"batch": batch, "infer_per_s": res.infer_per_s, "members_us": members,
                         "fusion_step_us": compute["digits_fusion"],
                         "fusion_step_share": compute["digits_fusion"] / (members + compute["digits_fusion"]),
                         "ensemble_us": e2e, "fusion_math_us": math_us, "fusion_math_share": math_us / e2e})

    accuracy = markdown_table(
        ["model", "kind", "test top-1", "infer/s (batch 8)", "p50 ms", "p99 ms"],
        [[r.model, r.kind, f"{r.accuracy:.4f}", f"{r.load.infer_per_s:,.0f}", f"{r.load.latency_ms['p50']:.2f}",
          f"{r.load.latency_ms['p99']:.2f}"] for r in rows],
    )
    overhead = markdown_table(
        ["batch", "ensemble infer/s", "3 member steps, us/request", "fusion step, us/request", "fusion step share",
         "fusion math, us/request", "fusion math share of ensemble"],
        [[c["batch"], f"{c['infer_per_s']:,.0f}", f"{c['members_us']:,.0f}", f"{c['fusion_step_us']:,.0f}",
          f"{100 * c['fusion_step_share']:.1f}%", f"{c['fusion_math_us']:.0f}", f"{100 * c['fusion_math_share']:.1f}%"]
         for c in cost],
    )
    header = (f"{machine()}; local target (every step is a Python-backend model); concurrency {args.concurrency}; "
              f"test split of digits ({len(test.labels)} samples); {today()}")
    text = f"{header}\n\n{accuracy}\n\nFusion step cost in the `digits` ensemble (Triton statistics API):\n\n{overhead}"
    publish(__file__, text, {"accuracy": [r.to_dict() for r in rows], "cost": cost}, args, argv, 'fusion_report',
            'Fusion patterns (bench/fusion_report.py)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
