"""Distil the built ensemble of a spec into one student model, served beside it.

The teacher is the ensemble as the repository serves it (its member files and fusion step, run
in-process); the student (the spec's distillation: block) trains on data.train against the
teacher's probabilities at a temperature mixed with the labels, then is exported, checked
against PyTorch, built with its precision variants and committed as a model of kind student.
A student whose validation top-1 is below the worst member's is reported and not added (exit
code 1) unless --force. Build the pipeline first: tritonfleet build SPEC.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tritonfleet.builder.cli.args import add_progress_arg, positive_int, subcommand
from tritonfleet.builder.cli.console import console, fmt

NOT_LEARNT_EXIT = 1


def register(sub) -> None:
    parser = subcommand(sub, __doc__, "distill")
    parser.add_argument("spec", type=Path, help="pipeline spec YAML with a distillation: block")
    parser.add_argument("--repository", type=Path, default=None,
                        help="repository holding the built ensemble (default: the spec's output_dir)")
    parser.add_argument("--epochs", type=positive_int, default=None,
                        help="training epochs (default: the spec's distillation.epochs)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where the student's checkpoint goes (default: .tritonfleet/distill beside the repository)")
    parser.add_argument("--force", action="store_true",
                        help="add the student even when it did not reach the worst member's validation top-1")
    add_progress_arg(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from tritonfleet.builder.cli.build import MISSING_VARIANT_EXIT, print_build
    from tritonfleet.builder.lifecycle.distill import distill
    from tritonfleet.builder.spec import load_spec

    spec = load_spec(args.spec)
    result = distill(spec, repository=args.repository, epochs=args.epochs, workdir=args.workdir, force=args.force,
                     spec_path=args.spec, progress=args.progress)
    out = console()
    members = ", ".join(f"{m} {acc:.4f}" for m, acc in result.members_val.items())
    out.print(f"teacher {result.teacher} (served files, in-process): val top-1 {result.teacher_val:.4f}, "
              f"test {fmt(result.teacher_test)}; members val top-1: {members}")
    last = result.history[-1]
    out.print(f"student {result.student}: val top-1 {result.student_val:.4f}, test {fmt(result.student_test)} "
              f"after {last.epoch} epochs (loss {last.loss:.4f}); weights: {escape(str(result.checkpoint))}")
    worst, acc = result.worst_member
    if not result.learnt:
        told = (f"student {result.student} did not learn: validation top-1 {result.student_val:.4f} is below the worst "
                f"member's ({worst} {acc:.4f})")
        if result.refused:
            console().print(f"[bold red]error:[/] {escape(told)}; not added to {escape(str(result.repository))} (the "
                            "repository is unchanged). Train longer (--epochs), change distillation.learning_rate or "
                            "the student, or add it anyway with --force", soft_wrap=True)
            return NOT_LEARNT_EXIT
        out.print(f"[yellow]warning:[/] {escape(told)}; added anyway (--force)", soft_wrap=True)
    print_build(result.build)
    missing = result.build.missing_required
    if missing:
        out.print(f"[bold red]error:[/] {len(missing)} requested student variant(s) not built (exit code "
                  f"{MISSING_VARIANT_EXIT}); the repository holds the others")
        return MISSING_VARIANT_EXIT
    return 0
