"""Benchmark served models: a concurrency sweep per model, joined with accuracy.

Starts the local tritonserver on REPOSITORY (or uses a running server with --url), measures
each model's top-1 accuracy through the server on the labelled split the build recorded in
manifest.json, and its throughput and latency at each concurrency (tritonfleet's load
generator or perf_analyzer; windows repeat until perf_analyzer's stability rule holds:
last 3 windows within 10%). Writes a JSON file that `tritonfleet report` renders. A run
that never became stable is flagged; --require-stable makes that exit code 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tritonfleet.builder.cli.args import (
    add_progress_arg,
    add_server_args,
    int_list,
    positive_float,
    positive_int,
    server_kwargs,
    subcommand,
)
from tritonfleet.builder.cli.console import console, fmt


def add_sweep_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sweep")
    group.add_argument("--models", default=None, help="comma-separated models (default: every model in the manifest)")
    group.add_argument("--concurrency", type=int_list, default=[1, 4, 8], help="sweep, e.g. 1,4,8 (default)")
    group.add_argument("--batch-size", type=positive_int, default=1, help="samples per request (default 1)")
    group.add_argument("--window", type=positive_float, default=1.0, help="seconds per measurement window (default 1)")
    group.add_argument("--max-windows", type=positive_int, default=10,
                       help="give up on stability after this many windows (default 10, as perf_analyzer)")
    group.add_argument("--stability-pct", type=positive_float, default=10.0,
                       help="stable when max/min of the last 3 windows <= 1 + this/100, for throughput and latency "
                            "(default 10, as perf_analyzer)")
    group.add_argument("--engine", choices=("loadgen", "perf_analyzer"), default="loadgen",
                       help="who sends the load (default: tritonfleet's load generator)")
    group.add_argument("--split", default="test", help="labelled split recorded by the build (default: test)")
    group.add_argument("--require-stable", action="store_true",
                       help="exit 1 when a measurement never met the stability rule")


def register(sub) -> None:
    parser = subcommand(sub, __doc__, "bench")
    parser.add_argument("repository", type=Path, nargs="?", default=Path("model_repository"),
                        help="model repository (default: ./model_repository)")
    parser.add_argument("--url", default=None, help="gRPC address of a running server (default: start one)")
    parser.add_argument("--out", type=Path, default=Path("reports") / "bench.json", help="result JSON")
    add_sweep_args(parser)
    add_progress_arg(parser)
    add_server_args(parser)
    parser.set_defaults(run=run)


def run_bench(args: argparse.Namespace, repository: Path, url: str | None = None, only: list[str] | None = None):
    """Sweep ``--models`` (or ``only``, or every model) of ``repository``."""
    from tritonfleet.clients.errors import UsageError
    from tritonfleet.clients.evaluation.bench import accepts, describe_models, labelled_split, sweep
    from tritonfleet.clients.manifest import Manifest
    from tritonfleet.clients.server import TritonServer

    manifest = Manifest.read(repository)
    models = describe_models(manifest)
    wanted = [m.strip() for m in args.models.split(",")] if args.models else only
    if wanted:
        unknown = sorted(set(wanted) - {m.model for m in models})
        if unknown:
            raise UsageError(f"--models: {', '.join(unknown)} not in {repository} "
                             f"(models: {', '.join(m.model for m in models)})")
        models = [m for m in models if m.model in wanted]
    data = labelled_split(manifest, args.split)
    inputs, labels, dataset = data if data else (None, None, f"not measured (no labelled {args.split} split recorded)")
    if inputs is not None:
        skipped = [m.model for m in models if not accepts(repository, m.model, inputs)]
        if skipped:
            console().print(f"not measured (their inputs differ from the labelled data): {', '.join(skipped)}")
        models = [m for m in models if m.model not in skipped]
    meta = {"repository": repository.name, "dataset": dataset}

    def go(target: str):
        return sweep(target, models, inputs, labels, args.concurrency, args.batch_size, args.window, args.engine,
                     progress=args.progress, meta=meta, max_windows=args.max_windows,
                     stability_pct=args.stability_pct)

    if url:
        return go(url)
    with TritonServer(repository, **server_kwargs(args)) as server:
        return go(server.url("grpc"))


def run(args: argparse.Namespace) -> int:
    report = run_bench(args, args.repository, args.url)
    path = report.save(args.out)
    print_bench(report)
    console().print(f"results: {path}  (render with: tritonfleet report {path})")
    return 1 if args.require_stable and report.unstable else 0


def print_bench(report) -> None:
    from rich.table import Table

    table = Table(title=f"{report.meta['engine']}: batch {report.meta['batch_size']}, "
                        f"concurrency {report.meta['concurrency']}")
    for col in ("model", "kind", "prec", "top-1", "peak infer/s", "at", "p50 ms", "p99 ms", "errors", "stable"):
        table.add_column(col, justify="left" if col in ("model", "kind", "prec") else "right", no_wrap=col == "model")
    for m in report.models:
        peak = m.peak
        unstable = [r.concurrency for r in m.runs if not r.stable]
        table.add_row(m.model, m.kind, m.precision or "-", fmt(m.accuracy), fmt(peak.infer_per_s if peak else None, ",.0f"),
                      str(peak.concurrency) if peak else "-", fmt(peak.latency_ms.get("p50") if peak else None, ".2f"),
                      fmt(peak.latency_ms.get("p99") if peak else None, ".2f"), str(sum(r.errors for r in m.runs)),
                      "yes" if not unstable else f"[yellow]no at {','.join(map(str, unstable))}[/]")
    console().print(table)
    if report.unstable:
        pct = report.meta.get("stability_pct", 10.0)
        console().print(f"[yellow]unstable[/]: {', '.join(report.unstable)} never met the stability rule "
                        f"(last 3 windows, max/min <= {1 + pct / 100:g}); their numbers are the last 3 windows")
