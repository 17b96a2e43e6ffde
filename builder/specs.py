"""The pipeline spec: one validated schema for everything in ``ensemble_configs/*.yaml``.

A spec names the member models (PyTorch sources and tensor signatures), how they are
fused, how Triton serves them and which data validates them. :func:`load_spec` turns a
YAML file into a frozen :class:`PipelineSpec` or raises one :class:`SpecError` listing
every problem with the field path (``members[1] (cnn_b).model.checkpoint``) and a hint.

Relative paths are resolved against the folder of the spec file.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

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

    @model_validator(mode="after")
    def _unique_tensor_names(self) -> MemberSpec:
        names = [t.name for t in (*self.inputs, *self.outputs)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tensor names must be unique within a model: {', '.join(dupes)}")
        if self.precisions and len(set(self.precisions)) != len(self.precisions):
            raise ValueError(f"precisions listed twice: {self.precisions}")
        return self


# --------------------------------------------------------------------------- fusion
class FusionOutputs(_Strict):
    probabilities: TensorName = "probabilities"
    class_index: TensorName = "class_index"


class MeanFusion(_Strict):
    """Arithmetic mean of the members' class probabilities."""

    type: Literal["mean"]
    activation: Literal["softmax", "none"] = "softmax"
    source: TensorName | None = None  # member output to fuse; default: each member's first
    outputs: FusionOutputs = Field(default_factory=FusionOutputs)


FusionSpec = Annotated[Union[MeanFusion], Field(discriminator="type")]


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

    # ---- derived names
    @property
    def fusion_model_name(self) -> str:
        return f"{self.name}_fusion"

    @property
    def all_models(self) -> list[MemberSpec]:
        return [*self.members, *self.baselines]

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

    def fused_output(self, member: MemberSpec) -> TensorSpec:
        wanted = self.fusion.source
        if wanted is None:
            return member.outputs[0]
        return next(t for t in member.outputs if t.name == wanted)

    # ---- cross-field checks
    @model_validator(mode="after")
    def _check_pipeline(self) -> PipelineSpec:
        problems: list[str] = []
        names = [m.name for m in self.all_models]
        reserved = {self.name, self.fusion_model_name}
        for i, name in enumerate(names):
            if names.index(name) != i:
                problems.append(f"model name '{name}' is used twice (members and baselines)")
            if name in reserved:
                problems.append(f"model name '{name}' clashes with the pipeline's own models")
        problems += self._check_members_agree()
        for m in self.all_models:
            if m.max_batch_size is not None and m.max_batch_size < self.serving.max_batch_size:
                problems.append(
                    f"'{m.name}' max_batch_size {m.max_batch_size} is below the pipeline's "
                    f"serving.max_batch_size {self.serving.max_batch_size}; the ensemble would "
                    "send batches it cannot take"
                )
        problems += self._check_precisions()
        too_big = [b for b in self.serving.dynamic_batching.preferred_batch_sizes
                   if b > self.serving.max_batch_size]
        if too_big:
            problems.append(
                f"serving.dynamic_batching.preferred_batch_sizes {too_big} exceed "
                f"serving.max_batch_size {self.serving.max_batch_size}"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

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

    def _check_members_agree(self) -> list[str]:
        problems = []
        first = self.members[0]
        for m in self.all_models[1:]:
            if [t.signature() for t in m.inputs] != [t.signature() for t in first.inputs]:
                problems.append(
                    f"inputs of '{m.name}' ({_describe(m.inputs)}) differ from inputs of "
                    f"'{first.name}' ({_describe(first.inputs)}); every model must take the "
                    "pipeline's one input signature"
                )
        fused = []
        for m in self.members:
            if self.fusion.source is not None and self.fusion.source not in {
                t.name for t in m.outputs
            }:
                problems.append(
                    f"fusion.source '{self.fusion.source}' is not an output of '{m.name}' "
                    f"(outputs: {', '.join(t.name for t in m.outputs)})"
                )
                continue
            fused.append((m, self.fused_output(m)))
        for m, out in fused:
            if out.dtype not in FLOAT_DTYPES:
                problems.append(f"output '{out.name}' of '{m.name}' must be a float tensor to fuse")
            if len(out.shape) != 1 or out.shape[0] < 1:
                problems.append(
                    f"output '{out.name}' of '{m.name}' has shape {list(out.shape)}; "
                    f"{self.fusion.type} fusion needs per-sample class scores of shape [classes]"
                )
        if fused:
            ref_m, ref = fused[0]
            for m, out in fused[1:]:
                if out.shape != ref.shape:
                    problems.append(
                        f"output '{out.name}' of '{m.name}' has shape {list(out.shape)} but "
                        f"'{ref.name}' of '{ref_m.name}' has shape {list(ref.shape)}; "
                        f"{self.fusion.type} fusion needs identical member output shapes"
                    )
        return problems

    @property
    def num_classes(self) -> int:
        return self.fused_output(self.members[0]).shape[0]


def _describe(tensors: list[TensorSpec]) -> str:
    return ", ".join(f"{t.name}:{t.dtype}{list(t.shape)}" for t in tensors)


# --------------------------------------------------------------------------- loading
def load_spec(path: str | Path) -> PipelineSpec:
    """Read, parse and validate a spec file; raise :class:`SpecError` on any problem."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"spec file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}: malformed YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{path}: not a UTF-8 text file") from None
    return parse_spec(raw, base_dir=path.parent.resolve(), source=str(path))


def with_overrides(spec: PipelineSpec, changes: dict[str, Any], source: str = "command line") -> PipelineSpec:
    """A copy of ``spec`` with nested ``changes`` applied, validated again."""

    def merge(base: dict, update: dict) -> dict:
        out = dict(base)
        for key, value in update.items():
            out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    raw = merge(spec.model_dump(mode="json", exclude_unset=True), changes)
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
