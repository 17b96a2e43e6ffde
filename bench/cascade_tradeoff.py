"""Cascade / early exit on digits: escalation rate, accuracy and speed per threshold.

    python bench/cascade_tradeoff.py [--record]

The ``digits_cascade`` pipeline (small CNN first, large CNN for samples whose top
probability is below the threshold) is served once; each threshold is passed per request
(the ``threshold`` request parameter), so one server measures the whole curve side by side
with the small and the large model alone. The settings are measured one after another (a
listing, not a ratio); each run's stability flag (perf_analyzer's rule) is shown.

    python bench/cascade_tradeoff.py --smoke          # two thresholds, short windows
"""

from __future__ import annotations

import numpy as np

from common import (
    ROOT,
    add_server_args,
    bench_parser,
    check_server_args,
    labelled,
    machine,
    markdown_table,
    publish,
    serving,
    today,
)

THRESHOLDS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    add_server_args(parser)
    parser.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--window", type=float, default=1.0)
    parser.add_argument("--max-windows", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="thresholds 0.5 and 0.99, 0.2 s windows")
    args = parser.parse_args(argv)
    check_server_args(parser, args)
    if args.smoke:
        args.thresholds, args.window, args.max_windows = "0.5,0.99", 0.2, 4

    import tritonclient.grpc as grpcclient

    from tritonfleet.clients.evaluation.accuracy import predicted_classes
    from tritonfleet.clients.evaluation.replicates import accuracy_interval
    from tritonfleet.clients.infer import TritonClient
    from tritonfleet.clients.loadgen import LoadConfig, run_load

    if args.url:
        repository = args.repository
    else:
        from tritonfleet.examples.workdir import build_examples

        built = build_examples(ROOT, ["digits_cascade"], output_dir=args.output, progress=False)
        repository = built["digits_cascade"].repository
    inputs, y = labelled(repository, pipeline="digits_cascade")
    x = inputs[0]
    rows = []
    with serving(repository, args.url) as url:
        load = dict(concurrency=args.concurrency, batch_size=args.batch_size, warmup_s=0.5, window_s=args.window,
                    max_windows=args.max_windows)
        with TritonClient(url, protocol="grpc") as client:
            for model in ("cnn_small_a", "cnn_large"):
                right = predicted_classes(client.infer_batched(model, [x])) == y
                res = run_load(url, LoadConfig(model, **load), [x])
                rows.append({"setting": f"{model} alone", "escalated": None, "accuracy": accuracy_interval(right),
                             "load": res})
        raw = grpcclient.InferenceServerClient(url)
        try:
            for t in (float(v) for v in args.thresholds.split(",")):
                stages, right = [], []
                for s in range(0, len(x), 60):
                    tensor = grpcclient.InferInput("image", list(x[s:s + 60].shape), "FP32")
                    tensor.set_data_from_numpy(np.ascontiguousarray(x[s:s + 60]))
                    out = raw.infer("digits_cascade", [tensor], parameters={"threshold": t})
                    stages.append(out.as_numpy("stage")[:, 0])
                    right.append(out.as_numpy("class_index")[:, 0] == y[s:s + 60])
                res = run_load(url, LoadConfig("digits_cascade", parameters={"threshold": t}, **load), [x])
                rows.append({"setting": f"cascade, threshold {t:g}",
                             "escalated": float(np.mean(np.concatenate(stages))),
                             "accuracy": accuracy_interval(np.concatenate(right)), "load": res})
        finally:
            raw.close()  # an open connection holds the server's shutdown

    table = markdown_table(
        ["setting", "escalated to the large CNN", "test top-1 % [95% CI]", f"infer/s (batch {args.batch_size})", "p50 ms",
         "p99 ms", "stable"],
        [[r["setting"], "-" if r["escalated"] is None else f"{100 * r['escalated']:.1f}%", r["accuracy"].text(2),
          f"{r['load'].infer_per_s:,.0f}", f"{r['load'].latency_ms['p50']:.2f}", f"{r['load'].latency_ms['p99']:.2f}",
          "yes" if r["load"].stable else "NO"]
         for r in rows],
    )
    text = (f"{machine()}; local target; concurrency {args.concurrency}; digits test split ({len(y)} samples); "
            f"{args.window:g} s windows until stable (at most {args.max_windows}); settings measured one after another "
            f"(a listing: no ratio is claimed); top-1 intervals: 95 % bootstrap over the test samples; "
            f"{today()}\n\n{table}")
    raw_rows = [{**r, "accuracy": r["accuracy"].to_dict(), "load": r["load"].to_dict()} for r in rows]
    publish(__file__, text, raw_rows, args, argv, 'cascade',
            'Cascade trade-off (bench/cascade_tradeoff.py)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
