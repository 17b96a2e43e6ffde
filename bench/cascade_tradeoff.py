"""Cascade / early exit on digits: escalation rate, accuracy and speed per threshold.

    python bench/cascade_tradeoff.py [--record]

The ``digits_cascade`` pipeline (small CNN first, large CNN for samples whose top
probability is below the threshold) is served once; each threshold is passed per request
(the ``threshold`` request parameter), so one server measures the whole curve side by side
with the small and the large model alone.
"""

from __future__ import annotations

import numpy as np

from common import ROOT, SPEC_DIR, bench_parser, machine, markdown_table, publish, today

THRESHOLDS = (0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)))
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--window", type=float, default=1.0)
    args = parser.parse_args(argv)

    import tritonclient.grpc as grpcclient

    from tritonfleet.builder.spec import load_spec
    from tritonfleet.builder.spec.splits import load_split
    from tritonfleet.clients.evaluation.accuracy import evaluate_accuracy
    from tritonfleet.clients.loadgen import LoadConfig, run_load
    from tritonfleet.clients.server import TritonServer
    from tritonfleet.examples.workdir import build_examples

    results = build_examples(ROOT, ["digits_cascade"], output_dir=args.output, progress=False)
    test = load_split(load_spec(SPEC_DIR / "digits_cascade.yaml"), "test")
    x, y = test.inputs[0], test.labels
    rows = []
    with TritonServer(results["digits_cascade"].repository) as server:
        url = server.url("grpc")
        load = dict(concurrency=args.concurrency, batch_size=args.batch_size, warmup_s=0.5, window_s=args.window,
                    max_windows=5)
        with server.client("grpc") as client:
            for model in ("cnn_small_a", "cnn_large"):
                acc = evaluate_accuracy(client, model, x, y).accuracy
                res = run_load(url, LoadConfig(model, **load), [x])
                rows.append({"setting": f"{model} alone", "escalated": None, "accuracy": acc, "load": res})
        raw = grpcclient.InferenceServerClient(url)
        for t in (float(v) for v in args.thresholds.split(",")):
            stages, correct = [], 0
            for s in range(0, len(x), 60):
                tensor = grpcclient.InferInput("image", list(x[s:s + 60].shape), "FP32")
                tensor.set_data_from_numpy(np.ascontiguousarray(x[s:s + 60]))
                out = raw.infer("digits_cascade", [tensor], parameters={"threshold": t})
                stages.append(out.as_numpy("stage")[:, 0])
                correct += int((out.as_numpy("class_index")[:, 0] == y[s:s + 60]).sum())
            res = run_load(url, LoadConfig("digits_cascade", parameters={"threshold": t}, **load), [x])
            rows.append({"setting": f"cascade, threshold {t:g}", "escalated": float(np.mean(np.concatenate(stages))),
                         "accuracy": correct / len(y), "load": res})

    table = markdown_table(
        ["setting", "escalated to the large CNN", "test top-1", f"infer/s (batch {args.batch_size})", "p50 ms",
         "p99 ms"],
        [[r["setting"], "-" if r["escalated"] is None else f"{100 * r['escalated']:.1f}%", f"{r['accuracy']:.4f}",
          f"{r['load'].infer_per_s:,.0f}", f"{r['load'].latency_ms['p50']:.2f}", f"{r['load'].latency_ms['p99']:.2f}"]
         for r in rows],
    )
    text = (f"{machine()}; local target; concurrency {args.concurrency}; digits test split ({len(y)} samples); "
            f"{today()}\n\n{table}")
    publish(__file__, text, [{**r, "load": r["load"].to_dict()} for r in rows], args, argv, 'cascade',
            'Cascade trade-off (bench/cascade_tradeoff.py)')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
