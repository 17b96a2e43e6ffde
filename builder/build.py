"""Spec -> validated artifacts -> Triton model repository, in one call.

:func:`build` checks everything that can be checked without work first (spec, data, the
ensemble graph, repository ownership), then runs the build steps into a staging folder and
commits it only when every required step passed:

* per model: load it and export fp32 ONNX, checked against PyTorch (required), or reuse
  unchanged variants (same artifact key, intact file);
* per lower precision: convert (fp16) or quantize (int8), checked against PyTorch fp32
  (optional: a failure is reported and the variant left out, the others go on);
* per model: top-1 accuracy and in-process speed of every variant;
* per variant, with ``tensorrt.engines`` on the ngc target: a TensorRT engine (optional;
  skipped with one message when TensorRT is absent);
* per fp32/fp16 variant, with ``formats.variants: [onnx, torchscript]``: a TorchScript file
  traced from the same model, checked against PyTorch like the ONNX (fp32 required);
* the served variant of each member (fixed, or ``auto`` within an accuracy budget);
* fusion parameters fitted on the validation split (auto weights, stacking);
* write every model, the fusion step, the ensemble (or BLS pipeline) and manifest.json.

The state the steps share is typed (:class:`BuildState`, one :class:`MemberBuild` per
model); each step returns what it made (``Made`` objects) and the runner applies them.
Chained members (``inputs_from``) are exported, checked, calibrated and measured on their
producers' outputs, computed with the PyTorch reference (for parity) or the served ONNX
variants (for fitting, so fitted parameters match what Triton will compute).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tritonfleet.builder.errors import ConversionError, RepositoryError, SpecError, ValidationError
from tritonfleet.builder.failpoints import failpoint
from tritonfleet.builder.repository.config import TensorConfig
from tritonfleet.builder.repository.ensemble import check_ensemble
from tritonfleet.builder.repository.journal import recover
from tritonfleet.builder.repository.plan import (
    ONNX_FILE,
    PLAN_FILE,
    TARGETS,
    TORCHSCRIPT_FILE,
    CompiledPipeline,
    ExternalModel,
    ModelPlan,
    compiled_pipeline,
    fusion_params,
    plan_pipeline,
    torch_precisions,
    variant_name,
)
from tritonfleet.builder.repository.records import (
    Artifact,
    fusion_files,
    guard_files,
    member_files,
    pipeline_files,
    pipeline_record,
    served_record,
)
from tritonfleet.builder.repository.reuse import ArtifactKeys, reusable_record
from tritonfleet.builder.repository.writer import RepositoryWriter
from tritonfleet.builder.runtime.ops import fuse, to_probabilities
from tritonfleet.builder.spec import MemberSpec, PipelineSpec
from tritonfleet.builder.spec.monitoring import publishes_metrics
from tritonfleet.builder.spec.sizes import resize_inputs
from tritonfleet.builder.spec.splits import SPLITS, Probe, Split, load_split, parity_probes
from tritonfleet.builder.stages.fit import fit_stacking, fit_weights
from tritonfleet.builder.stages.fusion2onnx import FUSION_PREFIX, fusion_in_float32
from tritonfleet.builder.stages.load_torch import LoadTorchModel
from tritonfleet.builder.stages.onnx2fp16 import ConvertToFp16
from tritonfleet.builder.stages.onnx2int8 import QuantizeInt8
from tritonfleet.builder.stages.onnx2trt import INSTALL_HINT, BuildEngine, engine_record, run_engine, tensorrt_version
from tritonfleet.builder.stages.parity import ParityRecord, compare_outputs, merge_records, run_onnx, run_torch
from tritonfleet.builder.stages.pipeline2onnx import CompilePipeline, compile_refusal
from tritonfleet.builder.stages.profile import pipeline_profile
from tritonfleet.builder.stages.torch2onnx import ExportOnnx
from tritonfleet.builder.stages.torch2torchscript import ExportTorchScript, run_torchscript
from tritonfleet.builder.stages.variants import (
    Selection,
    VariantStats,
    compare_throughput,
    onnx_accuracy,
    select_variant,
)
from tritonfleet.builder.steps import BuildStep, SkipStep, Status, StepResult, run_steps
from tritonfleet.clients.dtypes import FLOAT_DTYPES
from tritonfleet.clients.manifest import read_manifest_dict
from tritonfleet.clients.model_config import parse_pbtxt, tensors_of
from tritonfleet.clients.vocabulary import ArtifactFormat, ModelKind


# --------------------------------------------------------------------------- state
@dataclass
class MemberBuild:
    """What the build knows about one member or baseline."""

    spec: MemberSpec
    where: str                                   # its place in the spec, for error messages
    onnx: dict[str, Artifact] = field(default_factory=dict)     # precision -> ONNX variant
    engines: dict[str, Artifact] = field(default_factory=dict)  # precision -> TensorRT engine
    torch: dict[str, Artifact] = field(default_factory=dict)    # precision -> TorchScript file
    stats: list[VariantStats] = field(default_factory=list)
    selection: Selection | None = None

    @property
    def parity(self) -> list[ParityRecord]:
        return [r for a in (*self.onnx.values(), *self.engines.values(), *self.torch.values()) for r in a.parity]

    def artifacts(self, fmt: ArtifactFormat) -> dict[str, Artifact]:
        """precision -> artifact of one format."""
        return {ArtifactFormat.PLAN: self.engines, ArtifactFormat.TORCHSCRIPT: self.torch}.get(fmt, self.onnx)


@dataclass
class BuildState:
    spec: PipelineSpec
    target: str
    work: Path                                   # scratch folder inside the staging folder
    splits: dict[str, Split | None]
    probes: list[Probe]                          # parity samples (pipeline inputs), per size of the dynamic axes
    external: dict[str, ExternalModel]
    keys: ArtifactKeys
    members: dict[str, MemberBuild] = field(default_factory=dict)
    fitted: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] | None = None       # reference profile of the pipeline's traffic (monitoring)
    plans: list[ModelPlan] = field(default_factory=list)
    # memos of derived data: PyTorch models loaded once, outputs computed once per dataset
    _torch: dict[str, Any] = field(default_factory=dict, repr=False)
    _outputs: dict[tuple[str, str, str], dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    def torch_model(self, m: MemberSpec) -> Any:
        if m.name not in self._torch:
            self._torch[m.name] = LoadTorchModel(m.model, self.members[m.name].where)()
        return self._torch[m.name]

    @property
    def sample_source(self) -> str:
        return self.probes[0].source

    # ---- data of chained members
    def datasets(self) -> dict[str, tuple[np.ndarray, ...]]:
        return {**{p.key: p.inputs for p in self.probes}, **{n: s.inputs for n, s in self.splits.items() if s is not None}}

    def inputs_for(self, m: MemberSpec, dataset: str, engine: str = "torch") -> tuple[np.ndarray, ...]:
        """``m``'s input arrays on a dataset: the pipeline inputs, or for a chained member its
        producers' outputs (computed with ``engine``: the PyTorch reference or served ONNX)."""
        sources = self.spec.sources_of(m)
        if not sources:
            return self.datasets()[dataset]
        return tuple(self.outputs_for(self.spec.model(sources[t.name][0]), dataset, engine)[sources[t.name][1]]
                     for t in m.inputs)

    def outputs_for(self, m: MemberSpec, dataset: str, engine: str = "torch") -> dict[str, np.ndarray]:
        if isinstance(m, CompiledPipeline):
            return self.compiled_outputs(m, dataset, engine)
        key = (m.name, dataset, engine)
        if key not in self._outputs:
            inputs = self.inputs_for(m, dataset, engine)
            build = self.members[m.name]
            if engine == "torch":
                self._outputs[key] = run_torch(self.torch_model(m), inputs, [t.name for t in m.outputs])
            else:
                precision = build.selection.precision if build.selection else "fp32"
                path = build.onnx[precision].path
                self._outputs[key] = run_onnx(path, {t.name: x for t, x in zip(m.inputs, inputs)})
        return self._outputs[key]

    def compiled_outputs(self, c: CompiledPipeline, dataset: str, engine: str = "torch") -> dict[str, np.ndarray]:
        """What the Triton pipeline computes on a dataset: its members' outputs (PyTorch or the served
        ONNX) fused by ``ops.py`` with the fusion step's parameters, or the chosen member's outputs."""
        spec = self.spec
        if spec.fusion_kind != "classification":
            return self.outputs_for(spec.model(c.members[-1]), dataset, engine)
        fitted = {k: v for k, v in self.fitted.items() if k in ("weights", "coef", "intercept")}
        scores = [self.outputs_for(m, dataset, engine)[spec.fused_output(m).name] for m in spec.fused_members]
        fused = fuse(fusion_params(spec, fitted), scores)
        return {c.outputs[0].name: fused["probabilities"], c.outputs[1].name: fused["class_index"]}

    def is_scorer(self, m: MemberSpec) -> bool:
        """Models whose first output is class scores measured against labels (not backbones)."""
        first = m.outputs[0]
        consumed = {src.split(".")[0] for other in self.spec.members for src in other.inputs_from.values()}
        return len(first.shape) == 1 and first.dtype in FLOAT_DTYPES and m.name not in consumed

    def check(self, m: MemberSpec, precision: str, path: Path, runtime: str,
              run: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]] | None = None) -> ParityRecord:
        """Parity of an artifact against the member's PyTorch outputs at every size of the dynamic
        axes the probes hold (raises on failure, naming the size)."""
        tol = self.spec.parity.for_precision(precision)
        if isinstance(m, CompiledPipeline) and m.discrete and precision != "fp32":
            tol = tol.model_copy(update={"atol": None})  # a flipped vote moves shares by 1/members: top-1 decides
        run = run or (lambda feeds: run_onnx(path, feeds))
        parts = []
        for probe in self.probes:
            feeds = {t.name: x for t, x in zip(m.inputs, self.inputs_for(m, probe.key))}
            where = f" at {probe.point.describe()}" if len(self.probes) > 1 else ""
            reference = self._reference(m, probe)
            try:
                actual = run(feeds)
            except Exception as exc:
                text = " ".join(str(exc).split())[:300]
                raise ValidationError(
                    f"{m.name}/{path.name} ({precision}, {runtime}) fails on inputs{where or ' of the data'} where "
                    f"PyTorch works: {type(exc).__name__}: {text}; if a size is fixed in the artifact, see the export "
                    "(dynamic axes of the spec's inputs) or bound the axis: dynamic: {axis: {min, max, multiple_of}}",
                    kind="shape") from None
            if isinstance(m, CompiledPipeline):  # the probabilities (class index: top-1 agreement)
                reference, actual = {k: reference[k] for k in m.compared}, {k: actual[k] for k in m.compared}
            record = compare_outputs(
                reference, actual, atol=tol.atol, rtol=tol.rtol,
                min_top1_agreement=tol.min_top1_agreement, artifact=f"{m.name}/{path.name}{where}",
                precision=precision, runtime=runtime, inputs=probe.source,
            )
            info = {"point": probe.point.label, "sizes": probe.point.to_json(), "source": probe.source}
            parts.append((info if probe.point.sizes else {}, replace(record, artifact=f"{m.name}/{path.name}")))
        return merge_records(parts)

    def _reference(self, m: MemberSpec, probe: Probe) -> dict[str, np.ndarray]:
        try:
            return self.outputs_for(m, probe.key)
        except ValidationError:
            raise
        except Exception as exc:
            text = str(exc).strip().splitlines()
            if probe.key == "parity":
                raise ConversionError(
                    f"{self.members[m.name].where}: the PyTorch model fails on the parity samples "
                    f"({probe.source}): {type(exc).__name__}: {text[-1][:300] if text else ''}; check that forward() "
                    "takes the spec's inputs in order, with the spec's dtypes and shapes") from None
            raise ValidationError(
                f"{m.name}: the PyTorch model itself fails on inputs of sizes {probe.point.describe()} "
                f"({type(exc).__name__}: {text[0][:200] if text else ''}); declare the sizes it takes in the spec: "
                "dynamic: {axis: {min, max, multiple_of}} on the inputs (or the sizes to try: sizes: [...])",
                kind="shape",
            ) from None


# --------------------------------------------------------------------------- what steps make
@dataclass(frozen=True)
class Built:
    artifact: Artifact

    def apply(self, state: BuildState) -> None:
        build = state.members[self.artifact.member]
        build.artifacts(self.artifact.format)[self.artifact.precision] = self.artifact


@dataclass(frozen=True)
class Measured:
    member: str
    stats: list[VariantStats]

    def apply(self, state: BuildState) -> None:
        state.members[self.member].stats = list(self.stats)


@dataclass(frozen=True)
class Selected:
    selections: dict[str, Selection]

    def apply(self, state: BuildState) -> None:
        for name, selection in self.selections.items():
            state.members[name].selection = selection


@dataclass(frozen=True)
class Fitted:
    params: dict[str, Any]

    def apply(self, state: BuildState) -> None:
        state.fitted = dict(self.params)


@dataclass(frozen=True)
class Profiled:
    profile: dict[str, Any] | None

    def apply(self, state: BuildState) -> None:
        state.profile = self.profile


@dataclass(frozen=True)
class Planned:
    plans: list[ModelPlan]

    def apply(self, state: BuildState) -> None:
        state.plans = list(self.plans)


# --------------------------------------------------------------------------- steps
def _reused(m: MemberSpec, precision: str, rec: dict[str, Any], key: str) -> Artifact:
    return Artifact(m.name, precision, ArtifactFormat.ONNX, rec["path"],
                    [ParityRecord.from_dict(r) for r in rec["parity"]], key, rec.get("calibration"), reused=True)


@dataclass
class ReuseMember(BuildStep[BuildState]):
    """Every variant of the member is unchanged: take them (and their stats) from the repository."""

    member: MemberSpec
    records: dict[str, dict[str, Any]]

    def __post_init__(self):
        self.name = f"reuse {self.member.name} (unchanged)"

    def run(self, state: BuildState):
        m = self.member
        made = [Built(_reused(m, p, rec, state.keys.key(m, p))) for p, rec in self.records.items()]
        return [*made, Measured(m.name, [VariantStats(**rec["variant"]) for rec in self.records.values()])]


@dataclass
class ReuseVariant(BuildStep[BuildState]):
    member: MemberSpec
    precision: str
    record: dict[str, Any]

    def __post_init__(self):
        self.name = f"{self.precision} {self.member.name} (unchanged)"

    def run(self, state: BuildState):
        return Built(_reused(self.member, self.precision, self.record, state.keys.key(self.member, self.precision)))


@dataclass
class Export(BuildStep[BuildState]):
    """Load the PyTorch model and export fp32 ONNX, checked against the model's outputs on the
    parity samples; with an unchanged fp32 variant, that variant is taken from the repository
    (the new lower precisions are still checked against PyTorch)."""

    member: MemberSpec
    reuse_fp32: dict[str, Any] | None = None

    def __post_init__(self):
        unchanged = self.reuse_fp32 is not None
        self.name = f"reference {self.member.name} (fp32 unchanged)" if unchanged else f"export {self.member.name}"

    def run(self, state: BuildState):
        m = self.member
        if self.reuse_fp32 is not None:
            return Built(_reused(m, "fp32", self.reuse_fp32, state.keys.key(m, "fp32")))
        model = state.torch_model(m)
        sample = state.inputs_for(m, "parity")
        path = ExportOnnx(model, [x[: max(2, min(len(x), 8))] for x in sample], m.inputs, m.outputs,
                          state.work / m.name / "fp32" / ONNX_FILE, opset=state.spec.opset, name=m.name,
                          keep_debug_info=state.spec.export.keep_debug_info, exporter=state.spec.export.exporter)()
        record = state.check(m, "fp32", path, "onnxruntime-cpu")
        failpoint("after-export")
        return Built(Artifact(m.name, "fp32", ArtifactFormat.ONNX, path, [record], state.keys.key(m, "fp32")))


@dataclass
class LowerPrecision(BuildStep[BuildState]):
    """fp16 (converted) or int8 (calibrated Q/DQ) from the fp32 ONNX, checked against PyTorch."""

    member: MemberSpec
    precision: str
    required: bool = False

    def __post_init__(self):
        self.name = f"{self.precision} {self.member.name}"

    def run(self, state: BuildState):
        m, precision = self.member, self.precision
        source = state.members[m.name].onnx["fp32"].path
        target = state.work / m.name / precision / ONNX_FILE
        calibration = conversion = None
        if precision == "fp16":
            convert = ConvertToFp16(source, target, name=m.name, keep_prefix=_kept(m))
            path = convert()
            if convert.kept_fp32:
                conversion = {"kept_fp32": convert.kept_fp32}
        else:
            options = state.spec.precision.calibration
            samples = state.inputs_for(m, "calibration")
            sizes = [] if state.spec.sources_of(m) else [  # the calibration samples at every size parity tries
                resize_inputs(m.inputs, samples, p.point, options.samples) for p in state.probes[1:]]
            quantize = QuantizeInt8(source, target, samples, [t.name for t in m.inputs], options, name=m.name,
                                    other_sizes=sizes, keep_prefix=_kept(m))
            path = quantize()
            calibration = {**options.model_dump(), "samples_used": quantize.samples_used, "split": "data.calibration",
                           "sizes": [p.point.to_json() for p in state.probes] if quantize.other_sizes else None}
        record = state.check(m, precision, path, "onnxruntime-cpu")
        return Built(Artifact(m.name, precision, ArtifactFormat.ONNX, path, [record], state.keys.key(m, precision),
                              calibration, conversion=conversion))


def _kept(m) -> str | None:
    """Nodes a lower precision leaves as they are: a compiled graph's fusion math (float64, like ops.py)."""
    return FUSION_PREFIX if isinstance(m, CompiledPipeline) else None


@dataclass
class Measure(BuildStep[BuildState]):
    """Top-1 on the labelled splits and in-process speed of every ONNX variant of a member."""

    member: MemberSpec

    def __post_init__(self):
        self.name = f"measure {self.member.name}"

    def run(self, state: BuildState):
        m, spec = self.member, state.spec
        names = [t.name for t in m.inputs]
        paths = {p: a.path for p, a in state.members[m.name].onnx.items()}
        speed: dict[str, float] = {}
        if spec.precision.serve == "auto" or len(paths) > 1:
            speed = compare_throughput(paths, dict(zip(names, state.inputs_for(m, "parity"))),
                                       spec.precision.benchmark_batch_size, max(1, spec.serving.onnxruntime_threads))
        stats = []
        for precision, path in paths.items():
            accuracy = {}
            for split in ("validation", "test"):
                data = state.splits[split]
                if data is not None and data.labels is not None and state.is_scorer(m):
                    accuracy[split] = onnx_accuracy(path, dict(zip(names, state.inputs_for(m, split))), data.labels)
            stats.append(VariantStats(precision, True, path.stat().st_size, accuracy.get("validation"),
                                      accuracy.get("test"), speed.get(precision)))
        return Measured(m.name, stats)


@dataclass
class Engine(BuildStep[BuildState]):
    """A TensorRT engine from one ONNX variant, checked against PyTorch on the GPU."""

    member: MemberSpec
    precision: str
    required: bool = False

    def __post_init__(self):
        self.name = f"engine {self.member.name} {self.precision}"

    def run(self, state: BuildState):
        m, precision = self.member, self.precision
        source = state.members[m.name].onnx.get(precision)
        if source is None:
            raise SkipStep(f"no {precision} ONNX variant of {m.name} to build an engine from")
        profile = state.spec.engine_profile(m)
        trt = state.spec.tensorrt
        path = BuildEngine(source.path, state.work / m.name / f"trt_{precision}" / PLAN_FILE, profile,
                           trt.workspace_mb << 20, trt.timing_cache, name=m.name)()
        record = state.check(m, precision, path, "tensorrt", run=lambda feeds: run_engine(path, feeds, profile.max))
        return Built(Artifact(m.name, precision, ArtifactFormat.PLAN, path, [record], engine=engine_record(profile)))


@dataclass
class TorchScript(BuildStep[BuildState]):
    """A TorchScript file traced from the member's PyTorch model, reloaded from disk and checked
    against the model's fp32 outputs with the precision's tolerances."""

    member: MemberSpec
    precision: str
    required: bool = False

    def __post_init__(self):
        self.name = f"torchscript {self.member.name} {self.precision}"

    def run(self, state: BuildState):
        m, precision = self.member, self.precision
        sample = state.inputs_for(m, "parity")
        path = ExportTorchScript(state.torch_model(m), [x[: max(2, min(len(x), 8))] for x in sample], m.inputs,
                                 m.outputs, state.work / m.name / f"torchscript-{precision}" / TORCHSCRIPT_FILE,
                                 precision, name=m.name, keep_debug_info=state.spec.export.keep_debug_info)()
        outputs = [t.name for t in m.outputs]
        record = state.check(m, precision, path, "torchscript-cpu",
                             run=lambda feeds: run_torchscript(path, [feeds[t.name] for t in m.inputs], outputs))
        return Built(Artifact(m.name, precision, ArtifactFormat.TORCHSCRIPT, path, [record]))


@dataclass
class Compile(BuildStep[BuildState]):
    """``serving.compile``: the members' fp32 ONNX and the fusion math merged into one graph,
    checked against PyTorch (the members' PyTorch outputs fused by ops.py) at every probed size;
    an unchanged compiled graph is taken from the repository. Optional: when it fails, the build
    says why and serves the Triton pipeline (exit code 3, as for any requested variant)."""

    member: CompiledPipeline
    reuse_fp32: dict[str, Any] | None = None
    precision: str = "fp32"
    required: bool = False

    def __post_init__(self):
        self.name = f"compile {self.member.name}" + (" (unchanged)" if self.reuse_fp32 is not None else "")

    def run(self, state: BuildState):
        c, spec = self.member, state.spec
        if self.reuse_fp32 is not None:
            return Built(_reused(c, "fp32", self.reuse_fp32, state.keys.key(c, "fp32")))
        fitted = {k: v for k, v in state.fitted.items() if k in ("weights", "coef", "intercept")}
        params = fusion_params(spec, fitted) if spec.fusion_kind == "classification" else None
        paths = {n: state.members[n].onnx["fp32"].path for n in c.members}
        path = CompilePipeline(spec, paths, params, state.work / c.name / "fp32" / ONNX_FILE, name=c.name)()
        record = state.check(c, "fp32", path, "onnxruntime-cpu")
        return Built(Artifact(c.name, "fp32", ArtifactFormat.ONNX, path, [record], state.keys.key(c, "fp32")))


class CompiledEngine(Engine):
    """A TensorRT engine of a compiled variant; TensorRT has no float64, so the engine is built
    from a copy whose fusion math runs in float32 (checked against PyTorch like any engine)."""

    def run(self, state: BuildState):
        c, precision = self.member, self.precision
        source = state.members[c.name].onnx.get(precision)
        if source is None:
            raise SkipStep(f"no {precision} ONNX variant of {c.name} to build an engine from")
        import onnx

        float32 = state.work / c.name / f"trt_{precision}" / "float32_fusion.onnx"
        float32.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(fusion_in_float32(onnx.load(str(source.path))), str(float32))
        profile, trt = state.spec.engine_profile(c), state.spec.tensorrt
        path = BuildEngine(float32, state.work / c.name / f"trt_{precision}" / PLAN_FILE, profile,
                           trt.workspace_mb << 20, trt.timing_cache, name=c.name)()
        record = state.check(c, precision, path, "tensorrt", run=lambda feeds: run_engine(path, feeds, profile.max))
        return Built(Artifact(c.name, precision, ArtifactFormat.PLAN, path, [record], engine=engine_record(profile)))


class Skip(BuildStep[BuildState]):
    """A step that only reports why something is not built (once, not per model)."""

    required = False

    def __init__(self, name: str, reason: str):
        self.name, self.reason = name, reason

    def run(self, state: BuildState):
        raise SkipStep(self.reason)


class Select(BuildStep[BuildState]):
    name = "select served variants"

    def run(self, state: BuildState):
        spec = state.spec
        selections = {}
        for m in spec.members:
            build = state.members[m.name]
            built = [s.precision for s in build.stats]
            if spec.precision.serve == "auto" and state.is_scorer(m):
                choice = select_variant(m.name, build.stats, spec.precision.accuracy_budget, spec.precision.min_speedup)
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
            selections[m.name] = choice
        return Selected(selections)


class FitFusion(BuildStep[BuildState]):
    """Fit on what Triton will compute: the served variants' outputs on data.validation."""

    def __init__(self, fusion_type: str):
        self.name = f"fit {fusion_type} fusion"

    def run(self, state: BuildState):
        spec, f = state.spec, state.spec.fusion
        labels = state.splits["validation"].labels
        probs = [to_probabilities(state.outputs_for(m, "validation", "onnx")[spec.fused_output(m).name], f.activation)
                 for m in spec.fused_members]
        if f.type == "weighted_mean":
            return Fitted(fit_weights(probs, labels, f.metric))
        return Fitted(fit_stacking(probs, labels, spec.num_classes, f.regularization, f.max_iter))


class Profile(BuildStep[BuildState]):
    """The reference profile of the pipeline's traffic metrics on data.validation, from what
    Triton will compute (served variants, fitted fusion); optional: without it the pipeline
    still publishes its metrics, with no reference to compare them with."""

    name = "reference profile (monitoring)"
    required = False

    def run(self, state: BuildState):
        spec = state.spec
        fitted = {k: v for k, v in state.fitted.items() if k in ("weights", "coef", "intercept")}
        fusion = fusion_params(spec, fitted) if spec.fusion_kind == "classification" else None
        return Profiled(pipeline_profile(spec, state.splits["validation"].inputs,
                                         lambda m: state.outputs_for(m, "validation", "onnx"), fusion))


class Write(BuildStep[BuildState]):
    """Plan every model of the pipeline from what was built and stage it with its record."""

    name = "write repository"

    def __init__(self, writer: RepositoryWriter):
        self.writer = writer

    def run(self, state: BuildState):
        members = state.members
        built = {n: [s.precision for s in b.stats] for n, b in members.items()}
        served = {n: b.selection.precision for n, b in members.items() if b.selection}
        engines = {n: list(b.engines) for n, b in members.items() if b.engines}
        torchscript = {n: list(b.torch) for n, b in members.items()}
        fitted = {k: v for k, v in state.fitted.items() if k in ("weights", "coef", "intercept")}
        plans = plan_pipeline(state.spec, state.target, built, served, engines, fitted, state.external, torchscript,
                              profile=state.profile)
        check_graph(plans)
        selections = {n: b.selection for n, b in members.items() if b.selection}
        for plan in plans:
            if plan.format == ArtifactFormat.FUSION and "input_checks" in plan.config.parameters:
                files, record = guard_files(), {}
            elif plan.format == ArtifactFormat.FUSION:
                files, record = fusion_files(state.fitted)
            elif plan.format == ArtifactFormat.ENSEMBLE:
                files, record = {}, served_record(selections)
            elif plan.format == ArtifactFormat.BLS:
                files, record = pipeline_files(state.spec.fusion.type, selections)
            else:
                build = members[plan.member]
                table = build.artifacts(plan.format)
                stats = next((s for s in build.stats if s.precision == plan.precision), None) \
                    if plan.format == ArtifactFormat.ONNX else None
                files, record = member_files(plan, table[plan.precision], stats, state.target)
                if plan.kind == ModelKind.COMPILED:
                    record["compiled"] = compiled_record(state, plan)
            self.writer.add_model(plan, files, record=record)
        return Planned(plans)


def compiled_record(state: BuildState, plan: ModelPlan) -> dict[str, Any]:
    """What a compiled model merged, and whether it is the variant the pipeline's compiled form
    serves: fp32, or the fixed ``precision.serve`` when that variant was built."""
    c = state.members[plan.member].spec
    built = state.members[plan.member].onnx
    serve = state.spec.precision.serve
    served = serve if serve in built else "fp32"
    return {"pipeline": state.spec.name, "fusion": c.fusion, "members": list(c.members),
            "serves": plan.format == ArtifactFormat.ONNX and plan.precision == served}


# --------------------------------------------------------------------------- build
@dataclass(frozen=True)
class FailedVariant:
    """A requested precision variant (ONNX or TensorRT engine) that could not be built."""

    member: str
    precision: str
    model: str        # the model name it would have had
    reason: str
    optional: bool    # listed in precision.optional
    format: str = "onnx"

    def summary(self) -> str:
        """One line: which variant and why (the last line of the step's message)."""
        lines = [ln.strip() for ln in self.reason.splitlines() if ln.strip()]
        why = lines[0] if lines and not lines[0].startswith("Traceback") else (lines[-1] if lines else "unknown")
        kind = "TensorRT engine" if self.format == "engine" else "variant"
        return f"{self.precision} {kind} of '{self.member}' ({self.model}) not built: {why}"


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
    failed_variants: list[FailedVariant] = field(default_factory=list)
    served_format: ArtifactFormat = ArtifactFormat.ONNX  # the artifact format the pipeline's member steps call
    notes: list[str] = field(default_factory=list)  # e.g. a config 'tritonfleet tune' committed, kept or replaced
    candidates: dict[str, list[int]] = field(default_factory=dict)  # --candidate: changed model -> versions still served

    @property
    def missing_required(self) -> list[FailedVariant]:
        """Requested variants that could not be built and are not ``precision.optional``."""
        return [f for f in self.failed_variants if not f.optional]

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
    candidate: bool = False,
) -> BuildResult:
    """Build ``spec`` into its repository. ``candidate``: models that change get their new
    version beside the old ones but keep serving what they serve now, until ``tritonfleet promote``."""
    target = target or spec.target
    if target not in TARGETS:
        raise SpecError(f"unknown target '{target}'; choose one of: {', '.join(TARGETS)}")
    repo = Path(output_dir).resolve() if output_dir else spec.output_dir
    recovered = recover(repo)  # a commit a crash interrupted: undo (or finish) it first

    # ---- everything that needs no heavy work, before any work
    external = resolve_external(spec, repo)
    check_graph(plan_pipeline(spec, target, external=external))
    splits = {name: load_split(spec, name) for name in SPLITS}
    probes = parity_probes(spec)

    with RepositoryWriter(repo, spec.name) as writer:
        writer.check_names([p.config.name for p in plan_pipeline(spec, target, external=external)])
        state = BuildState(spec, target, writer.staging / ".work", splits, probes, external,
                           ArtifactKeys(spec, target))
        for where, m in _models(spec):
            state.members[m.name] = MemberBuild(m, where)
        compiled = compiled_pipeline(spec)
        if compiled is not None:
            state.members[compiled.name] = MemberBuild(compiled, f"serving.compile ({compiled.name})")
        try:
            steps = plan_steps(state, read_manifest_dict(repo), writer)
            results = run_steps(steps, state, progress=progress, title=f"build {spec.name} ({target})")
            failpoint("after-steps")
            shutil.rmtree(state.work, ignore_errors=True)
            selections = {n: b.selection for n, b in state.members.items() if b.selection}
            monitoring = {"profile": state.profile} if publishes_metrics(spec) else None
            removed = writer.commit(pipeline_record(spec, target, repo, spec_path, splits, selections, state.fitted,
                                                    monitoring), candidate=candidate)
        except OSError as exc:  # disk full, permissions: the journal restores the repository
            recover(repo)
            raise RepositoryError(
                f"could not write while building into {repo}: {exc.strerror or exc} "
                f"({exc.filename or 'a temporary file'}); nothing was changed. Free space or fix permissions "
                "and build again."
            ) from None
    members = state.members
    failed = failed_variants(steps, results, spec.precision.optional)
    return BuildResult(repo, spec.name, target, state.plans,
                       {n: b.parity for n, b in members.items()}, {n: b.stats for n, b in members.items()},
                       {n: b.selection for n, b in members.items() if b.selection}, state.fitted, results, removed,
                       writer.actions, recovered, failed, ArtifactFormat(spec.formats.serve), notes=writer.notes,
                       candidates=writer.pinned)


def failed_variants(steps: list[BuildStep], results: list[StepResult], optional: list[str]) -> list[FailedVariant]:
    """The requested variants (lower precisions, engines, compiled variants) whose step failed."""
    return [FailedVariant(step.member.name, step.precision, variant_name(step.member, step.precision),
                          result.message.strip(), step.precision in optional,
                          "engine" if isinstance(step, Engine) else "onnx")
            for step, result in zip(steps, results)
            if isinstance(step, (LowerPrecision, Engine, Compile)) and result.status is Status.FAIL]


def plan_steps(state: BuildState, manifest: dict[str, Any], writer: RepositoryWriter) -> list[BuildStep]:
    """The steps of one build, in order."""
    spec = state.spec
    engines = _engine_plan(spec, state.target)
    steps: list[BuildStep] = []
    for _, m in _models(spec):
        steps += model_steps(state, m, manifest, writer, engines)
    if isinstance(engines, str):
        steps.append(Skip("tensorrt engines", engines))
    if spec.formats.torchscript and any("int8" in spec.precisions_of(m) for _, m in _models(spec)):
        steps.append(Skip("torchscript int8", "TorchScript variants are fp32 and fp16; int8 is served as "
                                              "ONNX Q/DQ (onnxruntime, TensorRT)"))
    steps.append(Select())
    f = spec.fusion
    if f.type == "stacking" or (f.type == "weighted_mean" and f.weights == "auto"):
        steps.append(FitFusion(f.type))
    if publishes_metrics(spec) and state.splits.get("validation") is not None:
        steps.append(Profile())
    steps += compile_steps(state, manifest, writer, engines)
    steps.append(Write(writer))
    return steps


def model_steps(state: BuildState, m: MemberSpec, manifest: dict[str, Any], writer: RepositoryWriter,
                engines: bool | str | None) -> list[BuildStep]:
    """One model's steps: every variant reused when unchanged, else export (or reuse fp32), lower
    precisions (or reuse them), measure; then its TorchScript variants and TensorRT engines."""
    spec = state.spec
    precisions = spec.precisions_of(m)
    records = {} if spec.tensorrt.engines else {
        p: r for p in precisions if (r := reusable_record(manifest, writer.repo, m, p, state.keys.key(m, p)))}
    if len(records) == len(precisions):
        return [ReuseMember(m, records), *torch_steps(spec, m)]
    steps: list[BuildStep] = [Export(m, records.get("fp32"))]
    steps += [ReuseVariant(m, p, records[p]) if p in records else LowerPrecision(m, p) for p in precisions[1:]]
    steps.append(Measure(m))
    steps += torch_steps(spec, m)
    if engines is True:
        steps += [Engine(m, p) for p in precisions]
    return steps


def compile_steps(state: BuildState, manifest: dict[str, Any], writer: RepositoryWriter,
                  engines: bool | str | None) -> list[BuildStep]:
    """``serving.compile``: merge (or reuse), lower precisions, measure and engines of the compiled
    model, like a member's; for patterns with no one-graph form, one line saying so."""
    spec = state.spec
    if not spec.serving.compile:
        return []
    refusal = compile_refusal(spec)
    if refusal is not None:
        return [Skip("compile", refusal)]
    c = compiled_pipeline(spec)
    precisions = spec.precisions_of(c)
    f = spec.fusion
    fitted_on_auto = spec.precision.serve == "auto" and (
        f.type == "stacking" or (f.type == "weighted_mean" and f.weights == "auto"))  # fitted on a measured choice
    records = {} if spec.tensorrt.engines or fitted_on_auto else {
        p: r for p in precisions if (r := reusable_record(manifest, writer.repo, c, p, state.keys.key(c, p)))}
    if len(records) == len(precisions):
        return [ReuseMember(c, records)]
    steps: list[BuildStep] = [Compile(c, records.get("fp32"))]
    steps += [ReuseVariant(c, p, records[p]) if p in records else LowerPrecision(c, p) for p in precisions[1:]]
    steps.append(Measure(c))
    if engines is True:
        steps += [CompiledEngine(c, p) for p in precisions]
    return steps


def torch_steps(spec: PipelineSpec, m: MemberSpec) -> list[BuildStep]:
    """TorchScript variants of a member; fp32 is required (the spec asked for the format), and
    so is the precision the pipeline serves when it serves TorchScript."""
    served = spec.precision.serve if spec.formats.serve == "torchscript" else None
    return [TorchScript(m, p, required=p in ("fp32", served)) for p in torch_precisions(spec, m)]


def _models(spec: PipelineSpec):
    for i, m in enumerate(spec.members):
        yield f"members[{i}] ({m.name}).model", m
    for i, m in enumerate(spec.baselines):
        yield f"baselines[{i}] ({m.name}).model", m


def _engine_plan(spec: PipelineSpec, target: str) -> bool | str | None:
    """True: build engines; a string: why not (reported once); None: not asked."""
    if not spec.tensorrt.engines:
        return None
    if target != "ngc":
        return "TensorRT engines are served by the ngc target only; build with --target ngc"
    if tensorrt_version() is None:
        return f"TensorRT is not installed: engine variants skipped, ONNX variants built; {INSTALL_HINT}"
    return True


def check_graph(plans: list[ModelPlan]) -> None:
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
