"""The teacher of a distillation: a built ensemble, run in-process from the repository's own files.

:func:`load_teacher` reads the ensemble's ``config.pbtxt`` and walks its steps the way Triton's
ensemble scheduler does: each step's model at the version Triton serves (its version policy,
else the newest on disk), its ``input_map``/``output_map`` wiring tensors between steps, then

* a member step runs that version's ``model.onnx`` with onnxruntime (``local``: the file the
  Python-backend runner loads; ``ngc``: the ONNX Runtime backend's file), or its ``model.pt``
  (TorchScript members);
* the input guard runs the declared checks (``input_checks.py``), so data the served ensemble
  would refuse is refused here too;
* the fusion step runs :func:`tritonfleet.builder.runtime.ops.fuse` (the code copied into the
  fusion model) with the parameters in its config and ``params.json`` (fitted weights, stacking
  coefficients).

So the teacher's probabilities are what the served ensemble answers, not what the PyTorch
members would compute (tests check the two against a live server). TensorRT engines need a GPU
and are refused with one message.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonfleet.builder.errors import RepositoryError
from tritonfleet.builder.repository.versions import served_versions
from tritonfleet.builder.runtime import ops
from tritonfleet.builder.runtime.input_checks import InputError, check_inputs
from tritonfleet.clients.dtypes import numpy_dtype
from tritonfleet.clients.manifest import read_manifest_dict
from tritonfleet.clients.model_config import parse_pbtxt, tensors_of

CONFIG = "config.pbtxt"


@dataclass(frozen=True)
class Step:
    """One ensemble step as the teacher runs it."""

    model: str
    version: int
    kind: str                      # onnx | torchscript | guard | fusion
    inputs: dict[str, str]         # model input -> ensemble tensor
    outputs: dict[str, str]        # model output -> ensemble tensor
    path: Path | None = None       # the artifact (onnx, torchscript)
    input_order: tuple[str, ...] = ()
    output_order: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)  # fusion parameters or the guard's checks
    needs: tuple[str, ...] = ()    # inputs the step cannot run without (the artifact's, the fused scores)


@dataclass(frozen=True)
class TeacherOutputs:
    probabilities: np.ndarray          # [samples, classes] float32, as the ensemble answers
    classes: np.ndarray                # [samples] int64: the class the ensemble answers (its class_index)
    scores: dict[str, np.ndarray]      # served member model -> the scores it feeds into the fusion step


@dataclass(frozen=True)
class Teacher:
    repository: Path
    pipeline: str
    inputs: dict[str, tuple[str, tuple[int, ...]]]  # ensemble input -> (dtype, dims)
    steps: tuple[Step, ...]
    probabilities: str                 # the ensemble tensor holding the fused probabilities
    class_index: str | None            # the ensemble tensor holding the class it answers
    members: tuple[tuple[str, str], ...]  # (served member model, ensemble tensor it feeds the fusion)
    fusion: dict[str, Any]
    fingerprint: str                   # sha256 over the files of the ensemble and every model it calls

    @property
    def versions(self) -> dict[str, int]:
        return {s.model: s.version for s in self.steps}

    def run(self, inputs: Sequence[np.ndarray], batch_size: int = 512) -> TeacherOutputs:
        """The ensemble's outputs on ``inputs`` (one array per ensemble input, samples first)."""
        if len(inputs) != len(self.inputs):
            raise RepositoryError(f"the '{self.pipeline}' ensemble takes {len(self.inputs)} inputs "
                                  f"({', '.join(self.inputs)}), got {len(inputs)} arrays")
        arrays = {name: np.asarray(x, dtype=numpy_dtype(dtype))
                  for (name, (dtype, _)), x in zip(self.inputs.items(), inputs)}
        n = len(next(iter(arrays.values())))
        runners: dict[str, Any] = {}  # artifact path -> onnxruntime session or TorchScript module, for this call
        parts = [self._run_batch({k: v[s:s + batch_size] for k, v in arrays.items()}, runners)
                 for s in range(0, n, batch_size)]
        probabilities = np.concatenate([p[self.probabilities] for p in parts])
        scores = {model: np.concatenate([p[tensor] for p in parts]) for model, tensor in self.members}
        classes = (np.concatenate([p[self.class_index] for p in parts]).reshape(n, -1)[:, 0].astype(np.int64)
                   if self.class_index else probabilities.argmax(1))
        return TeacherOutputs(probabilities.astype(np.float32), classes, scores)

    def _run_batch(self, arrays: dict[str, np.ndarray], runners: dict[str, Any]) -> dict[str, np.ndarray]:
        env = dict(arrays)
        for step in self.steps:
            # tensors no step computes here (a runner's optional side outputs, such as per-request error
            # strings) are left out; a step that needs one of them fails below, naming it
            feeds = {name: env[tensor] for name, tensor in step.inputs.items() if tensor in env}
            produced = _run_step(step, feeds, self.pipeline, runners)
            env.update({tensor: produced[name] for name, tensor in step.outputs.items() if name in produced})
        return env


def _run_step(step: Step, feeds: dict[str, np.ndarray], pipeline: str, runners: dict[str, Any]) -> dict[str, np.ndarray]:
    missing = [name for name in step.needs if name not in feeds]
    if missing:
        raise RepositoryError(f"the '{pipeline}' ensemble's step '{step.model}' needs {', '.join(missing)}, which no "
                              "step before it produces when run in-process")
    if step.kind == "guard":
        try:
            check_inputs(feeds, step.params)
        except InputError as exc:
            raise RepositoryError(f"the '{pipeline}' ensemble refuses these samples ({step.model}): {exc}") from None
        return {f"{name}_checked": array for name, array in feeds.items()}
    if step.kind == "fusion":
        scores = [feeds[name] for name in step.params["inputs"]]
        fused = ops.fuse(step.params, scores)
        return {name: np.asarray(fused[key]) for key, name in step.params["outputs"].items()}
    key = str(step.path)
    if step.kind == "torchscript":
        import torch

        from tritonfleet.builder.stages.parity import flatten_outputs

        if key not in runners:
            runners[key] = torch.jit.load(key, map_location="cpu").eval()
        with torch.no_grad():
            out = runners[key](*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in step.input_order))
        # the model's own outputs come first in its config; a runner may list extra ones after them
        return {n: o.detach().numpy() for n, o in zip(step.output_order, flatten_outputs(out, step.output_order))}
    if key not in runners:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        runners[key] = ort.InferenceSession(key, options, providers=["CPUExecutionProvider"])
    session = runners[key]
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {name: feeds[name] for name in step.needs})))


# --------------------------------------------------------------------------- loading
def load_teacher(repository: Path, pipeline: str) -> Teacher:
    """The ensemble ``pipeline`` of ``repository`` as a callable teacher (see the module docstring)."""
    repo = Path(repository).resolve()
    manifest = read_manifest_dict(repo)
    if pipeline not in manifest["pipelines"]:
        built = ", ".join(sorted(manifest["pipelines"])) or "none"
        raise RepositoryError(f"pipeline '{pipeline}' is not built in {repo} (pipelines there: {built}); "
                              "run 'tritonfleet build SPEC' first")
    proto = _config(repo, pipeline)
    if proto.platform != "ensemble":
        raise RepositoryError(f"'{pipeline}' in {repo} is not an ensemble (a BLS pipeline such as a cascade or a "
                              "route); distillation learns from an ensemble's fused probabilities")
    steps, producers = [], {}
    for s in proto.ensemble_scheduling.step:
        step = _step(repo, s.model_name, s.model_version, dict(s.input_map), dict(s.output_map))
        steps.append(step)
        producers.update({tensor: step.model for tensor in step.outputs.values()})
    fusion = next((s for s in steps if s.kind == "fusion"), None)
    if fusion is None or "probabilities" not in fusion.params.get("outputs", {}):
        raise RepositoryError(f"the '{pipeline}' ensemble has no classification fusion step (class "
                              "probabilities); distillation needs one")
    probabilities = fusion.outputs.get(fusion.params["outputs"]["probabilities"])
    if probabilities is None:
        raise RepositoryError(f"the '{pipeline}' ensemble does not pass its fused probabilities on")
    class_index = fusion.outputs.get(fusion.params["outputs"].get("class_index", ""))
    members = tuple((producers[fusion.inputs[name]], fusion.inputs[name]) for name in fusion.params["inputs"])
    inputs = tensors_of(proto, "input")
    return Teacher(repo, pipeline, inputs, tuple(steps), probabilities, class_index, members, fusion.params,
                   _fingerprint(manifest, [pipeline, *(s.model for s in steps)]))


def teacher_fingerprint(repository: Path, pipeline: str) -> str | None:
    """The fingerprint the ensemble has in the repository now (None: not an ensemble there)."""
    manifest = read_manifest_dict(Path(repository))
    try:
        proto = _config(Path(repository), pipeline)
    except RepositoryError:
        return None
    return _fingerprint(manifest, [pipeline, *(s.model_name for s in proto.ensemble_scheduling.step)])


def _fingerprint(manifest: Mapping[str, Any], models: Sequence[str]) -> str:
    records = manifest["models"]
    blob = {m: {"files": (records.get(m) or {}).get("files"), "version_policy": (records.get(m) or {}).get(
        "version_policy")} for m in models}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def _config(repo: Path, model: str):
    path = repo / model / CONFIG
    if not path.is_file():
        raise RepositoryError(f"model '{model}' has no {CONFIG} in {repo}; rebuild the repository "
                              "('tritonfleet build SPEC') or check it with 'tritonfleet verify'")
    try:
        return parse_pbtxt(path.read_text(encoding="utf-8"))
    except Exception as exc:
        raise RepositoryError(f"{path} does not parse through Triton's schema ({exc}); run 'tritonfleet verify'") \
            from None


def _step(repo: Path, model: str, version: int, input_map: dict[str, str], output_map: dict[str, str]) -> Step:
    proto = _config(repo, model)
    served, available = served_versions(repo, model) if (repo / model).is_dir() else ([], [])
    if version == -1:
        version = max(served) if served else 1
    folder = repo / model / str(version)
    params = {k: v.string_value for k, v in proto.parameters.items()}
    common = dict(model=model, version=version, inputs=input_map, outputs=output_map)
    if proto.platform == "onnxruntime_onnx" or (proto.backend == "python" and "onnx_file" in params):
        path = _artifact(folder / (params.get("onnx_file") or proto.default_model_filename or "model.onnx"), model)
        return Step(kind="onnx", path=path, needs=_onnx_inputs(path), **common)
    if proto.platform == "pytorch_libtorch" or (proto.backend == "python" and "torchscript_file" in params):
        path = folder / (params.get("torchscript_file") or proto.default_model_filename or "model.pt")
        order = tuple(t.name for t in proto.input if not t.optional)
        return Step(kind="torchscript", path=_artifact(path, model), input_order=order, needs=order,
                    output_order=tuple(t.name for t in proto.output), **common)
    if proto.backend == "python" and "fusion" in params:
        fusion = json.loads(params["fusion"])
        extra = folder / "params.json"  # fitted stacking coefficients
        if extra.is_file():
            fusion.update(json.loads(extra.read_text(encoding="utf-8")))
        return Step(kind="fusion", params=fusion, needs=tuple(fusion.get("inputs", ())), **common)
    if proto.backend == "python" and "input_checks" in params:
        return Step(kind="guard", params=json.loads(params["input_checks"]), needs=tuple(t.name for t in proto.input),
                    **common)
    runs = proto.platform or f"backend {proto.backend}"
    raise RepositoryError(f"ensemble step '{model}' ({runs}) cannot be run in-process on the CPU: the teacher runs "
                          "ONNX and TorchScript members (a TensorRT engine needs its GPU); serve the ensemble's "
                          "members as ONNX (formats.serve: onnx) to distil it")


def _onnx_inputs(path: Path) -> tuple[str, ...]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    return tuple(i.name for i in graph.input if i.name not in initializers)


def _artifact(path: Path, model: str) -> Path:
    if not path.is_file():
        raise RepositoryError(f"ensemble step '{model}': {path} is missing; run 'tritonfleet verify' (or build again)")
    return path
