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
* fusion parameters fitted on the validation split (auto weights, stacking);
* write every model, the fusion step, the ensemble (or BLS pipeline) and manifest.json.

Chained members (``inputs_from``) are exported, checked, calibrated and measured on their
producers' outputs, computed with the PyTorch reference (for parity) or the served ONNX
variants (for fitting, so fitted parameters match what Triton will compute).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from builder.data import SPLITS, Split, load_split, parity_inputs
from builder.errors import ConversionError, RepositoryError, SpecError
from builder.export.fp16 import ConvertToFp16
from builder.export.int8 import QuantizeInt8
from builder.export.onnx import ExportOnnx
from builder.export.trt import INSTALL_HINT, BuildEngine, engine_record, run_engine, tensorrt_version
from builder.failpoints import failpoint
from builder.fusion.fit import fit_stacking, fit_weights
from builder.fusion.ops import to_probabilities
from builder.loaders import LoadTorchModel
from builder.pipeline import SkipStep, Status, Step, StepResult, run_steps
from builder.repository.config import TensorConfig, parse_pbtxt, tensors_of
from builder.repository.ensemble import check_ensemble
from builder.repository.journal import recover
from builder.repository.manifest import read_manifest, sha256_file, tool_versions
from builder.repository.plan import (
    ONNX_FILE,
    PLAN_FILE,
    TARGETS,
    ExternalModel,
    ModelPlan,
    engine_profile,
    plan_pipeline,
    variant_name,
)
from builder.repository.writer import RepositoryWriter
from builder.specs import MemberSpec, PipelineSpec
from builder.validate import ParityRecord, compare_outputs, run_onnx, run_torch
from builder.variants import Selection, VariantStats, compare_throughput, onnx_accuracy, select_variant

PACKAGE = Path(__file__).parent
RUNNER_FILE = PACKAGE / "runners" / "onnx_model.py"
FUSION_MODEL_FILE = PACKAGE / "fusion" / "model.py"
FUSION_OPS_FILE = PACKAGE / "fusion" / "ops.py"
SERVING_FILE = PACKAGE / "fusion" / "tritonfleet_serving.py"
BLS_MODEL_FILES = {"cascade": PACKAGE / "fusion" / "cascade_model.py", "route": PACKAGE / "fusion" / "route_model.py"}


@dataclass
class BuildResult:
    repository: Path
    pipeline: str
    target: str
    models: list[ModelPlan]
    parity: dict[str, list[ParityRecord]] = field(default_factory=dict)
    variants: dict[str, list[VariantStats]] = field(default_factory=dict)
    selections: dict[str, Selection] = field(default_factory=dict)
    fitted: dict[str, Any] = field(default_factory=dict)
    steps: list[StepResult] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    actions: dict[str, tuple[str, int]] = field(default_factory=dict)  # model -> (new|unchanged|config|version, n)
    recovered: str | None = None  # what happened to a commit a crash had interrupted

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
    recovered = recover(repo)  # a commit a crash interrupted: undo (or finish) it first

    # ---- everything that needs no heavy work, before any work
    external = resolve_external(spec, repo)
    plans = plan_pipeline(spec, target, external=external)
    _check_graph(plans)
    splits = {name: load_split(spec, name) for name in SPLITS}
    sample, sample_source = parity_inputs(spec)

    with RepositoryWriter(repo, spec.name) as writer:
        writer.check_names([p.config.name for p in plans])
        job = _Build(spec, target, writer, splits, sample, sample_source, external, read_manifest(repo))
        try:
            results = run_steps(job.steps(), job.ctx, progress=progress, title=f"build {spec.name} ({target})")
            failpoint("after-steps")
            shutil.rmtree(writer.staging / ".work", ignore_errors=True)
            removed = writer.commit(job.pipeline_record(spec_path))
        except OSError as exc:  # disk full, permissions: the journal restores the repository
            recover(repo)
            raise RepositoryError(
                f"could not write while building into {repo}: {exc.strerror or exc} "
                f"({exc.filename or 'a temporary file'}); nothing was changed. Free space or fix permissions "
                "and build again."
            ) from None
    ctx = job.ctx
    return BuildResult(repo, spec.name, target, ctx["plans"], ctx["parity"], ctx["variants"], ctx["selections"],
                       ctx["fitted"], results, removed, writer.actions, recovered)


def _check_graph(plans: list[ModelPlan]) -> None:
    configs = {p.config.name: p.config for p in plans}
    for plan in plans:
        if plan.config.is_ensemble:
            check_ensemble(plan.config, configs)


def resolve_external(spec: PipelineSpec, repo: Path) -> dict[str, ExternalModel]:
    """BLS stages that are not models of the spec must already be in the repository, with the
    pipeline's input signature and class scores ``[classes]`` as the named output."""
    if spec.fusion_kind != "bls":
        return {}
    external = {}
    want_inputs = [(t.dtype, tuple(t.shape)) for t in spec.inputs]
    for ref in spec.fusion.refs:
        if spec.model(ref.model) is not None or ref.model in external:
            continue
        config = repo / ref.model / "config.pbtxt"
        if not config.is_file():
            raise SpecError(
                f"fusion stage '{ref.model}' is neither a model of this spec nor in {repo}; build the "
                "pipeline that provides it into the same output_dir first"
            )
        proto = parse_pbtxt(config.read_text())
        ins, outs = tensors_of(proto, "input"), tensors_of(proto, "output")
        if list(ins.values()) != want_inputs:
            raise SpecError(f"fusion stage '{ref.model}' takes {list(ins.values())}, the pipeline gives {want_inputs}")
        output = ref.output or next(iter(outs))
        if output not in outs or len(outs[output][1]) != 1 or outs[output][1][0] != spec.num_classes:
            raise SpecError(f"fusion stage '{ref.model}' has no output '{output}' of {spec.num_classes} class scores "
                            f"(outputs: {outs})")
        external[ref.model] = ExternalModel(
            ref.model, tuple(TensorConfig(n, d, s) for n, (d, s) in ins.items()),
            tuple(TensorConfig(n, d, s) for n, (d, s) in outs.items()),
        )
    return external


class _Build:
    """The steps of one build; they share ``ctx`` (artifacts, records, choices)."""

    def __init__(self, spec: PipelineSpec, target: str, writer: RepositoryWriter,
                 splits: dict[str, Split | None], sample: tuple[np.ndarray, ...], sample_source: str,
                 external: dict[str, ExternalModel], manifest: dict[str, Any]):
        self.spec = spec
        self.manifest = manifest
        self.target = target
        self.writer = writer
        self.splits = splits
        self.sample = sample
        self.sample_source = sample_source
        self.external = external
        self.work = writer.staging / ".work"
        self.ctx: dict[str, Any] = {"parity": {}, "variants": {}, "selections": {}, "engines": {}, "plans": [],
                                    "fitted": {}}
        self._cache: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
        self._file_sha: dict[Path, str] = {}
        self._keys: dict[tuple[str, str], str] = {}

    # ------------------------------------------------------------------ reuse of unchanged members
    def artifact_key(self, m: MemberSpec, precision: str) -> str:
        """Hash of everything an ONNX variant depends on: sources, export and check settings,
        data, upstream members and tool versions. Equal keys: the artifact can be reused."""
        if (m.name, precision) not in self._keys:
            spec = self.spec

            def sha(path: Path) -> str:
                if path not in self._file_sha:
                    self._file_sha[path] = sha256_file(path)
                return self._file_sha[path]

            data_sha = sha(spec.data.path) if spec.data else None
            payload = {
                "precision": precision, "target": self.target,
                "source": {"kind": m.model.kind, "architecture": m.model.architecture, "kwargs": m.model.kwargs,
                           "files": [sha(f) for f in m.model.files]},
                "signature": [t.model_dump(mode="json") for t in (*m.inputs, *m.outputs)],
                "opset": spec.opset,
                "upstream": {n: self.artifact_key(spec.model(src), "fp32") for n, (src, _) in spec.sources_of(m).items()},
                "parity": {"samples": spec.parity.samples, "data": data_sha,
                           "data_spec": spec.data.model_dump(mode="json") if spec.data else None,
                           "tolerance": spec.parity.for_precision(precision).model_dump(mode="json")},
                "calibration": spec.precision.calibration.model_dump(mode="json") if precision == "int8" else None,
                "benchmark": [spec.precision.benchmark_batch_size, spec.serving.onnxruntime_threads],
                "tools": tool_versions(),
            }
            blob = json.dumps(payload, sort_keys=True, default=str).encode()
            self._keys[(m.name, precision)] = hashlib.sha256(blob).hexdigest()
        return self._keys[(m.name, precision)]

    def reusable(self, m: MemberSpec, precision: str) -> dict[str, Any] | None:
        """The manifest record of a variant if it is unchanged (same artifact key) and intact."""
        if self.spec.tensorrt.engines:
            return None
        name = variant_name(m, precision)
        rec = self.manifest["models"].get(name)
        if rec is None or rec.get("artifact_key") != self.artifact_key(m, precision) or not rec.get("variant"):
            return None
        path = self.writer.repo / name / str(rec.get("version", 1)) / ONNX_FILE
        if not path.is_file() or sha256_file(path) != rec.get("artifact_sha256"):
            return None
        return {**rec, "path": path}

    def _reuse(self, m: MemberSpec, precision: str, rec: dict[str, Any]) -> None:
        self.ctx[f"onnx:{m.name}:{precision}"] = rec["path"]
        self.ctx["parity"].setdefault(m.name, []).extend(ParityRecord.from_dict(r) for r in rec["parity"])
        if rec.get("calibration"):
            self.ctx[f"calibration:{m.name}"] = rec["calibration"]

    def _reuse_all(self, m: MemberSpec, records: dict[str, dict[str, Any]]) -> Callable:
        def run(ctx: dict[str, Any]) -> None:
            for precision, rec in records.items():
                self._reuse(m, precision, rec)
            ctx["variants"][m.name] = [VariantStats(**records[p]["variant"]) for p in records]

        return run

    def torch_model(self, m: MemberSpec):
        key = f"torch:{m.name}"
        if key not in self.ctx:
            self.ctx[key] = LoadTorchModel(m.model, f"model '{m.name}'")()
        return self.ctx[key]

    # ------------------------------------------------------------------ data of chained members
    def _datasets(self) -> dict[str, tuple[np.ndarray, ...]]:
        sets = {"parity": self.sample}
        sets.update({name: split.inputs for name, split in self.splits.items() if split is not None})
        return sets

    def inputs_for(self, m: MemberSpec, dataset: str, engine: str = "torch") -> tuple[np.ndarray, ...]:
        """``m``'s input arrays on a dataset: the pipeline inputs, or for a chained member its
        producers' outputs (computed with ``engine``: the PyTorch reference or served ONNX)."""
        sources = self.spec.sources_of(m)
        if not sources:
            return self._datasets()[dataset]
        return tuple(self.outputs_for(self.spec.model(sources[t.name][0]), dataset, engine)[sources[t.name][1]]
                     for t in m.inputs)

    def outputs_for(self, m: MemberSpec, dataset: str, engine: str = "torch") -> dict[str, np.ndarray]:
        key = (m.name, dataset, engine)
        if key not in self._cache:
            inputs = self.inputs_for(m, dataset, engine)
            if engine == "torch":
                self._cache[key] = run_torch(self.torch_model(m), inputs, [t.name for t in m.outputs])
            else:
                precision = self.ctx["selections"][m.name].precision if m.name in self.ctx["selections"] else "fp32"
                path = self.ctx[f"onnx:{m.name}:{precision}"]
                self._cache[key] = run_onnx(path, {t.name: x for t, x in zip(m.inputs, inputs)})
        return self._cache[key]

    def is_scorer(self, m: MemberSpec) -> bool:
        """Models whose first output is class scores measured against labels (not backbones)."""
        first = m.outputs[0]
        consumed = {src.split(".")[0] for other in self.spec.members for src in other.inputs_from.values()}
        return len(first.shape) == 1 and first.dtype in ("float32", "float16", "float64") and m.name not in consumed

    # ------------------------------------------------------------------ step list
    def steps(self) -> list[Step]:
        spec = self.spec
        engines = self._engine_plan()
        steps: list[Step] = []
        for where, m in self._models():
            records = {p: r for p in spec.precisions_of(m) if (r := self.reusable(m, p)) is not None}
            if len(records) == len(spec.precisions_of(m)):
                steps.append(Step(f"reuse {m.name} (unchanged)", self._reuse_all(m, records)))
                continue
            label = f"reference {m.name} (fp32 unchanged)" if "fp32" in records else f"export {m.name}"
            steps.append(Step(label, self._export(m, where, records.get("fp32"))))
            for precision in spec.precisions_of(m)[1:]:
                if precision in records:
                    steps.append(Step(f"{precision} {m.name} (unchanged)",
                                      lambda ctx, m=m, p=precision, rec=records[precision]: self._reuse(m, p, rec)))
                else:
                    steps.append(Step(f"{precision} {m.name}", self._lower_precision(m, precision), required=False))
            steps.append(Step(f"measure {m.name}", self._measure(m)))
            if engines is True:
                for precision in spec.precisions_of(m):
                    steps.append(Step(f"engine {m.name} {precision}", self._engine(m, precision), required=False))
        if isinstance(engines, str):
            steps.append(Step("tensorrt engines", _skip(engines), required=False))
        steps.append(Step("select served variants", self._select))
        if self._needs_fit():
            steps.append(Step(f"fit {spec.fusion.type} fusion", self._fit))
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
    def _export(self, m: MemberSpec, where: str, reuse: dict[str, Any] | None) -> Callable:
        def run(ctx: dict[str, Any]) -> dict[str, Any]:
            model = LoadTorchModel(m.model, where)()
            ctx[f"torch:{m.name}"] = model
            if reuse is not None:  # fp32 unchanged: only the reference is needed, for the new variants
                self._reuse(m, "fp32", reuse)
                ctx[f"ref:{m.name}"] = self.outputs_for(m, "parity")
                return {}
            sample = self.inputs_for(m, "parity")
            path = ExportOnnx(
                model, [x[: max(2, min(len(x), 8))] for x in sample], m.inputs, m.outputs,
                self.work / m.name / "fp32" / ONNX_FILE, opset=self.spec.opset, name=m.name,
            )()
            ctx.update({f"ref:{m.name}": self.outputs_for(m, "parity"), f"onnx:{m.name}:fp32": path})
            self._check(m, "fp32", path, "onnxruntime-cpu")
            failpoint("after-export")
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
                quantize = QuantizeInt8(source, target, self.inputs_for(m, "calibration"),
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
            actual = run_onnx(path, {t.name: x for t, x in zip(m.inputs, self.inputs_for(m, "parity"))})
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
                speed = compare_throughput(paths, dict(zip(names, self.inputs_for(m, "parity"))),
                                           spec.precision.benchmark_batch_size,
                                           max(1, spec.serving.onnxruntime_threads))
            stats = []
            for precision, path in paths.items():
                accuracy = {}
                for split in ("validation", "test"):
                    data = self.splits[split]
                    if data is not None and data.labels is not None and self.is_scorer(m):
                        accuracy[split] = onnx_accuracy(path, dict(zip(names, self.inputs_for(m, split))),
                                                        data.labels)
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
            actual = run_engine(path, {t.name: x for t, x in zip(m.inputs, self.inputs_for(m, "parity"))},
                                profile.max)
            self._check(m, precision, path, "tensorrt", actual=actual)
            ctx[f"plan:{m.name}:{precision}"] = path
            ctx["engines"].setdefault(m.name, []).append(precision)
            ctx[f"engine_record:{m.name}:{precision}"] = engine_record(profile)

        return run

    def _select(self, ctx: dict[str, Any]) -> None:
        spec = self.spec
        for m in spec.members:
            built = [s.precision for s in ctx["variants"][m.name]]
            if spec.precision.serve == "auto" and self.is_scorer(m):
                choice = select_variant(m.name, ctx["variants"][m.name], spec.precision.accuracy_budget,
                                        spec.precision.min_speedup)
            elif spec.precision.serve == "auto":
                choice = Selection(m.name, "fp32", "fp32: auto measures top-1 drops, which a model that "
                                                   "feeds others has none of")
            else:
                wanted = spec.precision.serve
                if wanted not in built:
                    raise ConversionError(
                        f"precision.serve is {wanted}, but the {wanted} variant of '{m.name}' was not built "
                        f"(see its '{wanted} {m.name}' step above); serve another precision or fix the cause"
                    )
                choice = Selection(m.name, wanted, f"{wanted}: fixed by precision.serve")
            ctx["selections"][m.name] = choice

    def _needs_fit(self) -> bool:
        f = self.spec.fusion
        return f.type == "stacking" or (f.type == "weighted_mean" and f.weights == "auto")

    def _fit(self, ctx: dict[str, Any]) -> None:
        """Fit on what Triton will compute: the served variants' outputs on data.validation."""
        spec, f = self.spec, self.spec.fusion
        labels = self.splits["validation"].labels
        probs = [to_probabilities(self.outputs_for(m, "validation", "onnx")[spec.fused_output(m).name], f.activation)
                 for m in spec.fused_members]
        if f.type == "weighted_mean":
            ctx["fitted"] = fit_weights(probs, labels, f.metric)
        else:
            ctx["fitted"] = fit_stacking(probs, labels, spec.num_classes, f.regularization, f.max_iter)

    def _write(self, ctx: dict[str, Any]) -> None:
        built = {name: [s.precision for s in stats] for name, stats in ctx["variants"].items()}
        served = {name: sel.precision for name, sel in ctx["selections"].items()}
        fitted = {k: v for k, v in ctx["fitted"].items() if k in ("weights", "coef", "intercept")}
        plans = plan_pipeline(self.spec, self.target, built, served, ctx["engines"], fitted, self.external)
        _check_graph(plans)
        ctx["plans"] = plans
        for plan in plans:
            files, record = self._files_and_record(plan)
            self.writer.add_model(plan, files, record=record)

    def _files_and_record(self, plan: ModelPlan) -> tuple[dict[str, Path], dict[str, Any]]:
        ctx = self.ctx
        if plan.format == "python":
            files: dict[str, Path | bytes] = {"model.py": FUSION_MODEL_FILE, "ops.py": FUSION_OPS_FILE,
                                              SERVING_FILE.name: SERVING_FILE}
            fitted = ctx["fitted"]
            if "coef" in fitted:  # stacking coefficients: data in params.json, read by model.py
                files["params.json"] = json.dumps({"coef": fitted["coef"], "intercept": fitted["intercept"]}).encode()
            summary = {k: v for k, v in fitted.items() if k not in ("coef", "intercept")}
            return files, {"fitted": summary} if fitted else {}
        if plan.format == "ensemble":
            return {}, {"served": {k: v.to_dict() for k, v in ctx["selections"].items()}}
        if plan.format == "bls":
            return {"model.py": BLS_MODEL_FILES[self.spec.fusion.type], "ops.py": FUSION_OPS_FILE,
                    SERVING_FILE.name: SERVING_FILE}, \
                {"served": {k: v.to_dict() for k, v in ctx["selections"].items()}}
        runtime = "tensorrt" if plan.format == "plan" else "onnxruntime-cpu"
        parity = [r.to_dict() for r in ctx["parity"].get(plan.member, [])
                  if r.precision == plan.precision and r.runtime == runtime]
        path = ctx[f"{plan.format}:{plan.member}:{plan.precision}"]
        files = {PLAN_FILE if plan.format == "plan" else ONNX_FILE: path}
        record: dict[str, Any] = {"parity": parity, "artifact_sha256": sha256_file(path),
                                  "size_bytes": path.stat().st_size}
        if plan.format == "onnx":
            record["artifact_key"] = self.artifact_key(self.spec.model(plan.member), plan.precision)
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
            "fitted": {k: v for k, v in self.ctx["fitted"].items() if k not in ("coef", "intercept")},
        }


def _skip(message: str) -> Callable:
    def run(ctx: dict[str, Any]) -> None:
        raise SkipStep(message)

    return run
