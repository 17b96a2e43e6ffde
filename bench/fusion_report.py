"""Fusion patterns side by side on digits, measured through one local tritonserver.

    python bench/fusion_report.py [--record]
    python bench/fusion_report.py --smoke          # two models, batch 1, two short rounds

1. Accuracy (test split, through the server) and speed of every member and every example
   pipeline, in one table (measured one after another: a listing, not a ratio; each run's
   stability flag is shown).
2. What the fusion costs inside the ``digits`` ensemble, at several batch sizes, at
   concurrency 1 (``--cost-concurrency``: the server's per-request times are then not
   queueing, and each request executes alone, so the fusion step fuses exactly the batch
   sent). In ABBA rounds:

   * *server*: a load run on ``digits``; from Triton's statistics over that run's reported
     windows: the ensemble's server time per request, and the fusion step's compute per
     request. **Fusion step share** = fusion step ÷ ensemble, both from the same run;
   * *math*: ``ops.fuse`` timed in this process on the same inputs the server fused: the
     members' real outputs on the test split (fetched through the server), in the batches
     the load generator sends, with the fusion parameters from the fusion step's config.
     **Fusion math share** = math ÷ the ensemble time of the paired server round.

   Each share is the median of per-round values with its min–max. The step's share beyond the
   math is the Python backend's per-step transport (and whatever else the step does).
"""

from __future__ import annotations

import itertools

import numpy as np

from common import (
    Sample,
    add_server_args,
    bench_parser,
    check_server_args,
    example_repository,
    fmt_ratio,
    fusion_step,
    goal_verdict,
    headline,
    labelled,
    machine,
    markdown_table,
    publish,
    ratio_summary,
    run_abba,
    serving,
    timed_windows,
    today,
)

MEMBERS = ("cnn_small_a", "cnn_small_b", "cnn_small_c", "cnn_large")
PIPELINES = ("digits", "digits_geometric", "digits_weighted", "digits_vote", "digits_stacking", "digits_rescore",
             "digits_chain", "digits_cascade", "digits_route")
ENSEMBLE = "digits"
GOAL = 0.05  # fusion share of the ensemble's server time
SIDES = ("server", "math")


def parse(argv):
    parser = bench_parser(__doc__)
    add_server_args(parser)
    parser.add_argument("--models", default=",".join(MEMBERS + PIPELINES), help="rows of the accuracy table")
    parser.add_argument("--concurrency", type=int, default=8, help="of the accuracy/speed table")
    parser.add_argument("--cost-concurrency", type=int, default=1, help="of the fusion cost rounds")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--rounds", type=int, default=4, help="ABBA rounds of the fusion cost")
    parser.add_argument("--window", type=float, default=1.5, help="seconds per measurement window")
    parser.add_argument("--max-windows", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="cnn_small_a and digits, batch 1, 2 rounds of 0.2 s")
    args = parser.parse_args(argv)
    check_server_args(parser, args)
    if args.smoke:
        args.models, args.batch_sizes, args.rounds, args.window, args.max_windows = "cnn_small_a,digits", "1", 2, 0.2, 4
    if args.rounds < 2 or min(args.concurrency, args.cost_concurrency) < 1 or args.window <= 0 or args.max_windows < 3:
        parser.error("--rounds >= 2, concurrencies >= 1, --window > 0 and --max-windows >= 3")
    return args


def member_outputs(url: str, members: list[tuple[str, str]], x: np.ndarray) -> list[np.ndarray]:
    """Each member's real output on ``x``, through the server (what the ensemble hands the fusion)."""
    from tritonfleet.clients.infer import TritonClient

    with TritonClient(url, protocol="grpc") as client:
        return [np.asarray(client.infer_batched(model, [x])[output]) for model, output in members]


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    from tritonfleet.builder.runtime import ops
    from tritonfleet.clients.evaluation.measure import measure_models
    from tritonfleet.clients.loadgen import LoadConfig, make_batches, run_load

    wanted = args.models.split(",")
    repository = example_repository(args, [ENSEMBLE, *(p for p in PIPELINES if p in wanted and p != ENSEMBLE)])
    present = [m for m in wanted if (repository / m / "config.pbtxt").is_file()]
    missing = [m for m in wanted if m not in present]
    inputs, labels = labelled(repository)
    x = inputs[0]
    fusion, params, members = fusion_step(repository, ENSEMBLE)
    load = LoadConfig(model="", concurrency=args.concurrency, batch_size=8, warmup_s=0.5, window_s=args.window,
                      max_windows=args.max_windows)
    cost = []
    with serving(repository, args.url) as url:
        rows = measure_models(url, [(m, "member" if m in MEMBERS else "pipeline") for m in present], inputs, labels,
                              load)
        outputs = member_outputs(url, members, x)
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            index = [b[0] for b in make_batches([np.arange(len(x))], batch)]  # the batches the load generator sends
            fused_inputs = itertools.cycle([[o[i] for o in outputs] for i in index])
            config = LoadConfig(ENSEMBLE, concurrency=args.cost_concurrency, batch_size=batch, warmup_s=1.0,
                                window_s=args.window, max_windows=args.max_windows)

            def measure(side, _round, config=config, fused_inputs=fused_inputs, batch=batch):
                if side == "math":
                    sample = timed_windows(lambda: ops.fuse(params, next(fused_inputs)), batch, args.window,
                                           args.max_windows)
                    return Sample(1e6 * batch / sample.value, sample.stable, sample.extra)  # µs per request
                res = run_load(url, config, [x])
                ens, step = res.server.get(ENSEMBLE), res.server.get(fusion)
                return Sample(ens.request_us if ens else float("nan"), res.stable, {
                    "fusion_step_us": step.compute_us if step else float("nan"),
                    "fusion_requests_per_execution": step.batch_per_execution if step else float("nan"),
                    "members_us": {m: res.server[m].compute_us for m, _ in members if m in res.server},
                    "infer_per_s": res.infer_per_s})

            run = run_abba(measure, SIDES, args.rounds)
            kept = run.kept()
            step_share = ratio_summary([run.rounds[i]["server"].extra["fusion_step_us"] / run.rounds[i]["server"].value
                                        for i in kept])
            math_share = run.ratio("math", "server")
            entry = {"batch": batch, "fusion_step_share": step_share, "fusion_math_share": math_share,
                     "step_verdict": goal_verdict(_pct(step_share), 100 * GOAL, higher=False),
                     "math_verdict": goal_verdict(_pct(math_share), 100 * GOAL, higher=False), "rounds": run.to_dict()}
            entry["table"] = [
                batch, _med([run.rounds[i]["server"].extra["infer_per_s"] for i in kept], ",.0f"),
                _med(run.values("server"), ",.0f"), _med([run.rounds[i]["server"].extra["fusion_step_us"] for i in kept],
                                                         ",.0f"),
                _med(run.values("math"), ",.0f"), fmt_ratio(_pct(step_share), 1, "%"), fmt_ratio(_pct(math_share), 1, "%"),
                _med([run.rounds[i]["server"].extra["fusion_requests_per_execution"] for i in kept], ".2f"),
                run.kept_text()]
            cost.append(entry)

    accuracy = markdown_table(
        ["model", "kind", "test top-1", "infer/s (batch 8)", "p50 ms", "p99 ms", "stable"],
        [[r.model, r.kind, f"{r.accuracy:.4f}", f"{r.load.infer_per_s:,.0f}", f"{r.load.latency_ms['p50']:.2f}",
          f"{r.load.latency_ms['p99']:.2f}", "yes" if r.load.stable else "NO"] for r in rows],
    )
    overhead = markdown_table(
        ["batch", "ensemble infer/s", "ensemble server time, µs/request", "fusion step compute, µs/request",
         "fusion math (in-process), µs/request", "fusion step share, median [min–max], n",
         "fusion math share, median [min–max], n", "fusion requests per execution", "rounds kept"],
        [c["table"] for c in cost])
    header = (f"{machine()}; local target (every step is a Python-backend model); accuracy on the digits test split "
              f"({len(labels)} samples) through the server; {today()}")
    skipped = f"\n\nNot in the repository (not measured): {', '.join(missing)}" if missing else ""
    text = (f"{header}\n\nAccuracy and speed at concurrency {args.concurrency} (one model after another, "
            f"{args.window:g} s windows until stable):\n\n{accuracy}{skipped}\n\n"
            f"Fusion cost in the `{ENSEMBLE}` ensemble ({fusion}: {params['type']}), concurrency {args.cost_concurrency}, "
            f"{args.rounds} ABBA rounds (server, math | math, server | ...), {args.window:g} s windows until stable; "
            f"server times from Triton's statistics API over each run's reported windows; the math timed on the "
            f"members' real outputs for the same batches:\n\n{overhead}\n\n"
            "A round in which either side never met the stability rule (last 3 windows, max/min <= 1.1) is excluded "
            f"for both. Goal: share <= {100 * GOAL:g} %; met only when every kept round is within it.")
    headlines = [
        headline(f"fusion math share of the `{ENSEMBLE}` ensemble's server time (concurrency {args.cost_concurrency})",
                 "; ".join(f"batch {c['batch']}: {fmt_ratio(_pct(c['fusion_math_share']), 1, ' %')}" for c in cost),
                 f"<= {100 * GOAL:g} %", "; ".join(f"batch {c['batch']}: {c['math_verdict']}" for c in cost)),
        headline("fusion *step* share (Python-backend model: transport + copies + math)",
                 "; ".join(f"batch {c['batch']}: {fmt_ratio(_pct(c['fusion_step_share']), 1, ' %')}" for c in cost),
                 f"<= {100 * GOAL:g} %", "; ".join(f"batch {c['batch']}: {c['step_verdict']}" for c in cost)),
    ]
    raw = {"accuracy": [r.to_dict() for r in rows], "cost": [{k: v for k, v in c.items() if k != "table"} for c in cost]}
    publish(__file__, text, raw, args, argv, "fusion_report", "Fusion patterns (bench/fusion_report.py)", headlines)
    return 0


def _pct(summary: dict) -> dict:
    return {k: (100 * v if k != "n" else v) for k, v in summary.items()}


def _med(values, spec: str) -> str:
    values = [v for v in values if np.isfinite(v)]
    return format(float(np.median(values)), spec) if values else "-"


if __name__ == "__main__":
    raise SystemExit(main())
