"""Serve a candidate version of a model only if it is better than the version serving now.

Compares the candidate (default: the newest version above the one serving; 'tritonfleet build
SPEC --candidate' makes one) with the current version through a live server on the pipeline's
data.test: top-1 difference with the exact McNemar p-value and a paired bootstrap interval, and
p99 latency and throughput from short load runs on both versions in alternating rounds. The
policy is the spec's 'promotion:' block (defaults: min_gain_pt 0.0, max_p_value 0.05,
max_latency_regression 0.10), overridden by the options below. When every criterion passes,
version_policy changes in a journaled commit (like a build; 'tritonfleet rollback' undoes it).

Exit codes: 0 promoted, 1 refused, 2 error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tritonfleet.builder.cli.args import (
    add_progress_arg,
    existing_dir,
    non_negative_float,
    points,
    positive_float,
    positive_int,
    probability,
    subcommand,
)
from tritonfleet.builder.cli.console import console, fmt

REFUSED_EXIT = 1


def register(sub) -> None:
    parser = subcommand(sub, __doc__, "promote")
    parser.add_argument("repository", type=existing_dir)
    parser.add_argument("model")
    parser.add_argument("--candidate-version", type=positive_int, default=None, metavar="N",
                        help="version to compare (default: the newest version above the one serving)")
    parser.add_argument("--url", default=None,
                        help="gRPC address of a running server in explicit model control (default: start the bundled "
                             "tritonserver on the repository); the model is reloaded from the repository afterwards")
    parser.add_argument("--metrics-url", default=None, metavar="HOST:PORT",
                        help="metrics endpoint of the serving Triton: live agreement of shadow route pipelines")
    gate = parser.add_argument_group("policy (default: the spec's promotion block)")
    gate.add_argument("--min-gain-pt", type=points, default=None, metavar="PT",
                      help="least top-1 gain in points (>=; with > 0 an equally accurate candidate is refused)")
    gate.add_argument("--max-p-value", type=probability, default=None, metavar="P",
                      help="largest exact McNemar p-value of the gain")
    gate.add_argument("--max-latency-regression", type=non_negative_float, default=None, metavar="R",
                      help="largest candidate p99 / current p99 - 1 (0.10: 10%% slower)")
    gate.add_argument("--max-throughput-drop", type=non_negative_float, default=None, metavar="R",
                      help="largest 1 - candidate infer/s / current infer/s (default: reported only)")
    gate.add_argument("--skip-load", action="store_true", help="no load runs: judge on accuracy alone")
    gate.add_argument("--load-rounds", type=positive_int, default=None, metavar="N",
                      help="alternating load rounds (each runs both versions)")
    gate.add_argument("--load-window", type=positive_float, default=None, metavar="S",
                      help="seconds per measurement window of a load run")
    gate.add_argument("--load-concurrency", type=positive_int, default=None, metavar="N",
                      help="requests in flight during a load run")
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="write the whole report as JSON")
    parser.add_argument("--server-log", type=Path, default=None, help="the bundled server's log (default: a temp file)")
    add_progress_arg(parser)
    parser.set_defaults(run=run)


def overrides(args: argparse.Namespace) -> dict:
    policy = {k: v for k, v in (("min_gain_pt", args.min_gain_pt), ("max_p_value", args.max_p_value),
                                ("max_latency_regression", args.max_latency_regression),
                                ("max_throughput_drop", args.max_throughput_drop)) if v is not None}
    load = {k: v for k, v in (("rounds", args.load_rounds), ("window_s", args.load_window),
                              ("concurrency", args.load_concurrency)) if v is not None}
    return {**policy, "load": load}


def run(args: argparse.Namespace) -> int:
    from tritonfleet.builder.lifecycle.promote import promote

    report = promote(args.repository, args.model, candidate=args.candidate_version, url=args.url,
                     metrics_url=args.metrics_url, overrides=overrides(args), skip_load=args.skip_load,
                     progress=args.progress, server_log=args.server_log)
    print_report(report)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return 0 if report.promoted else REFUSED_EXIT


def print_report(report) -> None:
    from rich.markup import escape
    from rich.table import Table

    out = console()
    v, a = report.versions, report.accuracy
    out.print(f"{report.model}: candidate v{v.candidate} vs current v{v.current} on data.test of "
              f"'{report.pipeline}' ({a.samples} samples), server: {report.server}", soft_wrap=True)
    out.print(f"  top-1 {a.current_accuracy:.4f} -> {a.candidate_accuracy:.4f} ({a.gain_pt:+.2f} pt, "
              f"{a.confidence:.0%} paired bootstrap CI [{a.ci_pt[0]:+.2f}, {a.ci_pt[1]:+.2f}]); only current right: "
              f"{a.only_current_right}, only candidate right: {a.only_candidate_right}; exact McNemar p = "
              f"{a.p_value:.3g}", soft_wrap=True)
    if report.load is not None:
        load = Table(title=f"load: {report.policy.load.rounds} alternating rounds ({' '.join(report.load.order)}), "
                           f"concurrency {report.policy.load.concurrency}, batch {report.policy.load.batch_size}")
        for col in ("version", "rounds", "p50 ms", "p99 ms", "p99 range", "infer/s", "infer/s range", "errors",
                    "stable"):
            load.add_column(col, justify="left" if col == "version" else "right")
        for which, s in (("current", report.load.current), ("candidate", report.load.candidate)):
            version = v.current if which == "current" else v.candidate
            load.add_row(f"{which} v{version}", str(s.rounds), f"{s.p50_ms:.2f}", f"{s.p99_ms:.2f}",
                         f"{s.p99_range_ms[0]:.2f}-{s.p99_range_ms[1]:.2f}", f"{s.infer_per_s:,.0f}",
                         f"{s.infer_per_s_range[0]:,.0f}-{s.infer_per_s_range[1]:,.0f}", str(s.errors),
                         f"{s.stable_rounds}/{s.rounds}")
        out.print(load)
    table = Table(title=f"promotion gate: {report.model} v{v.current} -> v{v.candidate}")
    for col in ("criterion", "value", "threshold", "outcome"):
        table.add_column(col, justify="right" if col == "value" else "left")
    for c in report.verdict.criteria:
        style = {"pass": "[green]pass[/]", "FAIL": "[bold red]FAIL[/]"}.get(c.outcome, escape(c.outcome))
        value = c.value if isinstance(c.value, int) and not isinstance(c.value, bool) else fmt(c.value, ".4g")
        table.add_row(c.name, str(value), escape(c.rule), style)
    out.print(table)
    for s in report.shadow:
        out.print(f"shadow: {escape(s.describe())}", soft_wrap=True)
    if report.promoted:
        out.print(f"[bold green]PROMOTED[/]: {report.model} serves version {v.candidate} (was {v.served}); "
                  f"'tritonfleet rollback {report.repository} {report.model}' serves v{v.current} again",
                  soft_wrap=True)
    else:
        failed = ", ".join(c.name for c in report.verdict.failed) or "no criterion was checked"
        out.print(f"[bold red]REFUSED[/]: {report.model} keeps serving {v.served} (failed: {escape(failed)}); "
                  f"version {v.candidate} stays on disk", soft_wrap=True)
