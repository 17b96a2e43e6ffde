"""Server-side ensemble vs the same pipeline fused in the client, side by side.

    python bench/ensemble_vs_client.py [--record]
    python bench/ensemble_vs_client.py --smoke          # batch 1, two short rounds

Server side: one request per sample batch to the ``digits`` ensemble (members and fusion
run inside Triton). Client side: for each batch the client calls the ensemble's members
itself (concurrently) and fuses their outputs with the same ``ops.fuse`` and the same
parameters the ensemble's fusion step reads from its config. Before timing, both answers
are compared on one batch. Both sides use the same asyncio gRPC client code, concurrency,
batches and windows (until perf_analyzer's stability rule holds: last 3 windows, max/min
<= 1.1 for throughput and latency), in ABBA rounds (ensemble, client | client, ensemble |
...); the ratio is the median of per-round throughput ratios with its min–max. Goal: >= 1.5x.
"""

from __future__ import annotations

import asyncio

from asyncio_sides import CLIENT_SIDE, max_difference, measure_side

from common import (
    example_repository,
    fmt_ratio,
    fusion_step,
    goal_verdict,
    headline,
    labelled,
    machine,
    markdown_table,
    median_text,
    publish,
    run_abba,
    serving,
    side_by_side_args,
    today,
)

GOAL = 1.5
ENSEMBLE = "digits"
SIDES = ("ensemble", CLIENT_SIDE)
MODELS = {"ensemble": ENSEMBLE, CLIENT_SIDE: CLIENT_SIDE}  # side -> what answers it


def parse(argv):
    return side_by_side_args(__doc__, argv, rounds=6)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    from tritonfleet.clients.loadgen import make_batches

    repository = example_repository(args, [ENSEMBLE])
    x = labelled(repository)[0][0]
    _, params, members = fusion_step(repository, ENSEMBLE)
    rows, raw, found = [], [], []
    with serving(repository, args.url) as url:
        for b in (int(v) for v in args.batch_sizes.split(",")):
            batches = [bt[0] for bt in make_batches([x], b)]
            diff = asyncio.run(max_difference(url, batches[0], params, members, ENSEMBLE, CLIENT_SIDE))
            if not diff <= 1e-5:
                raise SystemExit(f"the ensemble and client-side fusion disagree at batch {b}: max abs diff {diff:.3g}")
            run = run_abba(lambda side, _r, batches=batches: asyncio.run(measure_side(
                url, MODELS[side], batches, params, members, args.concurrency, args.window, args.max_windows)), SIDES,
                           args.rounds)
            ratio = run.ratio("ensemble", CLIENT_SIDE)
            judged = goal_verdict(ratio, GOAL)
            found.append((b, ratio, judged))
            raw.append({"batch": b, "max_abs_diff": diff, "ratio": ratio, "verdict": judged, "rounds": run.to_dict()})
            rows.append([b, args.concurrency, median_text(run.values("ensemble")), median_text(run.values(CLIENT_SIDE)),
                         fmt_ratio(ratio, suffix="x"), run.kept_text(), judged])
    table = markdown_table(["batch", "concurrency", "server-side ensemble infer/s", "client-side fusion infer/s",
                            "ensemble ÷ client-side, median [min–max], n", "rounds kept", f"goal >= {GOAL}x"], rows)
    text = (f"{machine()}; `{ENSEMBLE}` ensemble ({len(members)} members + {params['type']} fusion), local target, "
            f"the same gRPC asyncio client for both; {args.rounds} ABBA rounds, {args.window:g} s windows until stable "
            f"(at most {args.max_windows}); {today()}\n\n{table}\n\n"
            "Infer/s are medians of the kept rounds; a round in which either side never met the stability rule "
            "(last 3 windows, max/min <= 1.1) is excluded for both. Verdict: met only when every kept round reaches "
            "the goal.")
    headlines = [headline("server-side ensemble ÷ client-side fusion",
                          "; ".join(f"batch {b}: {fmt_ratio(r, suffix='×')}" for b, r, _ in found), f">= {GOAL}×",
                          "; ".join(f"batch {b}: {v}" for b, _, v in found))]
    publish(__file__, text, raw, args, argv, "ensemble_vs_client", "Server-side ensemble vs client-side fusion",
            headlines)
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
