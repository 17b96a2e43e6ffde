"""Check a model repository against its manifest.json.

Re-hashes every recorded file, flags unrecorded files and folders, parses every
config.pbtxt through Triton's schema, re-checks ensemble graphs, flags absolute paths or
the host's name leaked into the files, and finds commits a crash interrupted (--repair
restores the repository to its state before that commit). Exit code 1 on any problem.
"""

from __future__ import annotations

import argparse

from tritonfleet.builder.cli.args import existing_dir, subcommand
from tritonfleet.builder.cli.console import console


def register(sub) -> None:
    parser = subcommand(sub, __doc__, "verify")
    parser.add_argument("repository", type=existing_dir, nargs="?", default="model_repository")
    parser.add_argument("--repair", action="store_true", help="undo (or finish) an interrupted commit first")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tritonfleet.builder.repository.verify import verify

    report = verify(args.repository, repair=args.repair)
    out = console()
    if report.repaired:
        out.print(f"interrupted commit: {report.repaired}")
    for problem in report.problems:
        out.print(f"[red]problem[/] {problem}")
    status = "[green]ok[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]"
    out.print(f"{report.repository}: {report.models} models, {report.files} files checked: {status}")
    return 0 if report.ok else 1
