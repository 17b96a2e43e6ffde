"""Benchmark served models: a concurrency sweep per model, joined with accuracy.

Starts the local tritonserver on REPOSITORY (or uses a running server with --url), measures
each model's top-1 accuracy on a labelled split through the server and its throughput and
latency at each concurrency (tritonfleet's load generator or perf_analyzer), and writes a
JSON file that `tritonfleet report` renders.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.cli.args import add_progress_arg, add_server_args, server_kwargs
from builder.cli.console import console, fmt


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"values must be >= 1, got '{text}'")
    return values


def add_sweep_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("sweep")
    group.add_argument("--models", default=None, help="comma-separated models (default: every model in the manifest)")
    group.add_argument("--concurrency", type=_ints, default=[1, 4, 8], help="sweep, e.g. 1,4,8 (default)")
    group.add_argument("--batch-size", type=int, default=1, help="samples per request (default 1)")
    group.add_argument("--window", type=float, default=1.0, help="seconds per measurement window (default 1)")
    group.add_argument("--engine", choices=("loadgen", "perf_analyzer"), default="loadgen",
                       help="who sends the load (default: tritonfleet's load generator)")
    group.add_argument("--spec", type=Path, default=None,
                       help="take the labelled test split from this spec (default: the repository's manifest)")


def register(sub) -> None:
    parser = sub.add_parser("bench", help=__doc__.splitlines()[0], description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
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
    from builder.errors import SpecError
    from clients.bench import accepts, describe_models, labelled_split, sweep
    from clients.server import TritonServer

    if not (repository / "manifest.json").is_file():
        raise SpecError(f"{repository} has no manifest.json; build it with 'tritonfleet build SPEC' first")
    models = describe_models(repository)
    wanted = [m.strip() for m in args.models.split(",")] if args.models else only
    if wanted:
        unknown = sorted(set(wanted) - {m.model for m in models})
        if unknown:
            raise SpecError(f"--models: {', '.join(unknown)} not in {repository} "
                            f"(models: {', '.join(m.model for m in models)})")
        models = [m for m in models if m.model in wanted]
    data = labelled_split(repository, args.spec)
    inputs, labels, dataset = data if data else (None, None, "not measured (no labelled test split)")
    if inputs is not None:
        skipped = [m.model for m in models if not accepts(repository, m.model, inputs)]
        if skipped:
            console().print(f"not measured (their inputs differ from the labelled data): {', '.join(skipped)}")
        models = [m for m in models if m.model not in skipped]
    meta = {"repository": str(repository.resolve()), "dataset": dataset}

    def go(target: str):
        return sweep(target, models, inputs, labels, args.concurrency, args.batch_size, args.window, args.engine,
                     progress=args.progress, meta=meta)

    if url:
        return go(url)
    with TritonServer(repository, **server_kwargs(args)) as server:
        return go(server.url("grpc"))


def run(args: argparse.Namespace) -> int:
    report = run_bench(args, args.repository, args.url)
    path = report.save(args.out)
    print_bench(report)
    console().print(f"results: {path}  (render with: tritonfleet report {path})")
    return 0


def print_bench(report) -> None:
    from rich.table import Table

    table = Table(title=f"{report.meta['engine']}: batch {report.meta['batch_size']}, "
                        f"concurrency {report.meta['concurrency']}")
    for col in ("model", "kind", "prec", "top-1", "peak infer/s", "at", "p50 ms", "p99 ms", "errors"):
        table.add_column(col, justify="left" if col in ("model", "kind", "prec") else "right", no_wrap=col == "model")
    for m in report.models:
        peak = m.peak
        table.add_row(m.model, m.kind, m.precision or "-", fmt(m.accuracy), fmt(peak.infer_per_s if peak else None, ",.0f"),
                      str(peak.concurrency) if peak else "-", fmt(peak.latency_ms.get("p50") if peak else None, ".2f"),
                      fmt(peak.latency_ms.get("p99") if peak else None, ".2f"), str(sum(r.errors for r in m.runs)))
    console().print(table)
