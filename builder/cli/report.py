"""Render a benchmark JSON (from `tritonfleet bench`) as markdown, HTML and PNG plots.

Writes report.md, a self-contained report.html, throughput and latency against concurrency,
and the accuracy-vs-throughput Pareto chart across members, precisions and pipelines.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tritonfleet.builder.cli.args import json_file, subcommand
from tritonfleet.builder.cli.console import console


def register(sub) -> None:
    parser = subcommand(sub, __doc__, "report")
    parser.add_argument("results", type=json_file, nargs="?", default="reports/bench.json",
                        help="benchmark JSON (default: reports/bench.json)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: beside the JSON)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tritonfleet.clients.errors import UsageError
    from tritonfleet.clients.evaluation.bench import BenchReport
    from tritonfleet.clients.evaluation.report import front_models, render

    try:
        report = BenchReport.load(args.results)
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"{args.results} is not a tritonfleet benchmark JSON ({exc}); make one with "
                         "'tritonfleet bench'") from None
    path = render(report, args.out or args.results.parent)
    front = ", ".join(m.model for m in front_models(report)) or "-"
    console().print(f"report: {path} (and report.html beside it)\nPareto front: {front}")
    if report.unstable:
        console().print(f"[yellow]unstable measurements[/] (flagged in the report): {', '.join(report.unstable)}")
    return 0
