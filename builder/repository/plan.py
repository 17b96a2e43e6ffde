"""From a spec to the Triton model configs of one pipeline (pure: no I/O, no torch).

Per target, every member and baseline becomes one model, the fusion step a Python-backend
model and the pipeline itself a ``platform: "ensemble"`` model. The ensemble is identical
for both targets; only the member models differ:

* ``ngc``: ``platform: "onnxruntime_onnx"`` (the NGC container's ONNX Runtime backend),
  optionally through ORT's TensorRT execution provider, plus ``platform: "tensorrt_plan"``
  engines when they were built;
* ``local``: ``backend: "python"`` running the same ``model.onnx`` with onnxruntime.

Every precision variant is its own model (``cnn_a``, ``cnn_a_fp16``, ``cnn_a_int8``,
``cnn_a_trt_fp16``); the ensemble calls the one each member serves.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Sequence

from builder.repository.config import (
    DynamicBatchingConfig,
    EnsembleStep,
    ModelConfig,
    TensorConfig,
)
from builder.specs import MemberSpec, PipelineSpec

TARGETS = ("local", "ngc")
ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
TRT_PRECISION_MODE = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}


@dataclass(frozen=True)
class ModelPlan:
    kind: str  # "member" | "baseline" | "fusion" | "ensemble"
    config: ModelConfig
    member: str | None = None
    precision: str | None = None
    format: str = "onnx"  # "onnx" | "plan" (TensorRT engine) | "python"

    @property
    def artifact_key(self) -> str:
        return f"{self.format}:{self.member}:{self.precision}"


def variant_name(member: MemberSpec | str, precision: str, fmt: str = "onnx") -> str:
    """Model name of a variant: ``cnn_a`` (fp32), ``cnn_a_fp16``, ``cnn_a_int8``, ``cnn_a_trt_fp16``."""
    name = member if isinstance(member, str) else member.name
    if fmt == "plan":
        return f"{name}_trt_{precision}"
    return name if precision == "fp32" else f"{name}_{precision}"


def _instance_kind(spec: PipelineSpec, target: str) -> str:
    return "KIND_GPU" if spec.device_for(target) == "gpu" else "KIND_CPU"


def _batching(spec: PipelineSpec) -> DynamicBatchingConfig | None:
    db = spec.serving.dynamic_batching
    if not db.enabled:
        return None
    return DynamicBatchingConfig(tuple(db.preferred_batch_sizes), db.max_queue_delay_microseconds)


def member_config(spec: PipelineSpec, member: MemberSpec, target: str, precision: str = "fp32") -> ModelConfig:
    common = dict(
        name=variant_name(member, precision),
        inputs=tuple(TensorConfig.from_spec(t) for t in member.inputs),
        outputs=tuple(TensorConfig.from_spec(t) for t in member.outputs),
        max_batch_size=spec.max_batch_size_of(member),
        instance_count=spec.instances_of(member),
        instance_kind=_instance_kind(spec, target),
        dynamic_batching=_batching(spec),
    )
    threads = str(spec.serving.onnxruntime_threads)
    if target == "ngc":
        optimization = None
        if spec.tensorrt.onnxruntime_accelerator:
            optimization = {"execution_accelerators": {"gpu_execution_accelerator": [{
                "name": "tensorrt",
                "parameters": {
                    "precision_mode": TRT_PRECISION_MODE[precision],
                    "max_workspace_size_bytes": str(spec.tensorrt.workspace_mb << 20),
                },
            }]}}
        return ModelConfig(
            platform="onnxruntime_onnx",
            default_model_filename=ONNX_FILE,
            parameters={"intra_op_thread_count": threads},
            optimization=optimization,
            **common,
        )
    if target == "local":
        return ModelConfig(
            backend="python",
            parameters={
                "onnx_file": ONNX_FILE,
                "intra_op_threads": threads,
                "device": spec.device_for(target),
                "precision": precision,
            },
            **common,
        )
    raise ValueError(f"unknown target '{target}' (use one of {', '.join(TARGETS)})")


def engine_profile(spec: PipelineSpec, member: MemberSpec):
    from builder.export.trt import BatchProfile

    return BatchProfile.for_serving(
        spec.max_batch_size_of(member), tuple(spec.serving.dynamic_batching.preferred_batch_sizes),
        spec.tensorrt.opt_batch_size,
    )


def engine_config(spec: PipelineSpec, member: MemberSpec, precision: str) -> ModelConfig:
    """``platform: "tensorrt_plan"``; max_batch_size is the profile's max, never more."""
    profile = engine_profile(spec, member)
    return ModelConfig(
        name=variant_name(member, precision, "plan"),
        platform="tensorrt_plan",
        default_model_filename=PLAN_FILE,
        inputs=tuple(TensorConfig.from_spec(t) for t in member.inputs),
        outputs=tuple(TensorConfig.from_spec(t) for t in member.outputs),
        max_batch_size=profile.max,
        instance_count=spec.instances_of(member),
        instance_kind="KIND_GPU",
        dynamic_batching=_batching(spec),
    )


def fusion_inputs(spec: PipelineSpec) -> list[TensorConfig]:
    return [
        TensorConfig(f"scores_{i}", spec.fused_output(m).dtype, tuple(spec.fused_output(m).shape))
        for i, m in enumerate(spec.members)
    ]


def fusion_config(spec: PipelineSpec) -> ModelConfig:
    f = spec.fusion
    classes = spec.num_classes
    inputs = fusion_inputs(spec)
    params = f.model_dump(mode="json", exclude={"outputs", "source"})
    params["inputs"] = [t.name for t in inputs]
    params["outputs"] = {"probabilities": f.outputs.probabilities, "class_index": f.outputs.class_index}
    return ModelConfig(
        name=spec.fusion_model_name,
        backend="python",
        inputs=tuple(inputs),
        outputs=(
            TensorConfig(f.outputs.probabilities, "float32", (classes,)),
            TensorConfig(f.outputs.class_index, "int64", (1,)),
        ),
        max_batch_size=spec.serving.max_batch_size,
        instance_count=spec.serving.instances,
        instance_kind="KIND_CPU",
        dynamic_batching=_batching(spec),
        parameters={"fusion": json.dumps(params, sort_keys=True)},
    )


def ensemble_config(spec: PipelineSpec, fusion: ModelConfig, served: dict[str, str] | None = None) -> ModelConfig:
    """The ensemble: members in parallel on the pipeline input, then the fusion step.

    ``served`` maps member name -> the model name (precision variant) the ensemble calls.
    """
    served = served or {}
    first = spec.members[0]
    inputs = tuple(TensorConfig.from_spec(t) for t in first.inputs)
    steps = []
    for i, m in enumerate(spec.members):
        out = spec.fused_output(m)
        steps.append(EnsembleStep(
            model_name=served.get(m.name, m.name),
            input_map={t.name: inputs[j].name for j, t in enumerate(m.inputs)},
            output_map={out.name: f"{m.name}__{out.name}"},
        ))
    steps.append(EnsembleStep(
        model_name=fusion.name,
        input_map={f"scores_{i}": f"{m.name}__{spec.fused_output(m).name}" for i, m in enumerate(spec.members)},
        output_map={t.name: t.name for t in fusion.outputs},
    ))
    return ModelConfig(
        name=spec.name,
        platform="ensemble",
        inputs=inputs,
        outputs=fusion.outputs,
        max_batch_size=spec.serving.max_batch_size,
        instance_kind=None,
        ensemble_steps=tuple(steps),
    )


def plan_pipeline(
    spec: PipelineSpec,
    target: str,
    built: Mapping[str, Sequence[str]] | None = None,
    served: Mapping[str, str] | None = None,
    engines: Mapping[str, Sequence[str]] | None = None,
) -> list[ModelPlan]:
    """Every model of the pipeline for ``target``, members first, ensemble last.

    ``built``: member -> precisions whose ONNX variant exists (default: all requested);
    ``served``: member -> precision the ensemble calls (default fp32);
    ``engines``: member -> precisions with a TensorRT engine (ngc only).
    """
    plans = []
    for m in spec.all_models:
        kind = "member" if m in spec.members else "baseline"
        for precision in (built or {}).get(m.name, spec.precisions_of(m)):
            plans.append(ModelPlan(kind, member_config(spec, m, target, precision), m.name, precision))
        for precision in (engines or {}).get(m.name, ()):
            plans.append(ModelPlan(kind, engine_config(spec, m, precision), m.name, precision, "plan"))
    fusion = fusion_config(spec)
    plans.append(ModelPlan("fusion", fusion, format="python"))
    names = {m.name: variant_name(m, (served or {}).get(m.name, "fp32")) for m in spec.members}
    plans.append(ModelPlan("ensemble", ensemble_config(spec, fusion, names), format="ensemble"))
    return plans
