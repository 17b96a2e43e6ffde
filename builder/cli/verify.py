"""Check a model repository against its manifest.json.

Re-hashes every recorded file, flags unrecorded files and folders, parses every
config.pbtxt through Triton's schema, re-checks ensemble graphs, and finds commits a crash
interrupted (--repair restores the repository to its state before that commit).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.cli.console import console


def register(sub) -> None:
    parser = sub.add_parser("verify", help=__doc__.splitlines()[0], description=__doc__)
    parser.add_argument("repository", type=Path, nargs="?", default=Path("model_repository"))
    parser.add_argument("--repair", action="store_true", help="undo (or finish) an interrupted commit first")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from builder.repository.verify import verify

    report = verify(args.repository, repair=args.repair)
    out = console()
    if report.repaired:
        out.print(f"interrupted commit: {report.repaired}")
    for problem in report.problems:
        out.print(f"[red]problem[/] {problem}")
    status = "[green]ok[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]"
    out.print(f"{report.repository}: {report.models} models, {report.files} files checked: {status}")
    return 0 if report.ok else 1
