"""Search a model's serving settings on the real server and commit the best as a new version.

For a member (or any single model, a compiled pipeline included): instance count,
max_batch_size, dynamic-batching delay and preferred sizes, runner threads. For an ensemble:
the same knobs of its step models (members and fusion step), moved jointly first, measured on
the ensemble end to end. Each candidate is loaded on the server through explicit model control
(a config override, no file written) and measured with the load generator at a fixed
concurrency and batch size; perf_analyzer's stability rule applies and unstable candidates are
never chosen. A quick search (a hill climb from the current settings) measures at most
--budget candidates.

The winner must beat the default by more than --min-gain within the p99 budget (default: the
default's own p99). It is committed atomically as a new version (same files, tuned
config.pbtxt, version_policy pinned); the default version is kept, and 'tritonfleet rollback
REPO MODEL' serves it again with its settings. The table, JSON and a plot of every candidate go
to --output.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tritonfleet.builder.cli.args import (
    add_progress_arg,
    existing_dir,
    non_negative_float,
    positive_float,
    positive_int,
    subcommand,
)
from tritonfleet.builder.cli.console import console


def register(sub) -> None:
    parser = subcommand(sub, __doc__, "tune")
    parser.add_argument("repository", type=existing_dir)
    parser.add_argument("model", help="a model of the repository: a member, an ensemble or a compiled pipeline")
    goal = parser.add_argument_group("goal")
    goal.add_argument("--objective", choices=("throughput", "latency"), default="throughput",
                      help="maximise throughput (default) or minimise p99 latency")
    goal.add_argument("--latency-budget-ms", type=positive_float, default=None, metavar="MS",
                      help="p99 latency a candidate may not exceed (default: the default config's measured p99)")
    goal.add_argument("--min-gain", type=non_negative_float, default=5.0, metavar="PCT",
                      help="a candidate must beat the best so far by more than this (percent; default 5): ties keep "
                           "the default")
    search = parser.add_argument_group("search")
    search.add_argument("--budget", type=positive_int, default=8, help="candidates measured, the default included "
                                                                       "(default 8)")
    search.add_argument("--max-instances", type=positive_int, default=4, help="largest instance count tried (default 4)")
    load = parser.add_argument_group("measurement (the load generator)")
    load.add_argument("--concurrency", type=positive_int, default=8, help="requests in flight (default 8)")
    load.add_argument("--batch-size", type=positive_int, default=1, help="samples per request (default 1)")
    load.add_argument("--window", type=positive_float, default=2.0, metavar="SECONDS",
                      help="measurement window (default 2 s)")
    load.add_argument("--warmup", type=non_negative_float, default=1.0, metavar="SECONDS",
                      help="load before the first window (default 1 s)")
    load.add_argument("--max-windows", type=positive_int, default=10,
                      help="windows before giving up on stability (default 10; at least 3)")
    load.add_argument("--stability-percentage", type=positive_float, default=10.0, metavar="PCT",
                      help="the last 3 windows within this (default 10, perf_analyzer's)")
    parser.add_argument("--url", default=None,
                        help="gRPC address of a running server in explicit model-control mode serving REPOSITORY "
                             "(default: start the bundled tritonserver on it)")
    parser.add_argument("--server-log", type=Path, default=None, help="write the local server's log here")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for tune.md, tune.json and tune.png (default: reports/tune-MODEL)")
    parser.add_argument("--dry-run", action="store_true", help="measure and report, commit nothing")
    add_progress_arg(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.markup import escape
    from rich.table import Table

    from tritonfleet.builder.lifecycle.tune import TuneOptions, tune
    from tritonfleet.builder.lifecycle.tune.report import rows
    from tritonfleet.clients.errors import UsageError

    if args.max_windows < 3:
        raise UsageError(f"--max-windows must be >= 3 (the stability rule compares the last 3 windows), "
                         f"got {args.max_windows}")
    options = TuneOptions(
        objective=args.objective, latency_budget_ms=args.latency_budget_ms, budget=args.budget,
        concurrency=args.concurrency, batch_size=args.batch_size, warmup_s=args.warmup, window_s=args.window,
        max_windows=args.max_windows, stability_pct=args.stability_percentage, min_gain=args.min_gain / 100,
        max_instances=args.max_instances, dry_run=args.dry_run, url=args.url, progress=args.progress,
        server_log=args.server_log,
    )
    output = args.output or Path("reports") / f"tune-{args.model}"
    result = tune(args.repository, args.model, options, output=output)

    out = console()
    table = Table(title=f"tune {result.target} ({', '.join(result.models)})")
    data = rows(result)
    for column in data[0]:
        table.add_column(column, justify="left" if column in ("candidate", "verdict") else "right")
    for row in data:
        table.add_row(*(escape(v) for v in row.values()))
    out.print(table)
    goal = result.search.goal
    budget = f"{goal.latency_budget_ms:.2f} ms" if goal.latency_budget_ms is not None else "none"
    out.print(f"objective {goal.objective}, p99 budget {budget}; {result.search.stopped}", highlight=False)
    for line in result.search.skipped:
        out.print(f"  not searched: {escape(line)}", highlight=False)
    for note in result.notes:
        out.print(f"[yellow]note[/] {escape(note)}", highlight=False)
    out.print(escape(result.decision), highlight=False, soft_wrap=True)
    for c in result.committed:
        out.print(f"committed {c.model}: version {c.version} (tuned) served, version {c.previous} kept", highlight=False)
    if result.committed:
        out.print(f"roll back with: tritonfleet rollback {escape(str(args.repository))} {result.target}", highlight=False)
    out.print(f"report: {output / 'tune.md'}, {output / 'tune.json'}, {output / 'tune.png'}", highlight=False)
    return 0
