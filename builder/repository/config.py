"""Triton ``config.pbtxt`` from dataclasses, through Triton's own protobuf schema (writing;
reading is :mod:`tritonfleet.clients.model_config`).

Dataclass -> dict -> ``json_format.ParseDict`` into ``model_config_pb2.ModelConfig`` ->
``text_format``; the same path PyTriton's generator takes. An invalid field or enum fails
in ``ParseDict`` instead of producing a config Triton would reject at load time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tritonfleet.builder.spec import TensorSpec
from tritonfleet.clients.dtypes import triton_config_dtype
from tritonfleet.clients.model_config import to_pbtxt


@dataclass(frozen=True)
class TensorConfig:
    name: str
    dtype: str  # spec dtype name, e.g. "float32"
    dims: tuple[int, ...]
    optional: bool = False  # an input a request (or an ensemble step) may leave out

    @classmethod
    def from_spec(cls, spec: TensorSpec, name: str | None = None) -> TensorConfig:
        return cls(name or spec.name, spec.dtype, tuple(spec.shape))

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "data_type": triton_config_dtype(self.dtype), "dims": list(self.dims)}
        return {**out, "optional": True} if self.optional else out


@dataclass(frozen=True)
class EnsembleStep:
    model_name: str
    input_map: Mapping[str, str]   # the step model's input  -> ensemble tensor
    output_map: Mapping[str, str]  # the step model's output -> ensemble tensor
    model_version: int = -1

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "input_map": dict(self.input_map),
            "output_map": dict(self.output_map),
        }


@dataclass(frozen=True)
class DynamicBatchingConfig:
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_microseconds: int = 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"max_queue_delay_microseconds": self.max_queue_delay_microseconds}
        if self.preferred_batch_sizes:
            out["preferred_batch_size"] = list(self.preferred_batch_sizes)
        return out


@dataclass(frozen=True)
class ModelConfig:
    """The subset of Triton's ModelConfig tritonfleet writes."""

    name: str
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    max_batch_size: int = 0
    platform: str | None = None   # "ensemble", "onnxruntime_onnx", "tensorrt_plan"
    backend: str | None = None    # "python", "onnxruntime", "tensorrt"
    instance_count: int = 1
    instance_kind: str | None = "KIND_CPU"  # None for ensembles (no instances)
    dynamic_batching: DynamicBatchingConfig | None = None
    parameters: Mapping[str, str] = field(default_factory=dict)
    ensemble_steps: tuple[EnsembleStep, ...] = ()
    default_model_filename: str | None = None
    optimization: Mapping[str, Any] | None = None
    version_policy: Mapping[str, Any] | None = None

    @property
    def is_ensemble(self) -> bool:
        return self.platform == "ensemble"

    def to_dict(self) -> dict[str, Any]:
        cfg: dict[str, Any] = {"name": self.name, "max_batch_size": self.max_batch_size}
        if self.platform:
            cfg["platform"] = self.platform
        if self.backend:
            cfg["backend"] = self.backend
        if self.default_model_filename:
            cfg["default_model_filename"] = self.default_model_filename
        if self.version_policy:
            cfg["version_policy"] = dict(self.version_policy)
        cfg["input"] = [t.to_dict() for t in self.inputs]
        cfg["output"] = [t.to_dict() for t in self.outputs]
        if self.instance_kind is not None and not self.is_ensemble:
            cfg["instance_group"] = [{"count": self.instance_count, "kind": self.instance_kind}]
        if self.dynamic_batching is not None and self.max_batch_size > 0:
            cfg["dynamic_batching"] = self.dynamic_batching.to_dict()
        if self.parameters:
            cfg["parameters"] = {k: {"string_value": str(v)} for k, v in self.parameters.items()}
        if self.optimization:
            cfg["optimization"] = dict(self.optimization)
        if self.ensemble_steps:
            cfg["ensemble_scheduling"] = {"step": [s.to_dict() for s in self.ensemble_steps]}
        return cfg

    def to_proto(self):
        from google.protobuf import json_format
        from tritonclient.grpc import model_config_pb2

        return json_format.ParseDict(self.to_dict(), model_config_pb2.ModelConfig())

    def to_pbtxt(self) -> str:
        return to_pbtxt(self.to_proto())
