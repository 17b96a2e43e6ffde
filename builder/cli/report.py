"""Render a benchmark JSON (from `tritonfleet bench`) as markdown, HTML and PNG plots.

Writes report.md, a self-contained report.html, throughput and latency against concurrency,
and the accuracy-vs-throughput Pareto chart across members, precisions and pipelines.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.cli.console import console


def register(sub) -> None:
    parser = sub.add_parser("report", help=__doc__.splitlines()[0], description=__doc__)
    parser.add_argument("results", type=Path, nargs="?", default=Path("reports") / "bench.json",
                        help="benchmark JSON (default: reports/bench.json)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: beside the JSON)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from builder.errors import SpecError
    from clients.bench import BenchReport
    from clients.report import front_models, render

    if not args.results.is_file():
        raise SpecError(f"benchmark results not found: {args.results}; run 'tritonfleet bench' first")
    try:
        report = BenchReport.load(args.results)
    except (ValueError, KeyError, TypeError) as exc:
        raise SpecError(f"{args.results} is not a tritonfleet benchmark JSON ({exc})") from None
    path = render(report, args.out or args.results.parent)
    front = ", ".join(m.model for m in front_models(report)) or "-"
    console().print(f"report: {path} (and report.html beside it)\nPareto front: {front}")
    return 0
