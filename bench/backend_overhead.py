"""A member served by the local target's Python-backend onnxruntime runner vs the same
model in an in-process onnxruntime session, same batch and thread count, side by side.

    python bench/backend_overhead.py [--record]

In-process: one onnxruntime session (intra-op threads = the serving setting, 1) run in a
loop on real digits batches. Served: the same model.onnx through tritonserver's Python
backend, loaded with enough concurrent requests (``--concurrency``) that its one instance
is never idle. Rounds alternate the two; the ratio is the median of per-round ratios.
Goal: >= 0.85. Reported for several batch sizes, because the per-request cost of serving
(gRPC, Triton, the Python stub's shared-memory round trip) is fixed while compute grows
with the batch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common import ROOT, SPEC_DIR, bench_parser, machine, markdown_table, publish, today


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, repository="a temporary folder")
    parser.add_argument("--models", default="cnn_small_a,cnn_large")
    parser.add_argument("--batch-sizes", default="1,16,64,256,512")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--window", type=float, default=2.0)
    args = parser.parse_args(argv)

    import tempfile

    from tritonfleet.builder.build import build
    from tritonfleet.builder.spec import load_spec, with_overrides
    from tritonfleet.builder.spec.splits import load_split
    from tritonfleet.builder.stages.variants import compare_throughput
    from tritonfleet.clients.loadgen import LoadConfig, run_load
    from tritonfleet.clients.server import TritonServer
    from tritonfleet.examples.digits.train import ensure_trained
    from tritonfleet.examples.workdir import artifacts

    ensure_trained(artifacts(ROOT), progress=False)
    batches = [int(v) for v in args.batch_sizes.split(",")]
    # the digits spec, fp32 only, with a max batch large enough for the sweep
    spec = with_overrides(load_spec(SPEC_DIR / "digits.yaml"), {
        "serving": {"max_batch_size": max(64, *batches)}, "precision": {"variants": ["fp32"]}})
    out = args.output or Path(tempfile.mkdtemp(prefix="tritonfleet-overhead-")) / "model_repository"
    repo = build(spec, output_dir=out, progress=False).repository
    x = load_split(spec, "test").inputs[0]
    threads = max(1, spec.serving.onnxruntime_threads)
    rows, raw = [], []
    with TritonServer(repo) as server:
        url = server.url("grpc")
        for model in args.models.split(","):
            onnx = repo / model / "1" / "model.onnx"
            for b in batches:
                local, served = [], []
                for _ in range(args.rounds):
                    local.append(compare_throughput({"m": onnx}, {"image": x}, b, threads, rounds=1,
                                                    seconds=args.window)["m"])
                    served.append(run_load(url, LoadConfig(model, concurrency=args.concurrency, batch_size=b,
                                                           warmup_s=1.0, window_s=args.window, max_windows=4),
                                           [x]).infer_per_s)
                ratio = float(np.median(np.array(served) / np.array(local)))
                raw.append({"model": model, "batch": b, "in_process": local, "served": served, "ratio": ratio})
                rows.append([model, b, f"{np.median(local):,.0f}", f"{np.median(served):,.0f}", f"{ratio:.2f}",
                             "yes" if ratio >= 0.85 else "no"])
    table = markdown_table(["model", "batch", "in-process onnxruntime samples/s", "served (Python backend) samples/s",
                            "ratio (median of rounds)", "goal >= 0.85"], rows)
    text = (f"{machine()}; onnxruntime CPU, {threads} intra-op thread(s) on both sides, one model instance; served at "
            f"concurrency {args.concurrency} over gRPC; {args.rounds} alternating rounds of {args.window:g}s; "
            f"{today()}\n\n{table}")
    publish(__file__, text, raw, args, argv, 'backend_overhead',
            'Python-backend member vs in-process onnxruntime')
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
