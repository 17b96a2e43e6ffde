"""Own load generator vs perf_analyzer: throughput at the same concurrency, side by side.

    python bench/loadgen_vs_perf_analyzer.py [--record]
    python bench/loadgen_vs_perf_analyzer.py --smoke          # seconds: one model, two short rounds

Both send the same real digits samples (batch 1) over gRPC to the same server, with the same
window length, stability rule (perf_analyzer's: last 3 windows, max/min <= 1.1 for throughput
and latency) and maximum number of windows, in ABBA rounds (perf_analyzer, loadgen | loadgen,
perf_analyzer | ...), so drift on the machine hits both alike. Reported per setup and model:

* the median of per-round ratios loadgen ÷ perf_analyzer with its min–max and count (goal: within 5%);
* each side's own spread between its rounds (max/min): the noise floor of the comparison. While
  perf_analyzer's own spread exceeds the goal, a ratio cannot show the goal met or missed, so
  the verdict is "no verdict";
* each client's CPU per request, by one formula for both: CPU seconds of the client process
  (this process for loadgen, the perf_analyzer child for perf_analyzer) ÷ (its wall seconds ×
  its measured requests/s); start-up and warm-up are inside both.

A round in which either side never met the stability rule is excluded for both (the count is
in the table). Two setups: ``shared`` (server and clients on every CPU: each client's CPU is
taken from the server) and ``pinned`` (server on CPU 0, clients on the other CPUs).
"""

from __future__ import annotations

import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from common import (
    Sample,
    add_server_args,
    bench_parser,
    check_server_args,
    example_repository,
    fmt_ratio,
    headline,
    labelled,
    machine,
    markdown_table,
    publish,
    run_abba,
    self_spread,
    serving,
    today,
)

SIDES = ("perf_analyzer", "loadgen")


def parse(argv):
    parser = bench_parser(__doc__)
    add_server_args(parser)
    parser.add_argument("--models", default="cnn_small_a,digits")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--setups", default="shared,pinned")
    parser.add_argument("--rounds", type=int, default=6, help="ABBA rounds; each measures both sides once")
    parser.add_argument("--window", type=float, default=3.0, help="seconds per measurement window (both sides)")
    parser.add_argument("--max-windows", type=int, default=10, help="windows before giving up on stability (both)")
    parser.add_argument("--goal", type=float, default=0.05, help="loadgen ÷ perf_analyzer within 1 ± this")
    parser.add_argument("--smoke", action="store_true",
                        help="a quick end-to-end check: cnn_small_a, shared, 2 rounds of 0.3 s windows")
    args = parser.parse_args(argv)
    check_server_args(parser, args)
    if args.smoke:
        args.models, args.setups, args.rounds, args.window, args.max_windows = "cnn_small_a", "shared", 2, 0.3, 4
    if args.rounds < 2 or args.concurrency < 1 or args.window <= 0 or args.max_windows < 3:
        parser.error("--rounds >= 2, --concurrency >= 1, --window > 0 and --max-windows >= 3")
    if args.url and args.setups != "shared":
        parser.error("--url measures a server started elsewhere: only --setups shared applies")
    return args


def verdict(ratio: dict, pa_spread: float, goal: float) -> str:
    """Met/missed only when perf_analyzer's own spread between rounds is within the goal."""
    if ratio["n"] < 2:
        return "no verdict: fewer than 2 rounds with both sides stable"
    if not pa_spread - 1 <= goal:
        return f"no verdict: perf_analyzer's own spread {pa_spread:.2f} exceeds the goal (1 ± {goal:g})"
    return "met" if abs(ratio["median"] - 1) <= goal else "missed"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    from tritonfleet.clients.loadgen import LoadConfig, run_load
    from tritonfleet.clients.perf import PerfAnalyzerConfig, run_perf_analyzer, write_input_data

    repository = example_repository(args, ["digits"])
    inputs, _ = labelled(repository)
    x = inputs[0]
    all_cpus = os.sched_getaffinity(0)
    rows, raw, lines = [], [], []
    for setup in args.setups.split(","):
        pinned = setup == "pinned"
        if pinned and len(all_cpus) < 2:
            print("skipping the pinned setup: it needs 2 CPUs")
            continue
        server_cpus = {min(all_cpus)} if pinned else None
        try:
            if pinned:
                os.sched_setaffinity(0, all_cpus - server_cpus)  # this process and its perf_analyzer children
            with serving(repository, args.url, cpus=server_cpus) as url, tempfile.TemporaryDirectory() as tmp:
                data = write_input_data(Path(tmp) / "input.json", {"image": x})
                for model in args.models.split(","):
                    pa_config = PerfAnalyzerConfig(model, url, concurrency=(args.concurrency,), input_data=data,
                                                   measurement_interval_ms=int(args.window * 1000),
                                                   max_trials=args.max_windows)
                    lg_config = LoadConfig(model, concurrency=args.concurrency, warmup_s=min(1.0, args.window),
                                           window_s=args.window, max_windows=args.max_windows)

                    def measure(side, _round, pa_config=pa_config, lg_config=lg_config):
                        t0, c0 = time.perf_counter(), _cpu(side)
                        res = run_perf_analyzer(pa_config)[0] if side == "perf_analyzer" else run_load(url, lg_config, [x])
                        wall, cpu = time.perf_counter() - t0, _cpu(side) - c0
                        per_request = 1e6 * cpu / (wall * res.requests_per_s) if res.requests_per_s > 0 else np.nan
                        return Sample(res.infer_per_s, res.stable, {"cpu_us_per_request": per_request,
                                                                    "spread": [res.throughput_spread, res.latency_spread]})

                    run = run_abba(measure, SIDES, args.rounds)
                    ratio = run.ratio("loadgen", "perf_analyzer")
                    pa, lg = run.values("perf_analyzer"), run.values("loadgen")
                    pa_spread, lg_spread = self_spread(pa), self_spread(lg)
                    cpu = {s: _median([run.rounds[i][s].extra["cpu_us_per_request"] for i in run.kept()]) for s in SIDES}
                    judged = verdict(ratio, pa_spread, args.goal)
                    raw.append({"setup": setup, "model": model, "concurrency": args.concurrency, "ratio": ratio,
                                "perf_analyzer_spread": pa_spread, "loadgen_spread": lg_spread,
                                "client_cpu_us_per_request": cpu, "verdict": judged, "rounds": run.to_dict()})
                    rows.append([setup, model, args.concurrency, _num(_median(pa)), _num(_median(lg)), fmt_ratio(ratio, 3),
                                 _spread(pa_spread), _spread(lg_spread), f"{_num(cpu['perf_analyzer'])} / {_num(cpu['loadgen'])}",
                                 run.kept_text(), judged])
                    lines.append((setup, model, ratio, judged))
        finally:
            os.sched_setaffinity(0, all_cpus)

    table = markdown_table(["setup", "model", "concurrency", "perf_analyzer infer/s", "loadgen infer/s",
                            "loadgen ÷ perf_analyzer, median [min–max], n", "perf_analyzer spread (max/min of its rounds)",
                            "loadgen spread", "client CPU µs/request (perf_analyzer / loadgen)", "rounds kept",
                            f"within {100 * args.goal:g}%"], rows)
    text = (f"{machine()}; gRPC, batch 1, real digits samples; {args.rounds} ABBA rounds (perf_analyzer, loadgen | "
            f"loadgen, perf_analyzer | ...), {args.window:g} s windows, at most {args.max_windows} per measurement, "
            f"both sides; {today()}\n\n{table}\n\n"
            "Rounds: a round in which either side never met the stability rule (last 3 windows, max/min <= 1.1 for "
            "throughput and latency) is excluded for both sides; the kept count is in the table. Infer/s are medians "
            "of the kept rounds. A verdict needs perf_analyzer's own spread between rounds within the goal. Client "
            "CPU per request: CPU seconds ÷ (wall seconds × measured requests/s), the same formula for both clients.")
    headlines = []
    for setup in dict.fromkeys(s for s, *_ in lines):
        mine = [(m, r, v) for s, m, r, v in lines if s == setup]
        headlines.append(headline(
            f"own load generator ÷ perf_analyzer, concurrency {args.concurrency}, {setup} cores",
            "; ".join(f"{m} {fmt_ratio(r, 2)}" for m, r, _ in mine), f"within {100 * args.goal:g} %",
            "; ".join(f"{m}: {v}" for m, _, v in mine)))
    publish(__file__, text, raw, args, argv, "loadgen_vs_pa", "Own load generator vs perf_analyzer", headlines)
    return 0


def _cpu(side: str) -> float:
    """CPU seconds so far of the side's client: this process, or the perf_analyzer children that ended."""
    if side == "loadgen":
        return time.process_time()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _median(values) -> float:
    values = [v for v in values if np.isfinite(v)]
    return float(np.median(values)) if values else float("nan")


def _num(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:,.0f}"


def _spread(value: float) -> str:
    return "-" if not np.isfinite(value) else f"{value:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
