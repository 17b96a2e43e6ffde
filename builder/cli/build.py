"""Build a Triton model repository from a pipeline spec (ensemble_configs/*.yaml).

Exports every model to ONNX, checks it against PyTorch, writes config.pbtxt files through
Triton's schema and the ensemble, all into a staging folder moved into place at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.cli.args import add_progress_arg
from builder.cli.console import console, fmt


def register(sub) -> None:
    parser = sub.add_parser("build", help=__doc__.splitlines()[0], description=__doc__)
    parser.add_argument("spec", type=Path, help="pipeline spec YAML")
    parser.add_argument("--target", choices=("local", "ngc"), default=None,
                        help="local: Python-backend runners for the bundled server; ngc: native "
                             "onnxruntime configs for the NGC container (default: the spec's)")
    parser.add_argument("--output", type=Path, default=None, help="repository folder (default: the spec's output_dir)")
    add_progress_arg(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from builder.build import build
    from builder.specs import load_spec

    spec = load_spec(args.spec)
    result = build(spec, target=args.target, output_dir=args.output, spec_path=args.spec, progress=args.progress)
    print_build(result)
    return 0


def print_build(result) -> None:
    from rich.table import Table

    table = Table(title=f"{result.pipeline} -> {result.repository} (target {result.target})")
    for col in ("model", "kind", "precision", "max abs err", "top-1 agree", "parity"):
        table.add_column(col)
    for plan in result.models:
        records = result.parity.get(plan.member or "", [])
        rec = next((r for r in records if r.precision == plan.precision), None)
        table.add_row(
            plan.config.name, plan.kind, plan.precision or "-",
            fmt(rec.max_abs_error if rec else None, ".2e"),
            fmt(rec.top1_agreement if rec else None, ".4f"),
            ("[green]pass[/]" if rec.passed else "[red]fail[/]") if rec else "-",
        )
    console().print(table)
    if result.removed:
        console().print(f"removed models no longer in the spec: {', '.join(result.removed)}")
