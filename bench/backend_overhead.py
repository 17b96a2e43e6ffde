"""A member served by the local target's Python-backend onnxruntime runner vs the same
model in an in-process onnxruntime session: same batch, same thread count, side by side.

    python bench/backend_overhead.py [--record]
    python bench/backend_overhead.py --smoke          # one model, batches 1 and 16, two short rounds

The repository holds the measured digits models (fp32 only) with **dynamic batching off**:
each request executes alone, so the served runner executes exactly the batch that was asked
for (the table shows requests per execution from Triton's statistics API; 1.00 means no
request was grouped with another). In-process: one onnxruntime session with the serving
setting's intra-op threads (1) run in a loop on real digits batches. Served: the same
model.onnx through tritonserver's Python backend at ``--concurrency`` requests in flight over
gRPC, so its one instance is never idle. Both sides are measured in windows until
perf_analyzer's stability rule holds (last 3 windows, max/min <= 1.1) and alternate in ABBA
rounds; the ratio served ÷ in-process is the median of per-round ratios with its min–max.
Goal: >= 0.85. Several batch sizes, because the per-request cost of serving (gRPC, Triton,
the Python stub's shared-memory round trip) is fixed while compute grows with the batch.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import yaml

from common import (
    ROOT,
    SPEC_DIR,
    Sample,
    bench_parser,
    fmt_ratio,
    goal_verdict,
    headline,
    labelled,
    machine,
    markdown_table,
    median_text,
    publish,
    run_abba,
    timed_windows,
    today,
)

GOAL = 0.85
SIDES = ("in_process", "served")


def parse(argv):
    parser = bench_parser(__doc__, repository="a temporary folder")
    parser.add_argument("--models", default="cnn_small_a,cnn_large")
    parser.add_argument("--batch-sizes", default="1,16,64,256,512")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4, help="ABBA rounds; each measures both sides once")
    parser.add_argument("--window", type=float, default=2.0, help="seconds per measurement window (both sides)")
    parser.add_argument("--max-windows", type=int, default=8)
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="trained digits checkpoints and data (default: the clone's, trained if missing)")
    parser.add_argument("--smoke", action="store_true", help="cnn_small_a, batches 1 and 16, 2 rounds of 0.2 s windows")
    args = parser.parse_args(argv)
    if args.smoke:
        args.models, args.batch_sizes, args.rounds, args.window, args.max_windows = "cnn_small_a", "1,16", 2, 0.2, 4
    if args.rounds < 2 or args.concurrency < 1 or args.window <= 0 or args.max_windows < 3:
        parser.error("--rounds >= 2, --concurrency >= 1, --window > 0 and --max-windows >= 3")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    from tritonfleet.builder.build import build
    from tritonfleet.clients.loadgen import LoadConfig, run_load
    from tritonfleet.clients.server import TritonServer

    batches = [int(v) for v in args.batch_sizes.split(",")]
    out = args.output or Path(tempfile.mkdtemp(prefix="tritonfleet-overhead-")) / "model_repository"
    spec = overhead_spec(args.models.split(","), args.artifacts, max(64, *batches), out)
    repo = build(spec, progress=False).repository
    x = labelled(repo, pipeline=spec.name)[0][0]
    threads = max(1, spec.serving.onnxruntime_threads)
    rows, raw, verdicts = [], [], {}
    with TritonServer(repo) as server:
        url = server.url("grpc")
        for model in args.models.split(","):
            session = _session(repo / model / "1" / "model.onnx", threads)
            for b in batches:
                feed = {"image": np.ascontiguousarray(x[np.arange(b) % len(x)])}
                config = LoadConfig(model, concurrency=args.concurrency, batch_size=b, warmup_s=1.0,
                                    window_s=args.window, max_windows=args.max_windows)

                def measure(side, _round, feed=feed, config=config, model=model, session=session, b=b):
                    if side == "in_process":
                        return timed_windows(lambda: session.run(None, feed), b, args.window, args.max_windows)
                    res = run_load(url, config, [x])
                    step = res.server.get(model)
                    return Sample(res.infer_per_s, res.stable, {
                        "requests_per_execution": step.batch_per_execution if step else float("nan"),
                        "spread": [res.throughput_spread, res.latency_spread]})

                run = run_abba(measure, SIDES, args.rounds)
                ratio = run.ratio("served", "in_process")
                grouped = [run.rounds[i]["served"].extra["requests_per_execution"] for i in range(len(run.rounds))]
                judged = goal_verdict(ratio, GOAL)
                verdicts.setdefault(model, []).append((b, ratio, judged))
                raw.append({"model": model, "batch": b, "ratio": ratio, "verdict": judged,
                            "requests_per_execution": grouped, "rounds": run.to_dict()})
                rows.append([model, b, median_text(run.values("in_process")), median_text(run.values("served")),
                             f"{max(grouped):.2f}" if all(np.isfinite(grouped)) else "-", fmt_ratio(ratio),
                             run.kept_text(), judged])
            del session
    table = markdown_table(["model", "batch", "in-process onnxruntime samples/s", "served (Python backend) samples/s",
                            "requests per execution (Triton statistics, max over rounds)",
                            "served ÷ in-process, median [min–max], n", "rounds kept", f"goal >= {GOAL}"], rows)
    text = (f"{machine()}; onnxruntime CPU, {threads} intra-op thread(s) on both sides, one model instance, "
            f"dynamic batching off; served at concurrency {args.concurrency} over gRPC; {args.rounds} ABBA rounds, "
            f"{args.window:g} s windows until stable (at most {args.max_windows}); {today()}\n\n{table}\n\n"
            "Samples/s are medians of the kept rounds; a round in which either side never met the stability rule "
            "(last 3 windows, max/min <= 1.1) is excluded for both. Verdict: met only when every kept round reaches "
            "the goal.")
    headlines = [headline(f"Python-backend ORT member ÷ in-process ORT ({model}, dynamic batching off)",
                          ", ".join(f"batch {b}: {fmt_ratio(r)}" for b, r, _ in found), f">= {GOAL}",
                          _summary(found)) for model, found in verdicts.items()]
    publish(__file__, text, raw, args, argv, "backend_overhead", "Python-backend member vs in-process onnxruntime",
            headlines)
    return 0


def overhead_spec(models: list[str], artifacts_dir: Path | None, max_batch: int, out: Path):
    """The digits models asked for, fp32, dynamic batching off, as members of one small pipeline."""
    from tritonfleet.builder.spec import parse_spec
    from tritonfleet.examples.digits.train import ensure_trained
    from tritonfleet.examples.workdir import artifacts

    if artifacts_dir is None:
        artifacts_dir = artifacts(ROOT)
        ensure_trained(artifacts_dir, progress=False)
    digits = yaml.safe_load((SPEC_DIR / "digits.yaml").read_text())
    known = {m["name"]: m for m in [*digits["members"], *digits.get("baselines", [])]}
    missing = [m for m in models if m not in known]
    if missing:
        raise SystemExit(f"--models: {', '.join(missing)} not in digits.yaml (known: {', '.join(known)})")
    members = []
    for name in models:
        m = dict(known[name], model=dict(known[name]["model"]))
        m["model"]["checkpoint"] = str(Path(artifacts_dir) / Path(m["model"]["checkpoint"]).name)
        members.append(m)
    raw = {"name": "overhead", "target": "local", "output_dir": str(out),
           "serving": {"max_batch_size": max_batch, "instances": 1, "dynamic_batching": {"enabled": False},
                       "onnxruntime_threads": 1},
           "members": members, "fusion": {"type": "mean", "activation": "softmax"},
           "data": {"path": str(Path(artifacts_dir) / "digits.npz"), "test": {"inputs": "x_test", "labels": "y_test"},
                    "validation": {"inputs": "x_val", "labels": "y_val"}},
           "precision": {"variants": ["fp32"]}}
    return parse_spec(raw, base_dir=SPEC_DIR, source="bench/backend_overhead.py")


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _summary(found) -> str:
    met = [str(b) for b, _, v in found if v == "met"]
    if len(met) == len(found):
        return "met at every batch"
    return f"met at batch {', '.join(met)}; missed elsewhere" if met else "missed at every batch"



if __name__ == "__main__":
    raise SystemExit(main())
