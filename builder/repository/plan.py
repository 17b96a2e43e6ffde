"""From a spec to the Triton model configs of one pipeline (pure: no I/O, no torch).

Per target, every member and baseline becomes one model, the fusion step a Python-backend
model and the pipeline itself a ``platform: "ensemble"`` model. The ensemble is identical
for both targets; only the member models differ:

* ``ngc``: ``platform: "onnxruntime_onnx"`` (the NGC container's ONNX Runtime backend);
* ``local``: ``backend: "python"`` running the same ``model.onnx`` with onnxruntime.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from builder.repository.config import (
    DynamicBatchingConfig,
    EnsembleStep,
    ModelConfig,
    TensorConfig,
)
from builder.specs import MemberSpec, PipelineSpec

TARGETS = ("local", "ngc")
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class ModelPlan:
    kind: str  # "member" | "baseline" | "fusion" | "ensemble"
    config: ModelConfig
    member: str | None = None
    precision: str | None = None


def variant_name(member: MemberSpec, precision: str) -> str:
    """Model name of one precision variant: ``cnn_a`` (fp32), ``cnn_a_fp16``, ``cnn_a_int8``."""
    return member.name if precision == "fp32" else f"{member.name}_{precision}"


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
        return ModelConfig(
            platform="onnxruntime_onnx",
            default_model_filename=ONNX_FILE,
            parameters={"intra_op_thread_count": threads},
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


def plan_pipeline(spec: PipelineSpec, target: str) -> list[ModelPlan]:
    """Every model of the pipeline for ``target``, members first, ensemble last."""
    plans = [ModelPlan("member", member_config(spec, m, target), m.name, "fp32") for m in spec.members]
    plans += [ModelPlan("baseline", member_config(spec, m, target), m.name, "fp32") for m in spec.baselines]
    fusion = fusion_config(spec)
    plans.append(ModelPlan("fusion", fusion))
    plans.append(ModelPlan("ensemble", ensemble_config(spec, fusion)))
    return plans
