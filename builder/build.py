"""Spec -> validated artifacts -> Triton model repository, in one call.

:func:`build` checks everything that can be checked without work first (spec, data, the
ensemble graph, repository ownership), then runs the steps (export, validate, write) into
a staging folder and commits it only when every required step passed.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder.data import SPLITS, load_split, parity_inputs
from builder.export.onnx import ExportOnnx
from builder.loaders import LoadTorchModel
from builder.pipeline import Step, StepResult, run_steps
from builder.repository.ensemble import check_ensemble
from builder.repository.manifest import sha256_file, tool_versions
from builder.repository.plan import ONNX_FILE, TARGETS, ModelPlan, plan_pipeline
from builder.repository.writer import RepositoryWriter
from builder.specs import MemberSpec, PipelineSpec
from builder.validate import ParityRecord, compare_outputs, run_onnx, run_torch

PACKAGE = Path(__file__).parent
RUNNER_FILE = PACKAGE / "runners" / "onnx_model.py"
FUSION_MODEL_FILE = PACKAGE / "fusion" / "model.py"
FUSION_OPS_FILE = PACKAGE / "fusion" / "ops.py"


@dataclass
class BuildResult:
    repository: Path
    pipeline: str
    target: str
    models: list[ModelPlan]
    parity: dict[str, list[ParityRecord]] = field(default_factory=dict)
    steps: list[StepResult] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def build(
    spec: PipelineSpec,
    *,
    target: str | None = None,
    output_dir: Path | None = None,
    spec_path: Path | None = None,
    progress: bool = True,
) -> BuildResult:
    target = target or spec.target
    if target not in TARGETS:
        from builder.errors import SpecError

        raise SpecError(f"unknown target '{target}'; choose one of: {', '.join(TARGETS)}")
    repo = Path(output_dir).resolve() if output_dir else spec.output_dir

    # ---- everything that needs no heavy work, before any work
    plans = plan_pipeline(spec, target)
    configs = {p.config.name: p.config for p in plans}
    ensemble = next(p.config for p in plans if p.kind == "ensemble")
    check_ensemble(ensemble, configs)
    for split in SPLITS:
        load_split(spec, split)
    sample, sample_source = parity_inputs(spec)

    with RepositoryWriter(repo, spec.name) as writer:
        writer.check_names(list(configs))
        work = writer.staging / ".work"
        context: dict[str, Any] = {"parity": {}}
        steps: list[Step] = []
        for where, member in _models_with_paths(spec):
            steps.append(Step(f"export {member.name}", _export_step(spec, member, where, sample, work)))
            steps.append(Step(f"validate {member.name}", _validate_step(spec, member, sample, sample_source)))
        steps.append(Step("write repository", _write_step(plans, target, writer)))
        results = run_steps(steps, context, progress=progress, title=f"build {spec.name} ({target})")
        shutil.rmtree(work, ignore_errors=True)
        removed = writer.commit(_pipeline_record(spec, target, spec_path))
    return BuildResult(repo, spec.name, target, plans, context["parity"], results, removed)


def _models_with_paths(spec: PipelineSpec):
    for i, m in enumerate(spec.members):
        yield f"members[{i}] ({m.name}).model", m
    for i, m in enumerate(spec.baselines):
        yield f"baselines[{i}] ({m.name}).model", m


def _export_step(spec: PipelineSpec, member: MemberSpec, where: str, sample, work: Path):
    def run(ctx: dict[str, Any]) -> dict[str, Any]:
        model = LoadTorchModel(member.model, where)()
        path = ExportOnnx(
            model, [x[: max(2, min(len(x), 8))] for x in sample], member.inputs, member.outputs,
            work / member.name / "fp32" / ONNX_FILE, opset=spec.opset, name=member.name,
        )()
        return {f"torch:{member.name}": model, f"onnx:{member.name}:fp32": path}

    return run


def _validate_step(spec: PipelineSpec, member: MemberSpec, sample, source: str):
    def run(ctx: dict[str, Any]) -> None:
        path = ctx[f"onnx:{member.name}:fp32"]
        names = [t.name for t in member.outputs]
        reference = run_torch(ctx[f"torch:{member.name}"], sample, names)
        actual = run_onnx(path, {t.name: x for t, x in zip(member.inputs, sample)})
        record = compare_outputs(
            reference, actual, atol=spec.parity.atol, rtol=spec.parity.rtol,
            min_top1_agreement=spec.parity.min_top1_agreement, artifact=f"{member.name}/{ONNX_FILE}",
            precision="fp32", runtime="onnxruntime-cpu", inputs=source,
        )
        ctx["parity"].setdefault(member.name, []).append(record)

    return run


def _write_step(plans: list[ModelPlan], target: str, writer: RepositoryWriter):
    def run(ctx: dict[str, Any]) -> None:
        for plan in plans:
            record: dict[str, Any] = {}
            if plan.kind in ("member", "baseline"):
                onnx_path = ctx[f"onnx:{plan.member}:{plan.precision}"]
                files: dict[str, Path | bytes] = {ONNX_FILE: onnx_path}
                if target == "local":
                    files["model.py"] = RUNNER_FILE
                record = {
                    "parity": [r.to_dict() for r in ctx["parity"].get(plan.member, [])
                               if r.precision == plan.precision],
                    "onnx_sha256": sha256_file(onnx_path),
                    "size_bytes": onnx_path.stat().st_size,
                }
            elif plan.kind == "fusion":
                files = {"model.py": FUSION_MODEL_FILE, "ops.py": FUSION_OPS_FILE}
            else:
                files = {}
            writer.add_model(plan, files, record=record)

    return run


def _pipeline_record(spec: PipelineSpec, target: str, spec_path: Path | None) -> dict[str, Any]:
    return {
        "target": target,
        "spec": spec.model_dump(mode="json"),
        "spec_file": str(spec_path) if spec_path else None,
        "spec_sha256": sha256_file(spec_path) if spec_path else None,
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "tools": tool_versions(),
    }
