"""Own load generator vs perf_analyzer: throughput at the same concurrency, side by side.

    python bench/loadgen_vs_perf_analyzer.py [--record]

Both send the same real digits samples (batch 1) over gRPC to the same server, in rounds
that alternate perf_analyzer, the load generator and perf_analyzer again, so drift hits all
alike. Reported per model and setup:

* the median of per-round ratios loadgen / perf_analyzer (goal: 0.95-1.05);
* perf_analyzer / perf_analyzer from the same rounds: the noise floor of the comparison;
* the load generator's client CPU per request.

Two setups: ``shared`` (server and clients on every CPU: each client's CPU is taken from
the server) and ``pinned`` (server on CPU 0, clients on CPU 1: only a client that saturates
its own CPU lowers the number).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import ROOT, SPEC_DIR, bench_parser, machine, markdown_table, publish, today


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--models", default="cnn_small_a,digits")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--setups", default="shared,pinned")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=3.0, help="seconds per measurement window")
    args = parser.parse_args(argv)

    from tritonfleet.builder.spec import load_spec
    from tritonfleet.builder.spec.splits import load_split
    from tritonfleet.clients.errors import ServerError
    from tritonfleet.clients.loadgen import LoadConfig, run_load
    from tritonfleet.clients.perf import PerfAnalyzerConfig, run_perf_analyzer, write_input_data
    from tritonfleet.clients.server import TritonServer
    from tritonfleet.examples.workdir import build_examples

    results = build_examples(ROOT, ["digits"], output_dir=args.output, progress=False)
    x = load_split(load_spec(SPEC_DIR / "digits.yaml"), "test").inputs[0]
    all_cpus = os.sched_getaffinity(0)
    rows, raw = [], []
    for setup in args.setups.split(","):
        pinned = setup == "pinned"
        if pinned and len(all_cpus) < 2:
            print("skipping the pinned setup: it needs 2 CPUs")
            continue
        server_cpus = {min(all_cpus)} if pinned else None
        try:
            if pinned:
                os.sched_setaffinity(0, all_cpus - server_cpus)
            with TritonServer(results["digits"].repository, cpus=server_cpus) as server, \
                    tempfile.TemporaryDirectory() as tmp:
                url = server.url("grpc")
                data = write_input_data(Path(tmp) / "input.json", {"image": x})
                for model in args.models.split(","):
                    config = PerfAnalyzerConfig(model, url, concurrency=(args.concurrency,), input_data=data,
                                                measurement_interval_ms=int(args.window * 1000), max_trials=10)
                    pa_a, pa_b, own, own_cpu, own_reqs, dropped = [], [], [], 0.0, 0, 0
                    for _ in range(args.rounds):
                        try:
                            before = run_perf_analyzer(config)[0].infer_per_s
                            c0 = time.process_time()
                            res = run_load(url, LoadConfig(model, concurrency=args.concurrency, warmup_s=1.0,
                                                           window_s=args.window, max_windows=5), [x])
                            cpu = time.process_time() - c0
                            after = run_perf_analyzer(config)[0].infer_per_s
                        except ServerError as exc:  # perf_analyzer found no stable window: drop the round
                            print(f"{setup}/{model}: round dropped: {str(exc).splitlines()[-1]}", file=sys.stderr)
                            dropped += 1
                            continue
                        pa_a.append(before)
                        pa_b.append(after)
                        own.append(res.infer_per_s)
                        own_cpu += cpu
                        own_reqs += res.completed
                    if not own:
                        rows.append([setup, model, args.concurrency, "unstable", "-", "-", "-", "-", "-"])
                        continue
                    pa_a, pa_b, own = map(np.asarray, (pa_a, pa_b, own))
                    ratio = float(np.median(own / ((pa_a + pa_b) / 2)))
                    noise = float(np.median(pa_b / pa_a))
                    raw.append({"setup": setup, "model": model, "perf_analyzer": [*pa_a, *pa_b], "loadgen": own.tolist(),
                                "ratio": ratio, "pa_vs_pa": noise, "loadgen_cpu_us_per_request": 1e6 * own_cpu / own_reqs})
                    rows.append([setup, model, args.concurrency, f"{np.median([*pa_a, *pa_b]):,.0f}",
                                 f"{np.median(own):,.0f}", f"{ratio:.3f}", f"{noise:.3f}",
                                 f"{1e6 * own_cpu / own_reqs:.0f}", "yes" if abs(ratio - 1) <= 0.05 else "no"])
                    if dropped:
                        rows[-1][1] += f" ({dropped} unstable round(s) dropped)"
        finally:
            os.sched_setaffinity(0, all_cpus)

    table = markdown_table(["setup", "model", "concurrency", "perf_analyzer infer/s", "loadgen infer/s",
                            "loadgen / perf_analyzer", "perf_analyzer / itself (noise)",
                            "loadgen client CPU us/request", "within 5%"], rows)
    text = (f"{machine()}; gRPC, batch 1, real digits samples; median of {args.rounds} rounds "
            f"(perf_analyzer, loadgen, perf_analyzer) with {args.window:g}s windows; {today()}\n\n{table}")
    publish(__file__, text, raw, args, argv, 'loadgen_vs_pa',
            'Own load generator vs perf_analyzer')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
