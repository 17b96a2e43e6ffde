"""Spec -> validated artifacts -> Triton model repository, in one call.

:func:`build` checks everything that can be checked without work first (spec, data, the
ensemble graph, repository ownership), then runs the steps into a staging folder and
commits it only when every required step passed:

* per model: export fp32 ONNX and check it against PyTorch (required);
* per lower precision: convert (fp16) or quantize (int8), check against PyTorch fp32
  (optional: a failure is reported and the variant left out, the others go on);
* per model: top-1 accuracy and in-process speed of every variant;
* per variant, with ``tensorrt.engines`` on the ngc target: a TensorRT engine (optional;
  skipped with one message when TensorRT is absent);
* the served variant of each member (fixed, or ``auto`` within an accuracy budget);
* write every model, the fusion step, the ensemble and manifest.json.
"""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from builder.data import SPLITS, Split, load_split, parity_inputs
from builder.errors import ConversionError, SpecError
from builder.export.fp16 import ConvertToFp16
from builder.export.int8 import QuantizeInt8
from builder.export.onnx import ExportOnnx
from builder.export.trt import INSTALL_HINT, BuildEngine, engine_record, run_engine, tensorrt_version
from builder.loaders import LoadTorchModel
from builder.pipeline import SkipStep, Status, Step, StepResult, run_steps
from builder.repository.ensemble import check_ensemble
from builder.repository.manifest import sha256_file, tool_versions
from builder.repository.plan import (
    ONNX_FILE,
    PLAN_FILE,
    TARGETS,
    ModelPlan,
    engine_profile,
    plan_pipeline,
)
from builder.repository.writer import RepositoryWriter
from builder.specs import MemberSpec, PipelineSpec
from builder.validate import ParityRecord, compare_outputs, run_onnx, run_torch
from builder.variants import Selection, VariantStats, compare_throughput, onnx_accuracy, select_variant

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
    variants: dict[str, list[VariantStats]] = field(default_factory=dict)
    selections: dict[str, Selection] = field(default_factory=dict)
    steps: list[StepResult] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[StepResult]:
        """Optional steps that failed or were skipped, with their messages."""
        return [s for s in self.steps if s.status is not Status.OK]


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
        raise SpecError(f"unknown target '{target}'; choose one of: {', '.join(TARGETS)}")
    repo = Path(output_dir).resolve() if output_dir else spec.output_dir

    # ---- everything that needs no heavy work, before any work
    plans = plan_pipeline(spec, target)
    _check_graph(plans)
    splits = {name: load_split(spec, name) for name in SPLITS}
    sample, sample_source = parity_inputs(spec)

    with RepositoryWriter(repo, spec.name) as writer:
        writer.check_names([p.config.name for p in plans])
        job = _Build(spec, target, writer, splits, sample, sample_source)
        results = run_steps(job.steps(), job.ctx, progress=progress, title=f"build {spec.name} ({target})")
        shutil.rmtree(writer.staging / ".work", ignore_errors=True)
        removed = writer.commit(job.pipeline_record(spec_path))
    return BuildResult(repo, spec.name, target, job.ctx["plans"], job.ctx["parity"], job.ctx["variants"],
                       job.ctx["selections"], results, removed)


def _check_graph(plans: list[ModelPlan]) -> None:
    configs = {p.config.name: p.config for p in plans}
    check_ensemble(next(p.config for p in plans if p.kind == "ensemble"), configs)


class _Build:
    """The steps of one build; they share ``ctx`` (artifacts, records, choices)."""

    def __init__(self, spec: PipelineSpec, target: str, writer: RepositoryWriter,
                 splits: dict[str, Split | None], sample: tuple[np.ndarray, ...], sample_source: str):
        self.spec = spec
        self.target = target
        self.writer = writer
        self.splits = splits
        self.sample = sample
        self.sample_source = sample_source
        self.work = writer.staging / ".work"
        self.ctx: dict[str, Any] = {"parity": {}, "variants": {}, "selections": {}, "engines": {}, "plans": []}

    # ------------------------------------------------------------------ step list
    def steps(self) -> list[Step]:
        spec = self.spec
        engines = self._engine_plan()
        steps: list[Step] = []
        for where, m in self._models():
            steps.append(Step(f"export {m.name}", self._export(m, where)))
            for precision in spec.precisions_of(m)[1:]:
                steps.append(Step(f"{precision} {m.name}", self._lower_precision(m, precision), required=False))
            steps.append(Step(f"measure {m.name}", self._measure(m)))
            if engines is True:
                for precision in spec.precisions_of(m):
                    steps.append(Step(f"engine {m.name} {precision}", self._engine(m, precision), required=False))
        if isinstance(engines, str):
            steps.append(Step("tensorrt engines", _skip(engines), required=False))
        steps.append(Step("select served variants", self._select))
        steps.append(Step("write repository", self._write))
        return steps

    def _models(self):
        for i, m in enumerate(self.spec.members):
            yield f"members[{i}] ({m.name}).model", m
        for i, m in enumerate(self.spec.baselines):
            yield f"baselines[{i}] ({m.name}).model", m

    def _engine_plan(self) -> bool | str | None:
        """True: build engines; a string: why not (reported once); None: not asked."""
        if not self.spec.tensorrt.engines:
            return None
        if self.target != "ngc":
            return "TensorRT engines are served by the ngc target only; build with --target ngc"
        if tensorrt_version() is None:
            return f"TensorRT is not installed: engine variants skipped, ONNX variants built; {INSTALL_HINT}"
        return True

    # ------------------------------------------------------------------ steps
    def _export(self, m: MemberSpec, where: str) -> Callable:
        def run(ctx: dict[str, Any]) -> dict[str, Any]:
            model = LoadTorchModel(m.model, where)()
            path = ExportOnnx(
                model, [x[: max(2, min(len(x), 8))] for x in self.sample], m.inputs, m.outputs,
                self.work / m.name / "fp32" / ONNX_FILE, opset=self.spec.opset, name=m.name,
            )()
            reference = run_torch(model, self.sample, [t.name for t in m.outputs])
            ctx.update({f"ref:{m.name}": reference, f"onnx:{m.name}:fp32": path})
            self._check(m, "fp32", path, "onnxruntime-cpu")
            return {}

        return run

    def _lower_precision(self, m: MemberSpec, precision: str) -> Callable:
        def run(ctx: dict[str, Any]) -> dict[str, Any]:
            source = ctx[f"onnx:{m.name}:fp32"]
            target = self.work / m.name / precision / ONNX_FILE
            if precision == "fp16":
                path = ConvertToFp16(source, target, name=m.name)()
            else:
                options = self.spec.precision.calibration
                quantize = QuantizeInt8(source, target, self.splits["calibration"].inputs,
                                        [t.name for t in m.inputs], options, name=m.name)
                path = quantize()
                ctx[f"calibration:{m.name}"] = {**options.model_dump(), "samples_used": quantize.samples_used,
                                                "split": "data.calibration"}
            self._check(m, precision, path, "onnxruntime-cpu")
            return {f"onnx:{m.name}:{precision}": path}

        return run

    def _check(self, m: MemberSpec, precision: str, path: Path, runtime: str, actual=None) -> ParityRecord:
        tol = self.spec.parity.for_precision(precision)
        if actual is None:
            actual = run_onnx(path, {t.name: x for t, x in zip(m.inputs, self.sample)})
        record = compare_outputs(
            self.ctx[f"ref:{m.name}"], actual, atol=tol.atol, rtol=tol.rtol,
            min_top1_agreement=tol.min_top1_agreement, artifact=f"{m.name}/{path.name}",
            precision=precision, runtime=runtime, inputs=self.sample_source,
        )
        self.ctx["parity"].setdefault(m.name, []).append(record)
        return record

    def _measure(self, m: MemberSpec) -> Callable:
        def run(ctx: dict[str, Any]) -> None:
            spec = self.spec
            names = [t.name for t in m.inputs]
            paths = {p: ctx[f"onnx:{m.name}:{p}"] for p in spec.precisions_of(m) if f"onnx:{m.name}:{p}" in ctx}
            speed: dict[str, float] = {}
            if spec.precision.serve == "auto" or len(paths) > 1:
                speed = compare_throughput(paths, dict(zip(names, self.sample)), spec.precision.benchmark_batch_size,
                                           max(1, spec.serving.onnxruntime_threads))
            stats = []
            for precision, path in paths.items():
                accuracy = {}
                for split in ("validation", "test"):
                    data = self.splits[split]
                    if data is not None and data.labels is not None:
                        accuracy[split] = onnx_accuracy(path, dict(zip(names, data.inputs)), data.labels)
                stats.append(VariantStats(precision, True, path.stat().st_size, accuracy.get("validation"),
                                          accuracy.get("test"), speed.get(precision)))
            ctx["variants"][m.name] = stats

        return run

    def _engine(self, m: MemberSpec, precision: str) -> Callable:
        def run(ctx: dict[str, Any]) -> None:
            source = ctx.get(f"onnx:{m.name}:{precision}")
            if source is None:
                raise SkipStep(f"no {precision} ONNX variant of {m.name} to build an engine from")
            profile = engine_profile(self.spec, m)
            trt = self.spec.tensorrt
            path = BuildEngine(source, self.work / m.name / f"trt_{precision}" / PLAN_FILE, profile,
                               trt.workspace_mb << 20, trt.timing_cache, name=m.name)()
            actual = run_engine(path, {t.name: x for t, x in zip(m.inputs, self.sample)}, profile.max)
            self._check(m, precision, path, "tensorrt", actual=actual)
            ctx[f"plan:{m.name}:{precision}"] = path
            ctx["engines"].setdefault(m.name, []).append(precision)
            ctx[f"engine_record:{m.name}:{precision}"] = engine_record(profile)

        return run

    def _select(self, ctx: dict[str, Any]) -> None:
        spec = self.spec
        for m in spec.members:
            built = [s.precision for s in ctx["variants"][m.name]]
            if spec.precision.serve == "auto":
                choice = select_variant(m.name, ctx["variants"][m.name], spec.precision.accuracy_budget,
                                        spec.precision.min_speedup)
            else:
                wanted = spec.precision.serve
                if wanted not in built:
                    raise ConversionError(
                        f"precision.serve is {wanted}, but the {wanted} variant of '{m.name}' was not built "
                        f"(see its '{wanted} {m.name}' step above); serve another precision or fix the cause"
                    )
                choice = Selection(m.name, wanted, f"{wanted}: fixed by precision.serve")
            ctx["selections"][m.name] = choice

    def _write(self, ctx: dict[str, Any]) -> None:
        built = {name: [s.precision for s in stats] for name, stats in ctx["variants"].items()}
        served = {name: sel.precision for name, sel in ctx["selections"].items()}
        plans = plan_pipeline(self.spec, self.target, built, served, ctx["engines"])
        _check_graph(plans)
        ctx["plans"] = plans
        for plan in plans:
            files, record = self._files_and_record(plan)
            self.writer.add_model(plan, files, record=record)

    def _files_and_record(self, plan: ModelPlan) -> tuple[dict[str, Path], dict[str, Any]]:
        ctx = self.ctx
        if plan.format == "python":
            return {"model.py": FUSION_MODEL_FILE, "ops.py": FUSION_OPS_FILE}, {}
        if plan.format == "ensemble":
            return {}, {"served": {k: v.to_dict() for k, v in ctx["selections"].items()}}
        runtime = "tensorrt" if plan.format == "plan" else "onnxruntime-cpu"
        parity = [r.to_dict() for r in ctx["parity"].get(plan.member, [])
                  if r.precision == plan.precision and r.runtime == runtime]
        path = ctx[f"{plan.format}:{plan.member}:{plan.precision}"]
        files = {PLAN_FILE if plan.format == "plan" else ONNX_FILE: path}
        record: dict[str, Any] = {"parity": parity, "artifact_sha256": sha256_file(path),
                                  "size_bytes": path.stat().st_size}
        if plan.format == "plan":
            record["engine"] = ctx[f"engine_record:{plan.member}:{plan.precision}"]
        else:
            stats = next((s for s in ctx["variants"].get(plan.member, []) if s.precision == plan.precision), None)
            record["variant"] = stats.to_dict() if stats else None
            if plan.precision == "int8":
                record["calibration"] = ctx.get(f"calibration:{plan.member}")
            if self.target == "local":
                files["model.py"] = RUNNER_FILE
        return files, record

    def pipeline_record(self, spec_path: Path | None) -> dict[str, Any]:
        return {
            "target": self.target,
            "spec": self.spec.model_dump(mode="json"),
            "spec_file": str(spec_path) if spec_path else None,
            "spec_sha256": sha256_file(spec_path) if spec_path else None,
            "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "tools": tool_versions(),
            "served": {k: v.to_dict() for k, v in self.ctx["selections"].items()},
        }


def _skip(message: str) -> Callable:
    def run(ctx: dict[str, Any]) -> None:
        raise SkipStep(message)

    return run
