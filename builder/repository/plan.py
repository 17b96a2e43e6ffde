"""From a spec to the Triton model configs of one pipeline (pure: no I/O, no torch).

Per target, every member and baseline becomes one model per precision variant, and the
pipeline itself one of three shapes:

* classification / detection fusion: a ``platform: "ensemble"`` that runs the members
  (chained ones on their producers' outputs) and a Python-backend fusion step;
* ``none`` (chaining): an ensemble whose outputs are one member's outputs;
* cascade / route: a Python-backend BLS model that calls the stage models itself.

The pipeline models are identical for both targets; only the member models differ:

* ``ngc``: ``platform: "onnxruntime_onnx"`` (the NGC container's ONNX Runtime backend),
  optionally through ORT's TensorRT execution provider, plus ``platform: "tensorrt_plan"``
  engines when they were built;
* ``local``: ``backend: "python"`` running the same ``model.onnx`` with onnxruntime.

With ``formats.variants: [onnx, torchscript]`` every member also gets TorchScript models
(:func:`torch_config`): ``platform: "pytorch_libtorch"`` on ngc, a Python-backend torch
runner on local.

Every precision variant is its own model (``cnn_a``, ``cnn_a_fp16``, ``cnn_a_int8``,
``cnn_a_trt_fp16``, ``cnn_a_ts``, ``cnn_a_ts_fp16``); the pipeline calls the one each member
serves, in ``formats.serve``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tritonfleet.builder.errors import SpecError
from tritonfleet.builder.repository.config import DynamicBatchingConfig, EnsembleStep, ModelConfig, TensorConfig
from tritonfleet.builder.spec import MemberSpec, PipelineSpec, TensorSpec
from tritonfleet.builder.spec.axes import merge_checks
from tritonfleet.builder.spec.formats import TORCH_PRECISIONS
from tritonfleet.builder.spec.monitoring import publishes_metrics
from tritonfleet.clients.metadata import MEMBER_ERROR, RAISE_MARKER
from tritonfleet.clients.vocabulary import ArtifactFormat, ModelKind

TARGETS = ("local", "ngc")
ONNX_FILE = "model.onnx"
PLAN_FILE = "model.plan"
TORCHSCRIPT_FILE = "model.pt"  # the name Triton's PyTorch backend loads by default
TRT_PRECISION_MODE = {"fp32": "FP32", "fp16": "FP16", "int8": "INT8"}
MONITOR_PREFIX = "monitor_"  # fusion-step inputs that carry the pipeline inputs for monitoring


@dataclass(frozen=True)
class ModelPlan:
    kind: ModelKind
    config: ModelConfig
    member: str | None = None
    precision: str | None = None
    format: ArtifactFormat = ArtifactFormat.ONNX


@dataclass(frozen=True)
class ExternalModel:
    """A model already in the repository that a BLS pipeline calls (e.g. an ensemble)."""

    name: str
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]


def variant_name(member: MemberSpec | str, precision: str, fmt: ArtifactFormat = ArtifactFormat.ONNX) -> str:
    """Model name of a variant: ``cnn_a`` (fp32), ``cnn_a_fp16``, ``cnn_a_int8``, ``cnn_a_trt_fp16``,
    ``cnn_a_ts`` (TorchScript fp32), ``cnn_a_ts_fp16``."""
    name = member if isinstance(member, str) else member.name
    if fmt == ArtifactFormat.PLAN:
        return f"{name}_trt_{precision}"
    if fmt == ArtifactFormat.TORCHSCRIPT:
        return f"{name}_ts" if precision == "fp32" else f"{name}_ts_{precision}"
    return name if precision == "fp32" else f"{name}_{precision}"


def _instance_kind(spec: PipelineSpec, target: str) -> str:
    return "KIND_GPU" if spec.device_for(target) == "gpu" else "KIND_CPU"


def _batching(spec: PipelineSpec) -> DynamicBatchingConfig | None:
    db = spec.serving.dynamic_batching
    if not db.enabled:
        return None
    return DynamicBatchingConfig(tuple(db.preferred_batch_sizes), db.max_queue_delay_microseconds)


def _tensors(specs: Sequence[TensorSpec]) -> tuple[TensorConfig, ...]:
    return tuple(TensorConfig.from_spec(t) for t in specs)


# A local runner's own outputs (docs/RELIABILITY.md, "member errors inside an ensemble"): asked for
# its error text and not for the marker (which it never produces), as only an ensemble step asks,
# it hands a failure on to the ensemble's final step instead of failing while its siblings run.
RUNNER_OUTPUTS = (TensorConfig(MEMBER_ERROR, "string", (1,)), TensorConfig(RAISE_MARKER, "bool", (1,)))


# --------------------------------------------------------------------------- member models
def member_config(spec: PipelineSpec, member: MemberSpec, target: str, precision: str = "fp32") -> ModelConfig:
    common = dict(
        name=variant_name(member, precision),
        inputs=_tensors(member.inputs),
        outputs=_tensors(member.outputs),
        max_batch_size=spec.max_batch_size_of(member),
        instance_count=spec.instances_of(member),
        instance_kind=_instance_kind(spec, target),
        dynamic_batching=_batching(spec),
    )
    threads = str(spec.serving.onnxruntime_threads)
    checks = input_checks(member.inputs)
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
        return ModelConfig(platform="onnxruntime_onnx", default_model_filename=ONNX_FILE,
                           parameters={"intra_op_thread_count": threads}, optimization=optimization, **common)
    if target == "local":
        return ModelConfig(
            backend="python",
            parameters={"onnx_file": ONNX_FILE, "intra_op_threads": threads,
                        "device": spec.device_for(target), "precision": precision,
                        **({"input_checks": json.dumps(checks, sort_keys=True)} if checks else {})},
            **{**common, "outputs": common["outputs"] + RUNNER_OUTPUTS},
        )
    raise ValueError(f"unknown target '{target}' (use one of {', '.join(TARGETS)})")


def engine_config(spec: PipelineSpec, member: MemberSpec, precision: str) -> ModelConfig:
    """``platform: "tensorrt_plan"``; max_batch_size is the profile's max, never more."""
    profile = spec.engine_profile(member)
    return ModelConfig(
        name=variant_name(member, precision, ArtifactFormat.PLAN), platform="tensorrt_plan", default_model_filename=PLAN_FILE,
        inputs=_tensors(member.inputs), outputs=_tensors(member.outputs), max_batch_size=profile.max,
        instance_count=spec.instances_of(member), instance_kind="KIND_GPU", dynamic_batching=_batching(spec),
    )


def torch_config(spec: PipelineSpec, member: MemberSpec, target: str, precision: str) -> ModelConfig:
    """A TorchScript member. ngc: Triton's PyTorch backend, whose inputs and outputs are named
    as in the spec and listed in ``forward``'s order (its "strict config ordering"; names with
    ``__`` are refused by the spec). local: the Python-backend torch runner (DLPack in and out,
    CUDA when the device is gpu and torch sees one)."""
    device = spec.device_for(target)
    threads = spec.serving.onnxruntime_threads
    common = dict(
        name=variant_name(member, precision, ArtifactFormat.TORCHSCRIPT), inputs=_tensors(member.inputs),
        outputs=_tensors(member.outputs), max_batch_size=spec.max_batch_size_of(member),
        instance_count=spec.instances_of(member), instance_kind=_instance_kind(spec, target),
        dynamic_batching=_batching(spec),
    )
    if target == "ngc":
        parameters = {"INFERENCE_MODE": "true"}
        if threads > 0:
            parameters["INTRA_OP_THREAD_COUNT"] = str(threads)
        return ModelConfig(platform="pytorch_libtorch", default_model_filename=TORCHSCRIPT_FILE,
                           parameters=parameters, **common)
    parameters = {"torchscript_file": TORCHSCRIPT_FILE, "threads": str(threads), "device": device,
                  "precision": precision, "channels_last": str(spec.formats.channels_last).lower()}
    if device == "gpu":  # inputs in GPU memory (CUDA shared memory, GPU producers) stay there
        parameters["FORCE_CPU_ONLY_INPUT_TENSORS"] = "no"
    return ModelConfig(backend="python", parameters=parameters, **{**common, "outputs": common["outputs"] + RUNNER_OUTPUTS})


def torch_precisions(spec: PipelineSpec, member: MemberSpec) -> list[str]:
    """TorchScript variants built for ``member`` (none unless ``formats.variants`` has torchscript)."""
    if not spec.formats.torchscript:
        return []
    return [p for p in spec.precisions_of(member) if p in TORCH_PRECISIONS]


def check_target(spec: PipelineSpec, target: str) -> None:
    """What the spec needs of the server that only the target tells (checked before any work)."""
    if spec.serving.fusion_device == "gpu" and target == "ngc" and not spec.serving.server_has_torch \
            and spec.fusion_kind in ("classification", "detection"):
        raise SpecError(
            "serving.fusion_device: gpu runs the fusion math with torch inside the server's Python, and the "
            "NGC tritonserver container ships no torch (the fusion model would fail to load). Use "
            "serving.fusion_device: cpu, or serve from an image built FROM the container with "
            "'pip install torch' and declare it with serving.server_has_torch: true"
        )


# --------------------------------------------------------------------------- fusion step
def fusion_inputs(spec: PipelineSpec) -> list[tuple[MemberSpec, str, TensorConfig]]:
    """(member, member output, fusion input) for every tensor the fusion step reads."""
    out = []
    if spec.fusion_kind == "classification":
        for i, m in enumerate(spec.fused_members):
            t = spec.fused_output(m)
            out.append((m, t.name, TensorConfig(f"scores_{i}", t.dtype, tuple(t.shape))))
    else:
        names = spec.fusion.tensors
        for i, m in enumerate(spec.fused_members):
            outs = {t.name: t for t in m.outputs}
            for role in ("boxes", "scores", "labels", "count"):
                t = outs[getattr(names, role)]
                out.append((m, t.name, TensorConfig(f"{role}_{i}", t.dtype, tuple(t.shape))))
    return out


def fusion_params(spec: PipelineSpec, fitted: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """JSON parameters of the fusion step (what ``ops.fuse``/``fuse_detections`` read)."""
    f = spec.fusion
    inputs = [cfg.name for _, _, cfg in fusion_inputs(spec)]
    if spec.fusion_kind == "classification":
        params = f.model_dump(mode="json", exclude={"outputs", "source", "members", "regularization", "max_iter",
                                                     "metric"})
        params["inputs"] = inputs
        params["outputs"] = {"probabilities": f.outputs.probabilities, "class_index": f.outputs.class_index}
    else:
        params = f.model_dump(mode="json", exclude={"members", "tensors"})
        n = len(spec.fused_members)
        params["inputs"] = {role: [f"{role}_{i}" for i in range(n)] for role in ("boxes", "scores", "labels", "count")}
        params["outputs"] = {role: getattr(f.tensors, role) for role in ("boxes", "scores", "labels", "count")}
    params.update(fitted or {})
    return params


def fusion_config(spec: PipelineSpec, fitted: Mapping[str, Any] | None = None,
                  member_errors: Sequence[str] = (), monitor: Mapping[str, Any] | None = None) -> ModelConfig:
    """The fusion step; ``member_errors`` names the members whose handed-on errors it reads (local
    runners, see :data:`RUNNER_OUTPUTS`): optional inputs ``member_error_<k>``, raised first.
    ``monitor``: its monitoring config (:func:`monitor_config`), with inputs ``monitor_<input>``."""
    f = spec.fusion
    if spec.fusion_kind == "classification":
        classes = spec.num_classes
        outputs = (TensorConfig(f.outputs.probabilities, "float32", (classes,)),
                   TensorConfig(f.outputs.class_index, "int64", (1,)))
    else:
        k, t = f.max_detections, f.tensors
        outputs = (TensorConfig(t.boxes, "float32", (k, 4)), TensorConfig(t.scores, "float32", (k,)),
                   TensorConfig(t.labels, "int64", (k,)), TensorConfig(t.count, "int64", (1,)))
    params = fusion_params(spec, fitted)
    # file-backed parameters (stacking coefficients) live in params.json beside model.py
    inline = {k: v for k, v in params.items() if k not in ("coef", "intercept")}
    parameters = {"fusion": json.dumps(inline, sort_keys=True)}
    on_gpu = spec.serving.fusion_device == "gpu"
    if on_gpu:  # keep member outputs on the device; ops.py computes with torch there
        parameters["FORCE_CPU_ONLY_INPUT_TENSORS"] = "no"
    errors = tuple(TensorConfig(f"member_error_{k}", "string", (1,), optional=True) for k in range(len(member_errors)))
    if member_errors:
        parameters["member_errors"] = json.dumps([[t.name, m] for t, m in zip(errors, member_errors)])
    watched = ()
    if monitor is not None:
        parameters["monitor"] = json.dumps(monitor, sort_keys=True)
        by_name = {t.name: t for t in spec.inputs}
        watched = tuple(TensorConfig(tensor, by_name[name].dtype, tuple(by_name[name].shape))
                        for name, tensor in sorted(monitor["inputs"].items()))
    return ModelConfig(
        name=spec.fusion_model_name, backend="python",
        inputs=tuple(cfg for _, _, cfg in fusion_inputs(spec)) + errors + watched, outputs=outputs,
        max_batch_size=spec.serving.max_batch_size, instance_count=spec.serving.instances,
        instance_kind="KIND_GPU" if on_gpu else "KIND_CPU", dynamic_batching=_batching(spec), parameters=parameters,
    )


# --------------------------------------------------------------------------- monitoring
def monitor_config(spec: PipelineSpec, profile: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The ``monitor`` parameter of the pipeline model (see ``runtime/tritonfleet_monitoring.py``):
    the reference profile and the tensor holding each monitored input (the fusion step gets the
    pipeline inputs as extra ``monitor_<input>`` inputs; a BLS model has them anyway)."""
    if not publishes_metrics(spec):
        return None
    watched = sorted((profile or {}).get("inputs") or {})
    prefix = MONITOR_PREFIX if spec.fusion_kind == "classification" else ""
    return {"pipeline": spec.name, "classes": spec.num_classes, "inputs": {n: f"{prefix}{n}" for n in watched},
            "profile": profile, "flush_s": spec.monitoring.flush_s}


# --------------------------------------------------------------------------- input guard
def input_checks(inputs: Sequence[TensorSpec]) -> dict[str, Any]:
    """input name -> what a request must satisfy (declared range, finite, dynamic-axis bounds)."""
    return {t.name: c for t in inputs if (c := t.checks())}


def guard_config(spec: PipelineSpec) -> ModelConfig | None:
    """The ensemble's first step when its inputs declare constraints (every model fed by the
    pipeline input must accept the request), else None: checks requests before the fan-out."""
    roots = [m for m in spec.members if not m.inputs_from]
    checks = merge_checks([input_checks(m.inputs) for m in roots])
    if not checks or spec.fusion_kind not in ("classification", "detection", "chain"):
        return None
    inputs = _tensors(spec.inputs)
    return ModelConfig(
        name=f"{spec.name}_guard", backend="python", inputs=inputs,
        outputs=tuple(TensorConfig(f"{t.name}_checked", t.dtype, t.dims) for t in inputs),
        max_batch_size=spec.serving.max_batch_size, instance_count=spec.serving.instances, instance_kind="KIND_CPU",
        dynamic_batching=_batching(spec), parameters={
            "input_checks": json.dumps(checks, sort_keys=True),
            # the guard counts the requests it refuses (tritonfleet_request_errors_total{reason="input"})
            **({"monitor": json.dumps({"pipeline": spec.name, "flush_s": spec.monitoring.flush_s}, sort_keys=True)}
               if publishes_metrics(spec) else {})},
    )


# --------------------------------------------------------------------------- pipeline model
def _tensor_name(member: str, output: str) -> str:
    return f"{member}__{output}"


def _needed_members(spec: PipelineSpec, targets: Sequence[MemberSpec]) -> list[MemberSpec]:
    """``targets`` and every member they read from, in spec order."""
    needed = {m.name for m in targets}
    for m in reversed(spec.members):
        if m.name in needed:
            needed |= {src for src, _ in spec.sources_of(m).values()}
    return [m for m in spec.members if m.name in needed]


def ensemble_config(spec: PipelineSpec, served: Mapping[str, str], fusion: ModelConfig | None,
                    guard: ModelConfig | None = None, member_errors: bool = False) -> ModelConfig:
    """The ensemble: the input guard (when inputs declare constraints), member steps (chained
    ones on their producers' outputs), then the fusion step, or for ``type: none`` the chosen
    member's outputs as the ensemble's. ``member_errors`` (local runners, with a fusion step):
    each member step hands its error text to the fusion step, which raises it."""
    inputs = _tensors(spec.inputs)
    fed = {t.name: t.name for t in inputs}
    if guard is not None:
        fed = {t.name: _tensor_name(guard.name, f"{t.name}_checked") for t in inputs}
    if fusion is not None:
        wanted = fusion_inputs(spec)
        consumed = {(m.name, out) for m, out, _ in wanted}
        last = spec.fused_members
    else:
        out_member = spec.model(spec.fusion.member) if spec.fusion.member else spec.members[-1]
        consumed = {(out_member.name, t.name) for t in out_member.outputs}
        last = [out_member]
    members = _needed_members(spec, last)
    for m in members:
        consumed |= set(spec.sources_of(m).values())

    steps = []
    if guard is not None:
        steps.append(EnsembleStep(guard.name, {t.name: t.name for t in inputs},
                                  {f"{t.name}_checked": fed[t.name] for t in inputs}))
    for m in members:
        sources = spec.sources_of(m)
        input_map = {t.name: _tensor_name(*sources[t.name]) if t.name in sources else fed[inputs[i].name]
                     for i, t in enumerate(m.inputs)}
        output_map = {t.name: _tensor_name(m.name, t.name) for t in m.outputs if (m.name, t.name) in consumed}
        if fusion is None and m is last[0]:
            output_map.update({t.name: t.name for t in m.outputs})
        if member_errors and fusion is not None:
            output_map[MEMBER_ERROR] = _tensor_name(m.name, MEMBER_ERROR)
        steps.append(EnsembleStep(served.get(m.name, m.name), input_map, output_map))
    if fusion is not None:
        handed_on = {f"member_error_{k}": _tensor_name(m.name, MEMBER_ERROR) for k, m in enumerate(members)}
        watched = {t.name[len(MONITOR_PREFIX):] for t in fusion.inputs if t.name.startswith(MONITOR_PREFIX)}
        steps.append(EnsembleStep(
            fusion.name,
            {**{cfg.name: _tensor_name(m.name, out) for m, out, cfg in fusion_inputs(spec)},
             **(handed_on if member_errors else {}),
             **{f"{MONITOR_PREFIX}{t.name}": fed[t.name] for t in inputs if t.name in watched}},
            {t.name: t.name for t in fusion.outputs},
        ))
        outputs = fusion.outputs
    else:
        outputs = _tensors(last[0].outputs)
    return ModelConfig(name=spec.name, platform="ensemble", inputs=inputs, outputs=outputs,
                       max_batch_size=spec.serving.max_batch_size, instance_kind=None, ensemble_steps=tuple(steps))


def bls_params(spec: PipelineSpec, served: Mapping[str, str],
               external: Mapping[str, ExternalModel]) -> dict[str, Any]:
    """JSON parameters of a cascade/route BLS model: which models it calls, how."""
    f = spec.fusion

    def stage(ref) -> dict[str, Any]:
        own = spec.stage_output(ref)
        if own is not None:
            output, inputs = own.name, [t.name for t in spec.model(ref.model).inputs]
        else:
            ext = external[ref.model]
            output, inputs = ref.output or ext.outputs[0].name, [t.name for t in ext.inputs]
        return {"model": served.get(ref.model, ref.model), "version": ref.version, "inputs": inputs,
                "output": output, "activation": ref.activation}

    params: dict[str, Any] = {"type": f.type, "inputs": [t.name for t in spec.inputs],
                              "outputs": {"probabilities": f.outputs.probabilities,
                                          "class_index": f.outputs.class_index}}
    if f.type == "cascade":
        params.update(stages=[stage(r) for r in f.stages], thresholds=list(f.thresholds),
                      stage_output=f.stage_output)
    else:
        params.update(current=stage(f.current), candidate=stage(f.candidate), candidate_fraction=f.candidate_fraction,
                      shadow=f.shadow, fallback=f.fallback, route_output=f.route_output)
    return params


def bls_config(spec: PipelineSpec, served: Mapping[str, str], external: Mapping[str, ExternalModel],
               monitor: Mapping[str, Any] | None = None) -> ModelConfig:
    f = spec.fusion
    extra = f.stage_output if f.type == "cascade" else f.route_output
    parameters = {"pipeline": json.dumps(bls_params(spec, served, external), sort_keys=True)}
    if monitor is not None:
        parameters["monitor"] = json.dumps(monitor, sort_keys=True)
    return ModelConfig(
        name=spec.name, backend="python", inputs=_tensors(spec.inputs),
        outputs=(TensorConfig(f.outputs.probabilities, "float32", (spec.num_classes,)),
                 TensorConfig(f.outputs.class_index, "int64", (1,)), TensorConfig(extra, "int64", (1,))),
        max_batch_size=spec.serving.max_batch_size, instance_count=spec.serving.instances, instance_kind="KIND_CPU",
        dynamic_batching=_batching(spec), parameters=parameters,
    )


# --------------------------------------------------------------------------- compiled pipeline
@dataclass(frozen=True)
class CompiledPipeline:
    """The pipeline compiled into one model (``serving.compile``), described the way the build
    describes a member (name, tensors, no chaining, the pipeline's precisions), so the member
    steps (lower precisions, measurements, engines, reuse) apply to it unchanged."""

    name: str
    inputs: tuple[TensorSpec, ...]     # the pipeline's
    outputs: tuple[TensorSpec, ...]    # the ensemble's: probabilities + class_index, or the chosen member's
    members: tuple[str, ...]           # merged members, in spec order
    fusion: str                        # fusion type, "none" for chaining
    mode: str | None = None            # vote: hard or soft
    max_batch_size: int | None = None  # None: the pipeline's serving.max_batch_size
    instances: int | None = None
    precisions: tuple[str, ...] | None = None  # None: the pipeline's precision.variants
    inputs_from: Mapping[str, str] = field(default_factory=dict)  # none: it takes the pipeline inputs

    @property
    def discrete(self) -> bool:
        """Its probabilities are vote shares (steps of 1/members), not smooth scores."""
        return self.fusion == "vote" and self.mode == "hard"

    @property
    def compared(self) -> tuple[str, ...]:
        """Outputs parity compares with PyTorch: the probabilities (the class index is their arg-max,
        or the vote's tie rule; its agreement is the record's top-1 agreement), or all of a chained
        member's outputs."""
        return (self.outputs[0].name,) if self.fusion != "none" else tuple(t.name for t in self.outputs)


def compiled_pipeline(spec: PipelineSpec) -> CompiledPipeline | None:
    """What ``serving.compile`` adds to ``spec``'s build, or None (not asked, or not compilable)."""
    name = spec.compiled_model_name
    if name is None:
        return None
    if spec.fusion_kind == "classification":
        f = spec.fusion
        outputs = (TensorSpec(name=f.outputs.probabilities, dtype="float32", shape=(spec.num_classes,)),
                   TensorSpec(name=f.outputs.class_index, dtype="int64", shape=(1,)))
        members = _needed_members(spec, spec.fused_members)
    else:
        chosen = spec.model(spec.fusion.member) if spec.fusion.member else spec.members[-1]
        outputs, members = tuple(chosen.outputs), _needed_members(spec, [chosen])
    return CompiledPipeline(name, tuple(spec.inputs), outputs, tuple(m.name for m in members), spec.fusion.type,
                            getattr(spec.fusion, "mode", None))


def compiled_config(spec: PipelineSpec, compiled: CompiledPipeline, target: str, precision: str = "fp32",
                    ) -> ModelConfig:
    """The compiled model: the ensemble's inputs and outputs; on local the onnxruntime runner of the
    members (checking declared input constraints like the ensemble's guard), on ngc ONNX Runtime."""
    common = dict(
        name=variant_name(compiled.name, precision), inputs=_tensors(compiled.inputs),
        outputs=_tensors(compiled.outputs), max_batch_size=spec.serving.max_batch_size,
        instance_count=spec.serving.instances, instance_kind=_instance_kind(spec, target),
        dynamic_batching=_batching(spec),
    )
    threads = str(spec.serving.onnxruntime_threads)
    if target == "ngc":
        optimization = None
        if spec.tensorrt.onnxruntime_accelerator:  # TensorRT takes the parts it can, ONNX Runtime the rest
            optimization = {"execution_accelerators": {"gpu_execution_accelerator": [{
                "name": "tensorrt", "parameters": {"precision_mode": TRT_PRECISION_MODE[precision],
                                                   "max_workspace_size_bytes": str(spec.tensorrt.workspace_mb << 20)},
            }]}}
        return ModelConfig(platform="onnxruntime_onnx", default_model_filename=ONNX_FILE,
                           parameters={"intra_op_thread_count": threads}, optimization=optimization, **common)
    checks = merge_checks([input_checks(m.inputs) for m in spec.members if not m.inputs_from])
    return ModelConfig(backend="python", parameters={
        "onnx_file": ONNX_FILE, "intra_op_threads": threads, "device": spec.device_for(target),
        "precision": precision, **({"input_checks": json.dumps(checks, sort_keys=True)} if checks else {})}, **common)


def compiled_engine_config(spec: PipelineSpec, compiled: CompiledPipeline, precision: str) -> ModelConfig:
    """A TensorRT engine of the compiled graph (its fusion math in float32: TensorRT has no float64)."""
    profile = spec.engine_profile(compiled)
    return ModelConfig(
        name=variant_name(compiled.name, precision, ArtifactFormat.PLAN), platform="tensorrt_plan",
        default_model_filename=PLAN_FILE, inputs=_tensors(compiled.inputs), outputs=_tensors(compiled.outputs),
        max_batch_size=profile.max, instance_count=spec.serving.instances, instance_kind="KIND_GPU",
        dynamic_batching=_batching(spec),
    )


def compiled_plans(spec: PipelineSpec, target: str, built: Mapping[str, Sequence[str]] | None = None,
                   engines: Mapping[str, Sequence[str]] | None = None) -> list[ModelPlan]:
    """The compiled model's variants (``built``/``engines`` as for members, under its name)."""
    compiled = compiled_pipeline(spec)
    if compiled is None:
        return []
    plans = [ModelPlan(ModelKind.COMPILED, compiled_config(spec, compiled, target, p), compiled.name, p)
             for p in (built or {}).get(compiled.name, spec.precisions_of(compiled))]
    plans += [ModelPlan(ModelKind.COMPILED, compiled_engine_config(spec, compiled, p), compiled.name, p,
                        ArtifactFormat.PLAN) for p in (engines or {}).get(compiled.name, ())]
    return plans


# --------------------------------------------------------------------------- everything
def plan_pipeline(
    spec: PipelineSpec,
    target: str,
    built: Mapping[str, Sequence[str]] | None = None,
    served: Mapping[str, str] | None = None,
    engines: Mapping[str, Sequence[str]] | None = None,
    fitted: Mapping[str, Any] | None = None,
    external: Mapping[str, ExternalModel] | None = None,
    torch: Mapping[str, Sequence[str]] | None = None,
    profile: Mapping[str, Any] | None = None,
) -> list[ModelPlan]:
    """Every model of the pipeline for ``target``, members first, the pipeline model last.

    ``built``: member -> precisions whose ONNX variant exists (default: all requested);
    ``served``: member -> precision the pipeline calls (default fp32);
    ``engines``: member -> precisions with a TensorRT engine (ngc only);
    ``fitted``: fusion parameters fitted at build time (auto weights, stacking);
    ``external``: models already in the repository that BLS stages call;
    ``torch``: member -> precisions with a TorchScript variant (default: all the spec asks for);
    ``profile``: the reference profile of the pipeline's traffic (monitoring), when computed.
    """
    check_target(spec, target)
    plans = []
    for m in spec.all_models:
        kind = ModelKind.MEMBER if m in spec.members else ModelKind.BASELINE
        for precision in (built or {}).get(m.name, spec.precisions_of(m)):
            plans.append(ModelPlan(kind, member_config(spec, m, target, precision), m.name, precision))
        for precision in (engines or {}).get(m.name, ()):
            plans.append(ModelPlan(kind, engine_config(spec, m, precision), m.name, precision, ArtifactFormat.PLAN))
        for precision in (torch or {}).get(m.name, torch_precisions(spec, m)):
            plans.append(ModelPlan(kind, torch_config(spec, m, target, precision), m.name, precision,
                                   ArtifactFormat.TORCHSCRIPT))
    fmt = ArtifactFormat(spec.formats.serve)
    names = {m.name: variant_name(m, (served or {}).get(m.name, "fp32"), fmt) for m in spec.members}
    guard = guard_config(spec)
    if guard is not None:
        plans.append(ModelPlan(ModelKind.FUSION, guard, format=ArtifactFormat.FUSION))
    if spec.fusion_kind in ("classification", "detection"):
        local = target == "local"  # members are Python runners that hand their errors on
        handing_on = [m.name for m in _needed_members(spec, spec.fused_members)] if local else []
        fusion = fusion_config(spec, fitted, handing_on,
                               monitor_config(spec, profile) if spec.fusion_kind == "classification" else None)
        plans.append(ModelPlan(ModelKind.FUSION, fusion, format=ArtifactFormat.FUSION))
        plans.append(ModelPlan(ModelKind.ENSEMBLE, ensemble_config(spec, names, fusion, guard, member_errors=local),
                               format=ArtifactFormat.ENSEMBLE))
    elif spec.fusion_kind == "chain":
        plans.append(ModelPlan(ModelKind.ENSEMBLE, ensemble_config(spec, names, None, guard),
                               format=ArtifactFormat.ENSEMBLE))
    else:
        names.update({m.name: variant_name(m, (served or {}).get(m.name, "fp32"), fmt) for m in spec.baselines})
        plans.append(ModelPlan(ModelKind.PIPELINE, bls_config(spec, names, external or {}, monitor_config(spec, profile)),
                               format=ArtifactFormat.BLS))
    return plans + compiled_plans(spec, target, built, engines)
