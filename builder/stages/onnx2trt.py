"""ONNX -> TensorRT engine (``model.plan``), written for TensorRT 10 and 11.

Precision comes from the graph, not from builder flags: the network is strongly typed
(an opt-in flag on TensorRT 10, accepted and ignored on 11 where strong typing is the only
mode), so the fp32 ONNX builds an fp32 engine, the fp16-typed ONNX an fp16 engine and the
Q/DQ ONNX an int8 engine. ``BuilderFlag.FP16/INT8`` and calibrators, removed in 11, are
never used.

One optimization profile per engine: batch ``min=1``, ``opt``, ``max=max_batch_size`` (the
Triton config's ``max_batch_size`` must not exceed the profile's max), and for every dynamic
axis of an input its declared min/opt/max (:class:`~tritonfleet.builder.spec.axes.EngineProfile`). A persistent timing
cache makes rebuilds fast. ``import tensorrt`` happens only when an engine is built, so
this module imports on machines without TensorRT; :func:`tensorrt_version` says whether
it is there.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from tritonfleet.builder.errors import ConversionError
from tritonfleet.builder.spec.options import BatchProfile
from tritonfleet.builder.stages.base import Loader, resolve
from tritonfleet.clients.errors import MissingDependencyError

INSTALL_HINT = ("install TensorRT on a GPU host: pip install 'tritonfleet[trt]' (the engine must be built "
                "with the TensorRT version of the Triton container that serves it)")


def tensorrt_version() -> str | None:
    """The installed TensorRT version, or ``None`` when the package is absent."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt as trt
    except Exception:  # installed but unusable (no CUDA driver, broken wheel)
        return None
    return str(trt.__version__)


def _trt():
    if tensorrt_version() is None:
        raise MissingDependencyError(f"TensorRT is not installed; {INSTALL_HINT}")
    import tensorrt as trt

    return trt


class BuildEngine(Loader[Path]):
    """Build ``path`` (a serialized engine) from an ONNX file; returns the path."""

    def __init__(self, onnx_path: Any, path: Path, profile: BatchProfile, workspace_bytes: int = 1 << 30,
                 timing_cache: Path | None = None, name: str = "model"):
        self.onnx_path = onnx_path
        self.path = Path(path)
        self.profile = profile
        self.workspace_bytes = workspace_bytes
        self.timing_cache = Path(timing_cache) if timing_cache else None
        self.name = name

    def call_impl(self) -> Path:
        trt = _trt()
        source = Path(resolve(self.onnx_path))
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 0
        strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if strongly_typed is not None:
            flags |= 1 << int(strongly_typed)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(source)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ConversionError(f"{self.name}: TensorRT cannot parse {source.name}: {errors}")

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace_bytes)
        profile = builder.create_optimization_profile()
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            per_sample = tuple(int(d) for d in tuple(tensor.shape)[1:])
            profile.set_shape(tensor.name, *self.profile.shapes(per_sample, tensor.name))
        config.add_optimization_profile(profile)

        cache_bytes = self.timing_cache.read_bytes() if self.timing_cache and self.timing_cache.is_file() else b""
        cache = config.create_timing_cache(cache_bytes)
        config.set_timing_cache(cache, False)

        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ConversionError(f"{self.name}: TensorRT could not build an engine from {source.name} "
                                  "(see the TensorRT log above)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(bytes(serialized))
        if self.timing_cache is not None:
            _write_atomic(self.timing_cache, bytes(config.get_timing_cache().serialize()))
        return self.path


def build_engine(*args, **kwargs) -> Path:
    """Eager twin of :class:`BuildEngine`."""
    return BuildEngine(*args, **kwargs)()


def engine_record(profile: BatchProfile) -> dict[str, Any]:
    """What the manifest keeps beside an engine: it only runs on the TensorRT that built it."""
    shape = profile.to_dict() if hasattr(profile, "to_dict") else dict(profile.__dict__)
    record: dict[str, Any] = {"tensorrt": tensorrt_version(), "profile": shape}
    try:
        import torch

        if torch.cuda.is_available():
            record["gpu"] = torch.cuda.get_device_name(0)
            record["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    except Exception:
        pass
    return record


def run_engine(path: Path, inputs: Mapping[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """Run a serialized engine on a CUDA GPU (buffers through torch), ``batch_size`` rows
    at a time; returns the outputs as numpy arrays."""
    trt = _trt()
    import torch

    if not torch.cuda.is_available():
        raise MissingDependencyError("running a TensorRT engine needs a CUDA GPU visible to torch")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    engine = runtime.deserialize_cuda_engine(Path(path).read_bytes())
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
    stream = torch.cuda.Stream()
    total = len(next(iter(inputs.values())))
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names if not is_input[n]}
    for start in range(0, total, batch_size):
        buffers: dict[str, torch.Tensor] = {}
        for name in (n for n in names if is_input[n]):
            array = np.ascontiguousarray(inputs[name][start:start + batch_size])
            buffers[name] = torch.from_numpy(array).cuda()
            context.set_input_shape(name, tuple(array.shape))
        for name in names:
            if not is_input[name]:
                np_dtype = trt.nptype(engine.get_tensor_dtype(name))
                dtype = torch.from_numpy(np.empty(0, dtype=np_dtype)).dtype
                buffers[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
            context.set_tensor_address(name, buffers[name].data_ptr())
        if not context.execute_async_v3(stream.cuda_stream):
            raise ConversionError(f"TensorRT failed to run {path}")
        stream.synchronize()
        for name in chunks:
            chunks[name].append(buffers[name].cpu().numpy())
    return {n: np.concatenate(parts) for n, parts in chunks.items()}


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
