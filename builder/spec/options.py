"""Serving, data, parity, precision and TensorRT options of a pipeline spec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, model_validator

from tritonfleet.builder.spec.common import MAX_BATCH_LIMIT, ExistingFile, Precision, ResolvedPath, _Strict


# --------------------------------------------------------------------------- export
class ExportOptions(_Strict):
    """How members become ONNX."""

    # torch writes per-node stack traces (with the build machine's file paths), FX node dumps
    # and class names into the ONNX; they are removed unless kept for debugging an export
    keep_debug_info: bool = False
    # auto: the dynamo exporter (torch.export) for nn.Module and ExportedProgram sources, the
    # TorchScript exporter for torchscript sources; torchscript: trace nn.Module sources instead
    # (the other exporter, when torch.export cannot capture a model)
    exporter: Literal["auto", "dynamo", "torchscript"] = "auto"


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
    # ngc: the server image's Python has torch (the stock NGC container has none); local: always
    server_has_torch: bool = False
    # also serve the pipeline as ONE model: the members and the fusion math merged into one ONNX graph
    # (<pipeline>_compiled, beside the Triton ensemble); cascade, route and detection say why they cannot
    compile: bool = False


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
    train: SplitSpec | None = None  # what `tritonfleet distill` trains a student on (inputs and labels)
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
    # variants that may fail to build (conversion or parity) without failing the command; any other
    # requested variant that fails makes `tritonfleet build` exit 3 (the repository still holds the rest)
    optional: list[Precision] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check(self) -> PrecisionSpec:
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"variants listed twice: {self.variants}")
        if self.serve == "auto" and self.accuracy_budget is None:
            raise ValueError("serve: auto needs an accuracy_budget (top-1 points the variant may lose vs fp32)")
        if self.serve != "auto" and self.accuracy_budget is not None:
            raise ValueError("accuracy_budget only applies to serve: auto")
        return self


@dataclass(frozen=True)
class BatchProfile:
    """Batch sizes of the one optimization profile."""

    min: int
    opt: int
    max: int

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"TensorRT profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    @classmethod
    def for_serving(cls, max_batch_size: int, preferred: tuple[int, ...] = (), opt: int | None = None) -> BatchProfile:
        """min 1; opt = the given opt, else the largest preferred batch, else max; max = max_batch_size."""
        if opt is None:
            fitting = [p for p in preferred if p <= max_batch_size]
            opt = max(fitting) if fitting else max_batch_size
        return cls(1, min(opt, max_batch_size), max_batch_size)

    def shapes(self, per_sample: tuple[int, ...], name: str | None = None) -> tuple[tuple[int, ...], ...]:
        """min/opt/max shapes of an input (``name`` is for :class:`~.axes.EngineProfile`, which also
        bounds the input's dynamic axes; here they are 1)."""
        dims = tuple(1 if d == -1 else d for d in per_sample)
        return tuple((b, *dims) for b in (self.min, self.opt, self.max))


class TensorRTSpec(_Strict):
    """TensorRT options (target ngc). Engines need the tensorrt package and a GPU."""

    engines: bool = False  # build model.plan engines from each ONNX variant
    onnxruntime_accelerator: bool = False  # ngc ORT members run through ORT's TensorRT EP
    opt_batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH_LIMIT)
    workspace_mb: int = Field(default=1024, ge=16, le=1 << 20)
    timing_cache: ResolvedPath | None = None


