"""Build a Triton model repository from a pipeline spec (ensemble_configs/*.yaml).

Exports every model to ONNX and checks it against PyTorch, derives the precision variants
the spec asks for (fp16, calibrated int8, TensorRT engines where TensorRT is installed),
measures what each costs in accuracy and gains in speed, picks what the ensemble serves,
and writes config.pbtxt files through Triton's schema, all into a staging folder moved
into place at the end.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tritonfleet.builder.cli.args import add_progress_arg, non_negative_float, precision_list, subcommand
from tritonfleet.builder.cli.console import console, fmt
from tritonfleet.clients.vocabulary import PRECISIONS

MISSING_VARIANT_EXIT = 3  # built, but a requested (not optional) variant is missing


def register(sub) -> None:
    parser = subcommand(sub, __doc__, "build")
    parser.add_argument("spec", type=Path, help="pipeline spec YAML")
    parser.add_argument("--target", choices=("local", "ngc"), default=None,
                        help="local: Python-backend runners for the bundled server; ngc: native "
                             "onnxruntime/TensorRT configs for the NGC container (default: the spec's)")
    parser.add_argument("--output", type=Path, default=None, help="repository folder (default: the spec's output_dir)")
    parser.add_argument("--precisions", type=precision_list, default=None, metavar="LIST",
                        help="comma-separated variants to build for every model, e.g. fp32,fp16,int8 "
                             "(default: the spec's precision.variants)")
    parser.add_argument("--serve", choices=(*PRECISIONS, "auto"), default=None,
                        help="variant the ensemble calls (default: the spec's precision.serve)")
    parser.add_argument("--accuracy-budget", type=non_negative_float, default=None, metavar="POINTS",
                        help="with --serve auto: top-1 points a variant may lose vs fp32")
    parser.add_argument("--engines", action="store_true",
                        help="also build TensorRT engines (target ngc, needs tensorrt and a GPU)")
    parser.add_argument("--torchscript", action="store_true",
                        help="also build TorchScript members (fp32/fp16; formats.variants: [onnx, torchscript])")
    parser.add_argument("--serve-format", choices=("onnx", "torchscript"), default=None,
                        help="the format the ensemble's member steps call (default: the spec's formats.serve)")
    parser.add_argument("--compile", action="store_true",
                        help="also serve the pipeline as ONE model, <pipeline>_compiled: members and fusion merged into "
                             "one ONNX graph, beside the ensemble (serving.compile: true; not for cascade, route, "
                             "detection)")
    parser.add_argument("--candidate", action="store_true",
                        help="models that change get a new version but keep serving the one served now, "
                             "until 'tritonfleet promote' lets the candidate through its gate")
    add_progress_arg(parser)
    parser.set_defaults(run=run)


def apply_overrides(spec, args: argparse.Namespace):
    from tritonfleet.builder.spec import with_overrides

    changes: dict = {}
    precision = {k: v for k, v in (("variants", args.precisions), ("serve", args.serve),
                                   ("accuracy_budget", args.accuracy_budget)) if v is not None}
    if precision:
        changes["precision"] = precision
    if args.precisions is not None:  # the command line wins over per-member lists
        for group in ("members", "baselines"):
            changes[group] = [{**m.model_dump(mode="json", exclude_unset=True), "precisions": None}
                              for m in getattr(spec, group)]
    if args.engines:
        changes["tensorrt"] = {"engines": True}
    if args.compile:
        changes["serving"] = {"compile": True}
    formats = {k: v for k, v in (("variants", ["onnx", "torchscript"] if args.torchscript else None),
                                 ("serve", args.serve_format)) if v is not None}
    if formats:
        changes["formats"] = formats
    return with_overrides(spec, changes) if changes else spec


def run(args: argparse.Namespace) -> int:
    from tritonfleet.builder.build import build
    from tritonfleet.builder.spec import load_spec

    spec = apply_overrides(load_spec(args.spec), args)
    result = build(spec, target=args.target, output_dir=args.output, spec_path=args.spec, progress=args.progress,
                   candidate=args.candidate)
    print_build(result)
    for name, served in result.candidates.items():
        action, version = result.actions[name]
        if action.startswith("version"):
            console().print(f"candidate: {name} version {version} is on disk, version {', '.join(map(str, served))} "
                            f"still serves; compare and promote it with: tritonfleet promote {result.repository} {name}",
                            soft_wrap=True)
    from tritonfleet.builder.lifecycle.distill import stale_students

    for line in stale_students(result.repository, result.pipeline):  # students are kept; say when they are stale
        console().print(f"[yellow]note[/] {line}", soft_wrap=True)
    for line in result.notes:  # configs 'tritonfleet tune' committed: kept, or replaced by the spec's
        console().print(f"[yellow]note[/] {line}", soft_wrap=True, markup=True, highlight=False)
    missing = result.missing_required
    if missing:
        console().print(f"[bold red]error:[/] {len(missing)} requested variant(s) not built (exit code "
                        f"{MISSING_VARIANT_EXIT}); the repository holds the others. Fix the cause, drop the variant, "
                        "or mark its precision optional (precision.optional: \\[fp16])")
        return MISSING_VARIANT_EXIT
    return 0


def print_build(result) -> None:
    from rich.markup import escape
    from rich.table import Table

    from tritonfleet.builder.repository.plan import variant_name
    from tritonfleet.clients.evaluation.accuracy import drop_points
    from tritonfleet.clients.vocabulary import ArtifactFormat

    out = console()
    table = Table(title=f"{result.pipeline} -> {result.repository} (target {result.target})")
    columns = ("model", "kind", "prec", "max err", "top1 agr", "val acc", "test acc", "drop",
               "KB", "smp/s", "served")
    for col in columns:
        table.add_column(col, justify="left" if col in ("model", "kind", "prec") else "right", no_wrap=col == "model")
    for plan in result.models:
        stats = {s.precision: s for s in result.variants.get(plan.member or "", [])}
        own = stats.get(plan.precision) if plan.format == ArtifactFormat.ONNX else None
        runtime = {ArtifactFormat.PLAN: "tensorrt", ArtifactFormat.TORCHSCRIPT: "torchscript-cpu"}.get(
            plan.format, "onnxruntime-cpu")
        rec = next((r for r in result.parity.get(plan.member or "", [])
                    if r.precision == plan.precision and r.runtime == runtime), None)
        base = stats.get("fp32")
        selection = result.selections.get(plan.member or "")
        served = (selection is not None and selection.precision == plan.precision and plan.member is not None
                  and plan.config.name == variant_name(plan.member, plan.precision, result.served_format))
        prec = (plan.precision or "-") + {ArtifactFormat.PLAN: " trt", ArtifactFormat.TORCHSCRIPT: " ts"}.get(plan.format, "")
        table.add_row(
            plan.config.name, plan.kind, prec,
            fmt(rec.max_abs_error if rec else None, ".2e"),
            fmt(rec.top1_agreement if rec else None, ".4f"),
            fmt(own.val_accuracy if own else None), fmt(own.test_accuracy if own else None),
            fmt(drop_points(base.test_accuracy, own.test_accuracy) if own and base else None, "+.2f"),
            fmt(own.size_bytes / 1024 if own else None, ",.0f"),
            fmt(own.samples_per_s if own else None, ",.0f"),
            "[green]yes[/]" if served else "",
        )
    out.print(table)
    out.print("max err, top1 agr: vs PyTorch fp32 on the parity samples; acc: top-1, onnxruntime in-process; "
              "drop: test top-1 points vs fp32; smp/s: in-process onnxruntime at the benchmark batch size "
              "(served numbers: tritonfleet demo / bench)")
    for sel in result.selections.values():
        out.print(f"  {sel.member} serves {sel.precision} ({sel.reason})")
    failed = {(f.member, f.precision, f.format) for f in result.failed_variants}
    for f in result.failed_variants:
        label = "[yellow]optional[/]" if f.optional else "[bold red]missing[/]"
        out.print(f"{label} {escape(f.summary())}", soft_wrap=True)
    for step in result.problems:
        if step.status.value == "fail" and any(step.name in (f"{p} {m}", f"engine {m} {p}") for m, p, _ in failed):
            continue
        out.print(f"[yellow]{step.status.value}[/] {step.name}: {step.message.strip().splitlines()[-1]}")
    if result.removed:
        out.print(f"removed models no longer in the spec: {', '.join(result.removed)}")
