"""The pipeline spec: one validated schema for everything in ``ensemble_configs/*.yaml``.

A spec names the member models (PyTorch sources and tensor signatures), how they are
fused, how Triton serves them and which data validates them. :func:`load_spec` turns a
YAML file into a frozen :class:`PipelineSpec` or raises one :class:`SpecError` listing
every problem with the field path (``members[1] (cnn_b).model.checkpoint``) and a hint.

Relative paths are resolved against the folder of the spec file.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError

from builder.dtypes import DTYPE_NAMES, FLOAT_DTYPES
from builder.errors import SpecError

# Triton accepts almost any folder name; tritonfleet keeps names that are safe as a
# single path component on every OS and in URLs: no separators, no dots, no "..".
MODEL_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
TENSOR_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$"
MAX_BATCH_LIMIT = 4096

ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
TensorName = Annotated[str, Field(pattern=TENSOR_NAME_PATTERN)]
DType = Literal[DTYPE_NAMES]  # type: ignore[valid-type]
Precision = Literal["fp32", "fp16", "int8"]


# --------------------------------------------------------------------------- paths
def _resolve(path: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    path = path.expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base) / path
    return path.resolve()


def _existing_file(path: Path, info: ValidationInfo) -> Path:
    resolved = _resolve(path, info)
    if not resolved.is_file():
        raise ValueError(
            f"file not found: {resolved} (relative paths are resolved against the spec's folder)"
        )
    return resolved


ExistingFile = Annotated[Path, AfterValidator(_existing_file)]


def _architecture(value: str, info: ValidationInfo) -> str:
    """``pkg.module:Class`` stays; ``file.py:Class`` gets an absolute, existing path."""
    target, sep, class_name = value.rpartition(":")
    if not sep or not target or not class_name.isidentifier():
        raise ValueError(
            f"'{value}' must look like 'package.module:Class' or 'path/to/file.py:Class'"
        )
    if target.endswith(".py"):
        return f"{_existing_file(Path(target), info)}:{class_name}"
    return value


Architecture = Annotated[str, AfterValidator(_architecture)]
ResolvedPath = Annotated[Path, AfterValidator(_resolve)]


class _Strict(BaseModel):
    """Frozen model that rejects unknown keys (reported with a did-you-mean hint)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- tensors
class TensorSpec(_Strict):
    """One input or output of a model, shapes *without* the batch dimension."""

    name: TensorName
    dtype: DType = "float32"
    shape: tuple[int, ...] = Field(min_length=0, max_length=8)

    @model_validator(mode="after")
    def _check_dims(self) -> TensorSpec:
        if any(d == 0 or d < -1 for d in self.shape):
            raise ValueError(
                f"shape {list(self.shape)} of '{self.name}' must hold positive sizes or -1 "
                "(variable); leave the batch dimension out"
            )
        return self

    def signature(self) -> tuple[str, tuple[int, ...]]:
        return (self.dtype, self.shape)


# --------------------------------------------------------------------------- models
class ModelSource(_Strict):
    """Where the PyTorch model comes from: exactly one of three forms.

    * ``architecture`` (``package.module:Class`` or ``path/file.py:Class``) plus
      ``kwargs`` and a ``checkpoint`` holding its ``state_dict``;
    * ``torchscript``: a ``torch.jit.save`` file;
    * ``exported_program``: a ``torch.export.save`` file (export it with a dynamic batch).
    """

    architecture: Architecture | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: ExistingFile | None = None
    torchscript: ExistingFile | None = None
    exported_program: ExistingFile | None = None

    @model_validator(mode="after")
    def _exactly_one_form(self) -> ModelSource:
        forms = [
            name
            for name, present in (
                ("architecture", self.architecture is not None or self.checkpoint is not None),
                ("torchscript", self.torchscript is not None),
                ("exported_program", self.exported_program is not None),
            )
            if present
        ]
        if len(forms) != 1:
            raise ValueError(
                "give exactly one model source: 'architecture' + 'checkpoint', "
                f"'torchscript' or 'exported_program' (got {', '.join(forms) or 'none'})"
            )
        if forms == ["architecture"]:
            if self.architecture is None or self.checkpoint is None:
                raise ValueError("'architecture' and 'checkpoint' must be given together")
        elif self.kwargs:
            raise ValueError("'kwargs' only applies to 'architecture'")
        return self

    @property
    def kind(self) -> str:
        if self.torchscript is not None:
            return "torchscript"
        if self.exported_program is not None:
            return "exported_program"
        return "state_dict"

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.checkpoint, self.torchscript, self.exported_program) if p)


class MemberSpec(_Strict):
    """A model served on its own and, for ``members``, fed into the fusion step."""

    name: ModelName
    model: ModelSource
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    max_batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH_LIMIT)
    instances: int | None = Field(default=None, ge=1, le=64)
    precisions: list[Precision] | None = Field(default=None, min_length=1)  # default: precision.variants
    # chaining: input name -> "<earlier member>.<its output>"; inputs not listed take the pipeline input
    inputs_from: dict[TensorName, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_tensor_names(self) -> MemberSpec:
        names = [t.name for t in (*self.inputs, *self.outputs)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tensor names must be unique within a model: {', '.join(dupes)}")
        if self.precisions and len(set(self.precisions)) != len(self.precisions):
            raise ValueError(f"precisions listed twice: {self.precisions}")
        inputs = {t.name for t in self.inputs}
        for name, source in self.inputs_from.items():
            if name not in inputs:
                raise ValueError(f"inputs_from maps '{name}', which is not one of the inputs ({', '.join(inputs)})")
            if source.count(".") != 1 or not all(source.split(".")):
                raise ValueError(f"inputs_from['{name}'] = '{source}' must look like '<member>.<output>'")
        if self.inputs_from and len(self.inputs_from) != len(self.inputs):
            raise ValueError("a chained member takes every input from other members: map all of "
                             f"{', '.join(sorted(inputs))} in inputs_from")
        return self


# --------------------------------------------------------------------------- fusion
class FusionOutputs(_Strict):
    probabilities: TensorName = "probabilities"
    class_index: TensorName = "class_index"


class _ClassScores(_Strict):
    """Fusions of per-member class scores ``[classes]`` into probabilities and a class."""

    activation: Literal["softmax", "none"] = "softmax"  # softmax: members output logits
    source: TensorName | None = None  # member output to fuse; default: each member's first
    members: list[ModelName] | None = Field(default=None, min_length=1)  # default: the leaves
    outputs: FusionOutputs = Field(default_factory=FusionOutputs)

    kind: ClassVar[str] = "classification"


def _check_weight_list(weights: list[float] | None) -> None:
    if weights is None:
        return
    if any(not math.isfinite(w) or w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ValueError(f"weights must be finite, >= 0 and not all zero (got {weights})")


class MeanFusion(_ClassScores):
    """Arithmetic mean of the members' probabilities (soft voting)."""

    type: Literal["mean"]


class GeometricMeanFusion(_ClassScores):
    """Normalised geometric mean of the members' probabilities."""

    type: Literal["geometric_mean"]


class WeightedMeanFusion(_ClassScores):
    """Weighted mean; ``weights: auto`` fits them on data.validation by ``metric``:
    accuracy -> w_i proportional to accuracy_i; log_loss -> w_i proportional to 1 / log_loss_i."""

    type: Literal["weighted_mean"]
    weights: list[float] | Literal["auto"] = "auto"
    metric: Literal["accuracy", "log_loss"] = "accuracy"

    @model_validator(mode="after")
    def _check(self) -> WeightedMeanFusion:
        _check_weight_list(None if self.weights == "auto" else self.weights)
        return self


class VoteFusion(_ClassScores):
    """Majority vote (``hard``: ties to the higher summed probability, then the lower class)
    or ``soft`` vote (weighted mean of probabilities)."""

    type: Literal["vote"]
    mode: Literal["hard", "soft"] = "hard"
    weights: list[float] | None = None

    @model_validator(mode="after")
    def _check(self) -> VoteFusion:
        _check_weight_list(self.weights)
        return self


class StackingFusion(_ClassScores):
    """Multinomial logistic regression on the members' probabilities, fitted on
    data.validation at build time; coefficients stored as JSON beside the fusion model."""

    type: Literal["stacking"]
    regularization: float = Field(default=1.0, gt=0)  # inverse L2 strength (sklearn's C)
    max_iter: int = Field(default=1000, ge=10, le=100_000)


class RescoreFusion(_ClassScores):
    """The first fused member proposes its ``top_k`` classes, the second re-ranks them:
    ``alpha * p_first + (1 - alpha) * p_second`` on the candidates."""

    type: Literal["rescore"]
    top_k: int = Field(default=3, ge=1)
    alpha: float = Field(default=0.5, ge=0, le=1)


class DetectionTensors(_Strict):
    """Names of the padded detection tensors: members output them, the fusion too."""

    boxes: TensorName = "boxes"    # [K, 4] float (x1, y1, x2, y2)
    scores: TensorName = "scores"  # [K] float
    labels: TensorName = "labels"  # [K] int
    count: TensorName = "count"    # [1] int: valid rows, the rest is padding


class DetectionFusion(_Strict):
    """Weighted boxes fusion (``wbf``) or box averaging (``average``) of detections."""

    type: Literal["detection"]
    method: Literal["wbf", "average"] = "wbf"
    iou_threshold: float = Field(default=0.55, gt=0, lt=1)
    skip_threshold: float = Field(default=0.0, ge=0, le=1)
    weights: list[float] | None = None
    max_detections: int = Field(default=100, ge=1, le=10_000)
    members: list[ModelName] | None = Field(default=None, min_length=1)
    tensors: DetectionTensors = Field(default_factory=DetectionTensors)

    kind: ClassVar[str] = "detection"

    @model_validator(mode="after")
    def _check(self) -> DetectionFusion:
        _check_weight_list(self.weights)
        return self


class StageRef(_Strict):
    """A model a BLS pipeline calls: a member/baseline of this spec, or any model already in
    the repository (e.g. another pipeline's ensemble)."""

    model: ModelName
    version: int = Field(default=-1, ge=-1)
    output: TensorName | None = None  # default: the model's first output
    activation: Literal["softmax", "none"] = "softmax"


class CascadeFusion(_Strict):
    """Early exit (BLS): each stage answers the samples it is confident about
    (top probability >= threshold); the rest go to the next stage."""

    type: Literal["cascade"]
    stages: list[StageRef] = Field(min_length=2, max_length=8)
    thresholds: list[float] = Field(min_length=1)  # one per stage but the last
    outputs: FusionOutputs = Field(default_factory=FusionOutputs)
    stage_output: TensorName = "stage"  # which stage answered each sample

    kind: ClassVar[str] = "bls"

    @model_validator(mode="after")
    def _check(self) -> CascadeFusion:
        if len(self.thresholds) != len(self.stages) - 1:
            raise ValueError(f"{len(self.stages)} stages need {len(self.stages) - 1} thresholds "
                             f"(one per stage but the last), got {len(self.thresholds)}")
        if any(not 0 <= t <= 1 for t in self.thresholds):
            raise ValueError(f"thresholds must be in [0, 1], got {self.thresholds}")
        return self

    @property
    def refs(self) -> list[StageRef]:
        return list(self.stages)


class RouteFusion(_Strict):
    """A/B routing (BLS): ``candidate_fraction`` of requests go to the candidate, the rest
    to the current model; ``shadow`` also sends current-routed requests to the candidate
    without using its answer; ``fallback`` answers with the current model when the candidate
    fails. Decisions and fallbacks are counted as Triton metrics."""

    type: Literal["route"]
    current: StageRef
    candidate: StageRef
    candidate_fraction: float = Field(default=0.1, ge=0, le=1)
    shadow: bool = False
    fallback: bool = True
    outputs: FusionOutputs = Field(default_factory=FusionOutputs)
    route_output: TensorName = "route"  # 0: current, 1: candidate, 2: fallback to current

    kind: ClassVar[str] = "bls"

    @property
    def refs(self) -> list[StageRef]:
        return [self.current, self.candidate]


class ChainOutput(_Strict):
    """No fusion: the pipeline returns one member's outputs (chaining)."""

    type: Literal["none"]
    member: ModelName | None = None  # default: the last member

    kind: ClassVar[str] = "chain"


FusionSpec = Annotated[
    MeanFusion | GeometricMeanFusion | WeightedMeanFusion | VoteFusion | StackingFusion | RescoreFusion
    | DetectionFusion | CascadeFusion | RouteFusion | ChainOutput,
    Field(discriminator="type"),
]
CLASSIFICATION_FUSIONS = ("mean", "geometric_mean", "weighted_mean", "vote", "stacking", "rescore")


# --------------------------------------------------------------------------- serving
class DynamicBatching(_Strict):
    enabled: bool = True
    preferred_batch_sizes: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    max_queue_delay_microseconds: int = Field(default=100, ge=0, le=10_000_000)


class Serving(_Strict):
    """How Triton runs every model of the pipeline (members may override a few)."""

    max_batch_size: int = Field(default=64, ge=1, le=MAX_BATCH_LIMIT)
    instances: int = Field(default=1, ge=1, le=64)
    device: Literal["auto", "cpu", "gpu"] = "auto"  # auto: cpu for local, gpu for ngc
    dynamic_batching: DynamicBatching = Field(default_factory=DynamicBatching)
    onnxruntime_threads: int = Field(default=1, ge=0, le=256)  # 0: onnxruntime decides
    # gpu: member outputs reach the fusion step on the device (DLPack) and the math runs
    # there in torch; needs torch in the server's Python. cpu: Triton copies them to host.
    fusion_device: Literal["cpu", "gpu"] = "cpu"


# --------------------------------------------------------------------------- data
class SplitSpec(_Strict):
    """Array names of one split; ``inputs`` lists one array per model input."""

    inputs: str | list[str]
    labels: str | None = None

    @property
    def input_keys(self) -> list[str]:
        return [self.inputs] if isinstance(self.inputs, str) else list(self.inputs)


class DataSpec(_Strict):
    """Labelled samples in one ``.npz`` file; each split names its arrays."""

    path: ExistingFile
    test: SplitSpec | None = None
    validation: SplitSpec | None = None
    calibration: SplitSpec | None = None


class Tolerance(_Strict):
    """Pass rule of one precision: ``|got - ref| <= atol + rtol * |ref|`` and top-1 agreement.

    ``atol: null`` records the error without bounding it (int8 logits far from the decision
    boundary may move a lot while the predicted class does not).
    """

    atol: float | None = Field(default=1e-4, gt=0)
    rtol: float = Field(default=1e-3, ge=0)
    min_top1_agreement: float = Field(default=0.99, ge=0, le=1)


class ParitySpec(_Strict):
    """How every artifact is checked against PyTorch fp32, per precision (int8 > fp16 > fp32)."""

    samples: int = Field(default=256, ge=1, le=100_000)
    fp32: Tolerance = Field(default_factory=Tolerance)
    fp16: Tolerance = Field(default_factory=lambda: Tolerance(atol=5e-2, rtol=1e-2, min_top1_agreement=0.98))
    int8: Tolerance = Field(default_factory=lambda: Tolerance(atol=None, rtol=0.0, min_top1_agreement=0.95))

    def for_precision(self, precision: str) -> Tolerance:
        return getattr(self, precision)


class Calibration(_Strict):
    """int8 post-training quantization (onnxruntime ``quantize_static``, Q/DQ format)."""

    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    samples: int = Field(default=256, ge=1, le=1_000_000)
    per_channel: bool = True
    symmetric_activations: bool = True  # what TensorRT expects of Q/DQ int8


class PrecisionSpec(_Strict):
    """Which precision variants to build and which one the ensemble calls."""

    variants: list[Precision] = Field(default_factory=lambda: ["fp32"], min_length=1)
    serve: Literal["fp32", "fp16", "int8", "auto"] = "fp32"
    accuracy_budget: float | None = Field(default=None, ge=0, le=100)  # top-1 points vs fp32
    min_speedup: float = Field(default=1.05, ge=1.0)  # auto: a lower precision must be this much faster
    benchmark_batch_size: int = Field(default=16, ge=1, le=MAX_BATCH_LIMIT)
    calibration: Calibration = Field(default_factory=Calibration)

    @model_validator(mode="after")
    def _check(self) -> PrecisionSpec:
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants listed twice: {self.variants}")
        if self.serve == "auto" and self.accuracy_budget is None:
            raise ValueError("serve: auto needs an accuracy_budget (top-1 points the variant may lose vs fp32)")
        if self.serve != "auto" and self.accuracy_budget is not None:
            raise ValueError("accuracy_budget only applies to serve: auto")
        return self


class TensorRTSpec(_Strict):
    """TensorRT options (target ngc). Engines need the tensorrt package and a GPU."""

    engines: bool = False  # build model.plan engines from each ONNX variant
    onnxruntime_accelerator: bool = False  # ngc ORT members run through ORT's TensorRT EP
    opt_batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH_LIMIT)
    workspace_mb: int = Field(default=1024, ge=16, le=1 << 20)
    timing_cache: ResolvedPath | None = None


# --------------------------------------------------------------------------- pipeline
class PipelineSpec(_Strict):
    name: ModelName
    description: str = ""
    target: Literal["local", "ngc"] = "local"
    output_dir: ResolvedPath = Path("../model_repository")
    opset: int = Field(default=18, ge=13, le=23)
    serving: Serving = Field(default_factory=Serving)
    members: list[MemberSpec] = Field(min_length=1, max_length=64)
    fusion: FusionSpec
    baselines: list[MemberSpec] = Field(default_factory=list)
    data: DataSpec | None = None
    parity: ParitySpec = Field(default_factory=ParitySpec)
    precision: PrecisionSpec = Field(default_factory=PrecisionSpec)
    tensorrt: TensorRTSpec = Field(default_factory=TensorRTSpec)

    # ---- derived names and views
    @property
    def fusion_kind(self) -> str:
        return self.fusion.kind

    @property
    def fusion_model_name(self) -> str | None:
        """The Python-backend fusion step of an ensemble (None for BLS and chain pipelines)."""
        return f"{self.name}_fusion" if self.fusion_kind in ("classification", "detection") else None

    @property
    def all_models(self) -> list[MemberSpec]:
        return [*self.members, *self.baselines]

    def model(self, name: str) -> MemberSpec | None:
        return next((m for m in self.all_models if m.name == name), None)

    def max_batch_size_of(self, member: MemberSpec) -> int:
        return member.max_batch_size or self.serving.max_batch_size

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
        reserved = {self.name, self.fusion_model_name} - {None}
        for i, name in enumerate(names):
            if names.index(name) != i:
                problems.append(f"model name '{name}' is used twice (members and baselines)")
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
        if not problems:  # the checks below assume a sound graph
            problems += self._check_precisions()
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


# --------------------------------------------------------------------------- loading
def load_spec(path: str | Path) -> PipelineSpec:
    """Read, parse and validate a spec file; raise :class:`SpecError` on any problem.

    ``extends: base.yaml`` (a file in the same folder) starts from that spec: mappings are
    merged key by key, everything else (lists included) is replaced, and a mapping with a
    different ``type`` (another fusion) replaces the base's.
    """
    path = Path(path)
    raw = _read_yaml(path, chain=())
    return parse_spec(raw, base_dir=path.parent.resolve(), source=str(path))


def _read_yaml(path: Path, chain: tuple[Path, ...]) -> Any:
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}" + (f" (extended by {chain[-1]})" if chain else ""))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}: malformed YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a UTF-8 text file") from None
    if not isinstance(raw, dict) or "extends" not in raw:
        return raw
    base_name = raw.pop("extends")
    base = path.parent / str(base_name)
    if not isinstance(base_name, str) or Path(base_name).name != base_name:
        raise SpecError(f"{path}: extends: '{base_name}' must name a spec file in the same folder")
    if base.resolve() in {p.resolve() for p in (*chain, path)}:
        raise SpecError(f"{path}: extends: '{base_name}' makes a cycle")
    return _merge(_read_yaml(base, (*chain, path)), raw)


def _merge(base: Any, update: Any) -> Any:
    """Deep-merge mappings; a mapping whose ``type`` changes (a fusion) replaces the base."""
    if isinstance(base, dict) and isinstance(update, dict) and base.get("type", update.get("type")) == update.get(
            "type", base.get("type")):
        out = dict(base)
        for key, value in update.items():
            out[key] = _merge(base[key], value) if key in base else value
        return out
    return update


def with_overrides(spec: PipelineSpec, changes: dict[str, Any], source: str = "command line") -> PipelineSpec:
    """A copy of ``spec`` with nested ``changes`` applied, validated again."""

    raw = _merge(spec.model_dump(mode="json", exclude_unset=True), changes)
    return parse_spec(raw, base_dir=Path("/"), source=source)


def parse_spec(raw: Any, base_dir: Path, source: str = "<spec>") -> PipelineSpec:
    if not isinstance(raw, dict):
        raise SpecError(
            f"{source}: the spec must be a YAML mapping with keys such as 'name', "
            f"'members' and 'fusion' (got {type(raw).__name__})"
        )
    try:
        return PipelineSpec.model_validate(raw, context={"base_dir": base_dir})
    except PydanticValidationError as exc:
        lines = [_format_error(err, raw) for err in exc.errors()]
        raise SpecError(f"{source}: invalid spec\n" + "\n".join(f"  - {ln}" for ln in lines)) from None


def _format_error(err: dict, raw: Any) -> str:
    loc = _format_loc(err["loc"], raw)
    kind = err["type"]
    msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
    if kind == "missing":
        msg = "required field is missing"
    elif kind == "extra_forbidden":
        key = str(err["loc"][-1])
        allowed = sorted(_model_at(err["loc"][:-1], raw).model_fields)
        close = difflib.get_close_matches(key, allowed, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        msg = f"unknown field; {hint}allowed fields here: {', '.join(allowed)}"
    elif kind == "union_tag_invalid":
        ctx = err.get("ctx", {})
        msg = f"unknown type '{ctx.get('tag')}'; choose one of: {ctx.get('expected_tags')}"
    elif kind == "union_tag_not_found":
        msg = "missing 'type'"
    elif kind == "string_pattern_mismatch":
        msg = (
            f"'{err['input']}' is not a valid name: use letters, digits, '_' and '-' "
            "(tensor names may also use '.'), starting with a letter"
        )
    return f"{loc}: {msg}" if loc else msg


def _format_loc(loc: tuple, raw: Any) -> str:
    out = ""
    node = raw
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f" ({node['name']})"
        else:
            if isinstance(node, dict) and node.get("type") == part:
                continue  # the discriminator tag pydantic adds to the path of a union
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out


def _model_at(loc: tuple, raw: Any) -> type[BaseModel]:
    """The schema class that validated the mapping found at ``loc`` in the raw spec."""
    cls: type[BaseModel] = PipelineSpec
    node = raw
    for part in loc:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and part < len(node) else None
            continue
        if part not in cls.model_fields:
            continue  # a union's discriminator tag
        node = node.get(part) if isinstance(node, dict) else None
        cls = _unwrap_model(cls.model_fields[part].annotation, node) or cls
    return cls


def _unwrap_model(annotation: Any, node: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    candidates = [c for c in map(lambda a: _unwrap_model(a, node), get_args(annotation)) if c]
    if get_origin(annotation) is Annotated:
        return candidates[0] if candidates else None
    for cand in candidates:  # a discriminated union: pick the member whose tag matches
        tag = cand.model_fields.get("type")
        if tag is None or not isinstance(node, dict) or node.get("type") in get_args(tag.annotation):
            return cand
    return candidates[0] if candidates else None
