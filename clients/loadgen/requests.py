"""The requests a load run cycles through: batches cut from a dataset (or generated), and
gRPC ``ModelInferRequest`` messages built once from tritonclient's public protobuf schema.
With shared memory (:func:`place_in_shared_memory`) the batches are written once into
registered regions and the requests carry only where they lie, as perf_analyzer's
``--shared-memory`` does; the outputs of all requests go to one region per output (their
contents are not read during a load run)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tritonfleet.clients.errors import UsageError
from tritonfleet.clients.infer import infer_input
from tritonfleet.clients.metadata import ModelMetadata
from tritonfleet.clients.shm import SharedMemoryPool, output_bytes

SHARED_INPUT_BUDGET = 256 << 20  # bytes of distinct input batches kept in shared memory

# where one tensor lies: (region name, byte offset in the registered memory, byte size)
Placement = tuple[str, int, int]


@dataclass(frozen=True)
class SharedMemoryLayout:
    batches: list[tuple[np.ndarray, ...]]   # the batches written (their shapes and dtypes go in the requests)
    inputs: list[list[Placement]]           # per batch, per input
    outputs: list[Placement]                # per output, shared by every request


def place_in_shared_memory(pool: SharedMemoryPool, meta: ModelMetadata, batches, batch_size: int) -> SharedMemoryLayout:
    """Write the batches (as many as fit ``SHARED_INPUT_BUDGET``, at least one) into one input
    region and make one region per output, all registered through ``pool``."""
    sizes = [sum(np.asarray(a).nbytes for a in b) for b in batches]
    keep = max(1, min(len(batches), SHARED_INPUT_BUDGET // max(1, max(sizes))))
    region = pool.region("inputs", sum(sizes[:keep]))
    inputs, at = [], 0
    for batch in batches[:keep]:
        placed = []
        for array in batch:
            n = region.write(array, at)
            placed.append((region.name, region.offset + at, n))
            at += n
        inputs.append(placed)
    outputs = []
    for tensor in meta.outputs:
        n = output_bytes(tensor, batch_size if meta.batching else None)
        out = pool.region(f"out:{tensor.name}", n)
        outputs.append((out.name, out.offset, n))
    return SharedMemoryLayout(list(batches[:keep]), inputs, outputs)


def _set_shared_memory(parameters, placement: Placement) -> None:
    region, offset, size = placement
    parameters["shared_memory_region"].string_param = region
    parameters["shared_memory_byte_size"].int64_param = size
    if offset:
        parameters["shared_memory_offset"].int64_param = offset


def make_batches(inputs: Sequence[np.ndarray], batch_size: int, limit: int = 64) -> list[tuple[np.ndarray, ...]]:
    """Up to ``limit`` distinct batches cut from a dataset, cycled by the generator."""
    n = len(inputs[0])
    if n == 0:
        raise UsageError("no samples to send: the dataset is empty")
    batches = []
    for start in itertools.islice(itertools.count(0, batch_size), limit):
        idx = np.arange(start, start + batch_size) % n
        batches.append(tuple(np.ascontiguousarray(x[idx]) for x in inputs))
        if start + batch_size >= n:
            break
    return batches


def random_inputs(meta: ModelMetadata, n: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Samples of the model's signature: floats in [0, 1), integers in [0, 10); variable
    dimensions get size 1."""
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor in meta.inputs:
        dims = [1 if d == -1 else d for d in (tensor.shape[1:] if meta.batching else tensor.shape)]
        dtype = tensor.numpy_dtype
        shape = [n, *dims] if meta.batching else dims
        if np.issubdtype(dtype, np.floating):
            arrays.append(rng.random(shape).astype(dtype))
        else:
            arrays.append(rng.integers(0, 10, shape).astype(dtype))
    return arrays


def request_batches(meta: ModelMetadata, batch_size: int, inputs: Sequence[np.ndarray] | None):
    """The batches to send: cut from ``inputs`` or generated, checked against the model."""
    meta.check_batch_size(batch_size)
    dataset = inputs if inputs is not None else random_inputs(meta)
    return make_batches(dataset, batch_size) if meta.batching else [tuple(dataset)]


def grpc_request(model: str, meta: ModelMetadata, batch: Sequence[np.ndarray], parameters: dict | None = None,
                 inputs_at: Sequence[Placement] | None = None, outputs_at: Sequence[Placement] | None = None,
                 version: str = ""):
    """A ``ModelInferRequest`` protobuf with the batch as raw input contents, or, with
    ``inputs_at``/``outputs_at``, pointing at where the batch and the outputs lie in shared memory."""
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import np_to_triton_dtype, serialize_byte_tensor

    request = service_pb2.ModelInferRequest(model_name=model, model_version=version)
    for i, (spec, array) in enumerate(zip(meta.inputs, batch)):
        array = np.ascontiguousarray(array)
        tensor = request.inputs.add()
        tensor.name = spec.name
        tensor.datatype = np_to_triton_dtype(array.dtype)
        tensor.shape.extend(array.shape)
        if inputs_at is not None:
            _set_shared_memory(tensor.parameters, inputs_at[i])
            continue
        raw = serialize_byte_tensor(array).tobytes() if tensor.datatype == "BYTES" else array.tobytes()
        request.raw_input_contents.append(raw)
    for i, spec in enumerate(meta.outputs):
        output = request.outputs.add()
        output.name = spec.name
        if outputs_at is not None:
            _set_shared_memory(output.parameters, outputs_at[i])
    for key, value in (parameters or {}).items():
        param = request.parameters[key]
        if isinstance(value, bool):
            param.bool_param = value
        elif isinstance(value, int):
            param.int64_param = value
        elif isinstance(value, float):
            param.double_param = value
        else:
            param.string_param = str(value)
    return request


def infer_inputs(module, meta: ModelMetadata, batch: Sequence[np.ndarray],
                 inputs_at: Sequence[Placement] | None = None) -> list:
    """``InferInput`` objects of a tritonclient module (HTTP, gRPC or their asyncio twins),
    holding the batch or pointing at where it lies in shared memory."""
    if inputs_at is None:
        return [infer_input(module, spec.name, array) for spec, array in zip(meta.inputs, batch)]
    from tritonclient.utils import np_to_triton_dtype

    tensors = []
    for spec, array, (region, offset, size) in zip(meta.inputs, batch, inputs_at):
        tensor = module.InferInput(spec.name, list(np.shape(array)), np_to_triton_dtype(np.asarray(array).dtype))
        tensor.set_shared_memory(region, size, offset)
        tensors.append(tensor)
    return tensors


def requested_outputs(module, meta: ModelMetadata, outputs_at: Sequence[Placement] | None = None) -> list:
    """``InferRequestedOutput`` objects, written into shared memory when ``outputs_at`` says where."""
    outputs = [module.InferRequestedOutput(t.name) for t in meta.outputs]
    for output, (region, offset, size) in zip(outputs, outputs_at or ()):
        output.set_shared_memory(region, size, offset)
    return outputs


def error_text(exc: BaseException) -> str:
    """First line of a gRPC or tritonclient error, for counting errors by message."""
    if callable(getattr(exc, "details", None)):  # grpc.RpcError
        text = exc.details()
    elif callable(getattr(exc, "message", None)):  # tritonclient InferenceServerException
        text = exc.message()
    else:
        text = str(exc)
    return (text or type(exc).__name__).splitlines()[0][:160]
