"""Run the whole digits example: train, build, serve, measure, report.

Trains the example CNNs on scikit-learn's digits (cached after the first run), builds
model_repository/ from ensemble_configs/digits.yaml, starts the local tritonserver,
measures each member, the baseline and the ensemble through it (accuracy on the test
split, throughput and latency under concurrent load), prints the table and stops the server.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.cli.args import add_progress_arg, add_server_args, server_kwargs
from builder.cli.console import console, fmt

ROOT = Path(__file__).resolve().parents[2]


def register(sub) -> None:
    parser = sub.add_parser("demo", help=__doc__.splitlines()[0], description=__doc__)
    parser.add_argument("--spec", type=Path, default=ROOT / "ensemble_configs" / "digits.yaml",
                        help="digits pipeline spec (default: ensemble_configs/digits.yaml)")
    parser.add_argument("--output", type=Path, default=None, help="repository folder (default: the spec's output_dir)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per model (default 8)")
    parser.add_argument("--batch-size", type=int, default=1, help="samples per request (default 1)")
    parser.add_argument("--window", type=float, default=1.0, help="seconds per measurement window (default 1)")
    add_progress_arg(parser)
    add_server_args(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from builder.build import build
    from builder.cli.build import print_build
    from builder.data import load_split
    from builder.errors import SpecError
    from builder.specs import load_spec
    from clients.loadgen import LoadConfig
    from clients.measure import measure_models
    from clients.server import TritonServer
    from examples.digits.train import DEFAULT_ARTIFACTS, ensure_trained

    out = console()
    if not args.spec.is_file():
        raise SpecError(f"demo spec not found: {args.spec}; run the demo from a clone of the repository "
                        "or pass --spec")
    out.rule("[bold]1. train the example models")
    for name, meta in ensure_trained(DEFAULT_ARTIFACTS, progress=args.progress).items():
        out.print(f"  {name:12s} PyTorch test accuracy {meta['test_accuracy']:.4f}")

    out.rule("[bold]2. build the model repository")
    spec = load_spec(args.spec)
    result = build(spec, output_dir=args.output, spec_path=args.spec, progress=args.progress)
    print_build(result)

    out.rule("[bold]3. serve and measure")
    test = load_split(spec, "test")
    models = [(p.config.name, p.kind) for p in result.models if p.kind != "fusion"]
    load = LoadConfig(model="", concurrency=args.concurrency, batch_size=args.batch_size,
                      warmup_s=0.5, window_s=args.window, max_windows=6)
    with TritonServer(result.repository, **server_kwargs(args)) as server:
        out.print(f"tritonserver ready (pid {server.pid}), gRPC {server.url('grpc')}, log {server.log_path}")
        with out.status("measuring") as status:
            rows = measure_models(server.url("grpc"), models, test.inputs, test.labels, load,
                                  on_model=lambda n: status.update(f"measuring {n}"))
    print_measurements(rows, result, load)
    return 0


def print_measurements(rows, result, load) -> None:
    from rich.table import Table

    from builder.variants import drop_points

    plans = {p.config.name: p for p in result.models}
    served_fp32 = {plans[r.model].member: r.accuracy for r in rows
                   if plans[r.model].precision == "fp32" and plans[r.model].format == "onnx"}
    table = Table(title=f"through tritonserver: concurrency {load.concurrency}, batch {load.batch_size}")
    for col in ("model", "kind", "prec", "accuracy", "drop pt", "KB", "infer/s", "p50 ms", "p99 ms", "errors"):
        table.add_column(col, justify="left" if col in ("model", "kind", "prec") else "right", no_wrap=col == "model")
    for r in rows:
        plan = plans[r.model]
        lat = r.load.latency_ms if r.load else {}
        stats = {s.precision: s for s in result.variants.get(plan.member or "", [])}
        size = stats[plan.precision].size_bytes / 1024 if plan.precision in stats else None
        table.add_row(
            r.model, plan.kind, plan.precision or "-", fmt(r.accuracy),
            fmt(drop_points(served_fp32.get(plan.member), r.accuracy) if plan.member else None, "+.2f"),
            fmt(size, ",.0f"), fmt(r.load.infer_per_s if r.load else None, ",.0f"),
            fmt(lat.get("p50"), ".2f"), fmt(lat.get("p99"), ".2f"), str(r.load.errors) if r.load else "-",
        )
    console().print(table)
    console().print("accuracy: top-1 on the test split through the server; drop: points vs the same model's fp32")
