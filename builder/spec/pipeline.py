"""The pipeline spec: members, fusion, serving and data of one ``ensemble_configs/*.yaml``.

:class:`PipelineSpec` is the one validated schema; its cross-field checks report every
problem of a spec at once (the loader adds each one's path in the YAML).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, model_validator

from tritonfleet.builder.spec.axes import EngineProfile, engine_axes, engine_problems
from tritonfleet.builder.spec.common import ModelName, ResolvedPath, _Strict
from tritonfleet.builder.spec.distillation import DistillationSpec, distillation_problems
from tritonfleet.builder.spec.formats import FormatSpec, check_formats
from tritonfleet.builder.spec.fusion import FusionSpec, StageRef
from tritonfleet.builder.spec.models import MemberSpec, TensorSpec
from tritonfleet.builder.spec.monitoring import MonitoringSpec
from tritonfleet.builder.spec.options import (
    BatchProfile,
    DataSpec,
    ExportOptions,
    ParitySpec,
    PrecisionSpec,
    Serving,
    TensorRTSpec,
)
from tritonfleet.builder.spec.promotion import PromotionPolicy, promotion_problems
from tritonfleet.clients.dtypes import FLOAT_DTYPES


class PipelineSpec(_Strict):
    name: ModelName
    description: str = ""
    target: Literal["local", "ngc"] = "local"
    output_dir: ResolvedPath = Path("../model_repository")
    opset: int = Field(default=18, ge=13, le=23)
    export: ExportOptions = Field(default_factory=ExportOptions)
    serving: Serving = Field(default_factory=Serving)
    members: list[MemberSpec] = Field(min_length=1, max_length=64)
    fusion: FusionSpec
    baselines: list[MemberSpec] = Field(default_factory=list)
    data: DataSpec | None = None
    parity: ParitySpec = Field(default_factory=ParitySpec)
    precision: PrecisionSpec = Field(default_factory=PrecisionSpec)
    tensorrt: TensorRTSpec = Field(default_factory=TensorRTSpec)
    formats: FormatSpec = Field(default_factory=FormatSpec)  # onnx, plus torchscript members
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)  # metrics for tritonfleet monitor
    promotion: PromotionPolicy = Field(default_factory=PromotionPolicy)  # the gate of tritonfleet promote
    distillation: DistillationSpec | None = None  # a student trained on the ensemble (tritonfleet distill)

    _source_dir: Path | None = PrivateAttr(default=None)  # the folder relative paths were resolved against

    @property
    def source_dir(self) -> Path | None:
        return self._source_dir

    def portable_dump(self) -> dict[str, Any]:
        """The spec as JSON with every path relative to the spec's folder: the same spec
        built from another directory or machine dumps to the same bytes."""
        base = self._source_dir

        def relative(value: Any) -> Any:
            if isinstance(value, Path) and base is not None and value.is_absolute():
                return Path(os.path.relpath(value, base)).as_posix()
            if isinstance(value, Path):
                return value.as_posix()
            if isinstance(value, dict):
                return {k: relative(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [relative(v) for v in value]
            return value

        data = relative(self.model_dump(mode="python"))
        models = [m["model"] for group in ("members", "baselines") for m in data[group]]
        if data.get("distillation"):
            models.append(data["distillation"]["student"])
        for model in models:  # a file.py:Class architecture holds a path too
            arch = model.get("architecture")
            if arch and ".py:" in arch and base is not None:
                target, _, cls = arch.rpartition(":")
                model["architecture"] = f"{relative(Path(target))}:{cls}"
        return data

    # ---- derived names and views
    @property
    def fusion_kind(self) -> str:
        return self.fusion.kind

    @property
    def fusion_model_name(self) -> str | None:
        """The Python-backend fusion step of an ensemble (None for BLS and chain pipelines)."""
        return f"{self.name}_fusion" if self.fusion_kind in ("classification", "detection") else None

    @property
    def compiled_model_name(self) -> str | None:
        """The compiled pipeline (``serving.compile``: members and fusion in one ONNX graph); None when
        not asked for or when the pattern has no one-graph form (cascade, route, detection)."""
        compilable = self.fusion_kind in ("classification", "chain")
        return f"{self.name}_compiled" if self.serving.compile and compilable else None

    @property
    def all_models(self) -> list[MemberSpec]:
        return [*self.members, *self.baselines]

    def model(self, name: str) -> MemberSpec | None:
        return next((m for m in self.all_models if m.name == name), None)

    def max_batch_size_of(self, member: MemberSpec) -> int:
        return member.max_batch_size or self.serving.max_batch_size

    def engine_profile(self, member: MemberSpec) -> EngineProfile:
        """The TensorRT optimization profile of ``member``'s engines: the batch and every dynamic axis."""
        batch = BatchProfile.for_serving(self.max_batch_size_of(member),
                                         tuple(self.serving.dynamic_batching.preferred_batch_sizes),
                                         self.tensorrt.opt_batch_size)
        return EngineProfile(batch, engine_axes(member.inputs))

    def instances_of(self, member: MemberSpec) -> int:
        return member.instances or self.serving.instances

    def precisions_of(self, member: MemberSpec) -> list[str]:
        """Variants built for ``member``: fp32 always first (the reference every drop is against)."""
        wanted = member.precisions or self.precision.variants
        return ["fp32", *[p for p in wanted if p != "fp32"]]

    def device_for(self, target: str) -> str:
        if self.serving.device != "auto":
            return self.serving.device
        return "gpu" if target == "ngc" else "cpu"

    @property
    def inputs(self) -> list[TensorSpec]:
        """The pipeline's inputs: those of the first member that is not chained."""
        return next(m for m in self.members if not m.inputs_from).inputs

    def sources_of(self, member: MemberSpec) -> dict[str, tuple[str, str]]:
        """Chained inputs: input name -> (source member, source output)."""
        return {name: tuple(src.split(".")) for name, src in member.inputs_from.items()}

    @property
    def leaves(self) -> list[MemberSpec]:
        """Members no other member reads from."""
        fed = {src.split(".")[0] for m in self.members for src in m.inputs_from.values()}
        return [m for m in self.members if m.name not in fed]

    @property
    def fused_members(self) -> list[MemberSpec]:
        """Members whose outputs the fusion step combines, in order."""
        if self.fusion_kind not in ("classification", "detection"):
            return []
        names = self.fusion.members
        return self.leaves if names is None else [m for n in names if (m := self.model(n)) is not None]

    def fused_output(self, member: MemberSpec) -> TensorSpec:
        wanted = getattr(self.fusion, "source", None)
        if wanted is None:
            return member.outputs[0]
        return next(t for t in member.outputs if t.name == wanted)

    def stage_output(self, ref: StageRef) -> TensorSpec | None:
        """Output a BLS stage answers with, when the stage is a model of this spec."""
        m = self.model(ref.model)
        if m is None:
            return None
        return m.outputs[0] if ref.output is None else next((t for t in m.outputs if t.name == ref.output), None)

    @property
    def num_classes(self) -> int | None:
        if self.fusion_kind == "classification":
            return self.fused_output(self.fused_members[0]).shape[0]
        if self.fusion_kind == "bls":
            outs = [o for r in self.fusion.refs if (o := self.stage_output(r)) is not None]
            return outs[0].shape[0] if outs else None
        return None

    # ---- cross-field checks
    @model_validator(mode="after")
    def _check_pipeline(self) -> PipelineSpec:
        problems: list[str] = []
        names = [m.name for m in self.all_models]
        reserved = {self.name, self.fusion_model_name, self.compiled_model_name} - {None}
        for i, name in enumerate(names):
            if names.index(name) != i:
                problems.append(f"model name '{name}' is used twice (members and baselines); give each its own name")
            if name in reserved:
                problems.append(f"model name '{name}' clashes with the pipeline's own models")
        for m in self.all_models:
            if m.max_batch_size is not None and m.max_batch_size < self.serving.max_batch_size:
                problems.append(
                    f"'{m.name}' max_batch_size {m.max_batch_size} is below the pipeline's "
                    f"serving.max_batch_size {self.serving.max_batch_size}; the ensemble would "
                    "send batches it cannot take"
                )
        too_big = [b for b in self.serving.dynamic_batching.preferred_batch_sizes
                   if b > self.serving.max_batch_size]
        if too_big:
            problems.append(
                f"serving.dynamic_batching.preferred_batch_sizes {too_big} exceed "
                f"serving.max_batch_size {self.serving.max_batch_size}"
            )
        problems += self._check_graph()
        problems += engine_problems(self.all_models) if self.tensorrt.engines else []
        problems += promotion_problems(self)
        problems += distillation_problems(self)
        if not problems:  # the checks below assume a sound graph
            problems += self._check_precisions()
            problems += check_formats(self)
            problems += {"classification": self._check_classification, "detection": self._check_detection,
                         "bls": self._check_bls, "chain": self._check_chain}[self.fusion_kind]()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _check_graph(self) -> list[str]:
        problems = []
        roots = [m for m in self.members if not m.inputs_from]
        if not roots:
            return ["at least one member must take the pipeline input (no inputs_from)"]
        first = roots[0]
        for m in [*roots[1:], *self.baselines]:
            if m.inputs_from:
                problems.append(f"baseline '{m.name}' cannot use inputs_from; baselines take the pipeline input")
            elif [t.signature() for t in m.inputs] != [t.signature() for t in first.inputs]:
                problems.append(
                    f"inputs of '{m.name}' ({_describe(m.inputs)}) differ from inputs of "
                    f"'{first.name}' ({_describe(first.inputs)}); every model fed by the pipeline "
                    "must take its one input signature"
                )
        seen: dict[str, MemberSpec] = {}
        for m in self.members:
            for name, (src, out) in self.sources_of(m).items():
                producer = seen.get(src)
                if producer is None:
                    where = "comes later" if self.model(src) else "is not a member"
                    problems.append(f"'{m.name}'.inputs_from['{name}'] reads '{src}', which {where}; "
                                    "a chained member reads from members listed before it")
                    continue
                tensor = next((t for t in producer.outputs if t.name == out), None)
                consumer = next(t for t in m.inputs if t.name == name)
                if tensor is None:
                    problems.append(f"'{m.name}'.inputs_from['{name}']: '{src}' has no output '{out}' "
                                    f"(outputs: {', '.join(t.name for t in producer.outputs)})")
                elif tensor.signature() != consumer.signature():
                    problems.append(f"'{src}.{out}' produces {tensor.dtype}{list(tensor.shape)} but "
                                    f"'{m.name}.{name}' expects {consumer.dtype}{list(consumer.shape)}")
            seen[m.name] = m
        return problems

    def _fused(self) -> tuple[list[MemberSpec], list[str]]:
        problems = []
        names = self.fusion.members or []
        for n in names:
            if self.model(n) is None or self.model(n) in self.baselines:
                problems.append(f"fusion.members names '{n}', which is not a member")
        if len(set(names)) != len(names):
            problems.append(f"fusion.members lists a member twice: {names}")
        return self.fused_members, problems

    def _check_classification(self) -> list[str]:
        fused, problems = self._fused()
        f = self.fusion
        outputs = []
        for m in fused:
            if f.source is not None and f.source not in {t.name for t in m.outputs}:
                problems.append(f"fusion.source '{f.source}' is not an output of '{m.name}' "
                                f"(outputs: {', '.join(t.name for t in m.outputs)})")
                continue
            out = self.fused_output(m)
            if out.dtype not in FLOAT_DTYPES:
                problems.append(f"output '{out.name}' of '{m.name}' must be a float tensor to fuse")
            if len(out.shape) != 1 or out.shape[0] < 1:
                problems.append(f"output '{out.name}' of '{m.name}' has shape {list(out.shape)}; "
                                f"{f.type} fusion needs per-sample class scores of shape [classes]")
            outputs.append((m, out))
        for m, out in outputs[1:]:
            ref_m, ref = outputs[0]
            if out.shape != ref.shape:
                problems.append(f"output '{out.name}' of '{m.name}' has shape {list(out.shape)} but "
                                f"'{ref.name}' of '{ref_m.name}' has shape {list(ref.shape)}; "
                                f"{f.type} fusion needs identical member output shapes")
        weights = getattr(f, "weights", None)
        if isinstance(weights, list) and len(weights) != len(fused):
            problems.append(f"fusion.weights has {len(weights)} values for {len(fused)} fused members")
        if f.type == "rescore" and len(fused) != 2:
            problems.append(f"rescore fuses exactly two members (proposer, rescorer), not {len(fused)}; "
                            "name them in fusion.members")
        if f.type == "rescore" and outputs and f.top_k > outputs[0][1].shape[0]:
            problems.append(f"fusion.top_k {f.top_k} exceeds the {outputs[0][1].shape[0]} classes")
        needs_fit = f.type == "stacking" or (f.type == "weighted_mean" and f.weights == "auto")
        if needs_fit and (self.data is None or self.data.validation is None or self.data.validation.labels is None):
            problems.append(f"{f.type} fusion is fitted on data.validation, which needs inputs and labels")
        return problems

    def _check_detection(self) -> list[str]:
        fused, problems = self._fused()
        t = self.fusion.tensors
        for m in fused:
            outs = {o.name: o for o in m.outputs}
            for name, ndim, floating in ((t.boxes, 2, True), (t.scores, 1, True), (t.labels, 1, False),
                                         (t.count, 1, False)):
                o = outs.get(name)
                if o is None:
                    problems.append(f"detection member '{m.name}' has no output '{name}'")
                elif len(o.shape) != ndim or (o.dtype in FLOAT_DTYPES) != floating:
                    kind = "float" if floating else "integer"
                    problems.append(f"output '{name}' of '{m.name}' must be a {ndim}-D {kind} tensor "
                                    f"(got {o.dtype}{list(o.shape)})")
            if t.boxes in outs and outs[t.boxes].shape[-1:] != (4,):
                problems.append(f"output '{t.boxes}' of '{m.name}' must be [K, 4] (x1, y1, x2, y2)")
            if t.count in outs and outs[t.count].shape != (1,):
                problems.append(f"output '{t.count}' of '{m.name}' must have shape [1]")
        if self.fusion.weights is not None and len(self.fusion.weights) != len(fused):
            problems.append(f"fusion.weights has {len(self.fusion.weights)} values for {len(fused)} fused members")
        return problems

    def _check_bls(self) -> list[str]:
        problems = []
        own = []
        for ref in self.fusion.refs:
            m = self.model(ref.model)
            if m is None:
                continue  # a model already in the repository: checked at build time
            if m.inputs_from:
                problems.append(f"'{m.name}' takes chained inputs; a {self.fusion.type} stage takes the pipeline input")
            out = self.stage_output(ref)
            if out is None:
                problems.append(f"'{m.name}' has no output '{ref.output}'")
            elif len(out.shape) != 1 or out.dtype not in FLOAT_DTYPES:
                problems.append(f"output '{out.name}' of '{m.name}' must be float class scores [classes]")
            else:
                own.append((m, out))
        if not own and not problems:
            problems.append(f"{self.fusion.type} needs at least one stage that is a model of this spec")
        for m, out in own[1:]:
            if out.shape != own[0][1].shape:
                problems.append(f"'{m.name}' outputs {list(out.shape)} classes but '{own[0][0].name}' "
                                f"{list(own[0][1].shape)}")
        return problems

    def _check_chain(self) -> list[str]:
        name = self.fusion.member
        if name is not None and (self.model(name) is None or self.model(name) in self.baselines):
            return [f"fusion.member '{name}' is not a member"]
        return []

    def _check_precisions(self) -> list[str]:
        problems = []
        serve = self.precision.serve
        for m in self.members:
            if serve not in ("auto", "fp32") and serve not in self.precisions_of(m):
                problems.append(
                    f"precision.serve is {serve} but member '{m.name}' builds only "
                    f"{', '.join(self.precisions_of(m))}; add {serve} to its precisions"
                )
        if any("int8" in self.precisions_of(m) for m in self.all_models):
            if self.data is None or self.data.calibration is None:
                problems.append(
                    "int8 variants need calibration samples: add data.calibration "
                    "({inputs: <array name>}) pointing at real, representative inputs"
                )
        if self.precision.serve == "auto" and (self.data is None or self.data.validation is None
                                               or self.data.validation.labels is None):
            problems.append("precision.serve: auto measures accuracy drops on data.validation, "
                            "which needs inputs and labels")
        return problems


def _describe(tensors: list[TensorSpec]) -> str:
    return ", ".join(f"{t.name}:{t.dtype}{list(t.shape)}" for t in tensors)


