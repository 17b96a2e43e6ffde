"""The requests a load run cycles through: batches cut from a dataset (or generated), and
gRPC ``ModelInferRequest`` messages built once from tritonclient's public protobuf schema."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from tritonfleet.clients.errors import UsageError
from tritonfleet.clients.infer import infer_input
from tritonfleet.clients.metadata import ModelMetadata


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


def grpc_request(model: str, meta: ModelMetadata, batch: Sequence[np.ndarray], parameters: dict | None = None):
    """A ``ModelInferRequest`` protobuf with the batch as raw input contents."""
    from tritonclient.grpc import service_pb2
    from tritonclient.utils import np_to_triton_dtype, serialize_byte_tensor

    request = service_pb2.ModelInferRequest(model_name=model, model_version="")
    for spec, array in zip(meta.inputs, batch):
        array = np.ascontiguousarray(array)
        tensor = request.inputs.add()
        tensor.name = spec.name
        tensor.datatype = np_to_triton_dtype(array.dtype)
        tensor.shape.extend(array.shape)
        raw = serialize_byte_tensor(array).tobytes() if tensor.datatype == "BYTES" else array.tobytes()
        request.raw_input_contents.append(raw)
    for spec in meta.outputs:
        request.outputs.add().name = spec.name
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


def infer_inputs(module, meta: ModelMetadata, batch: Sequence[np.ndarray]) -> list:
    """``InferInput`` objects of a tritonclient module (HTTP, gRPC or their asyncio twins)."""
    return [infer_input(module, spec.name, array) for spec, array in zip(meta.inputs, batch)]


def error_text(exc: BaseException) -> str:
    """First line of a gRPC or tritonclient error, for counting errors by message."""
    if callable(getattr(exc, "details", None)):  # grpc.RpcError
        text = exc.details()
    elif callable(getattr(exc, "message", None)):  # tritonclient InferenceServerException
        text = exc.message()
    else:
        text = str(exc)
    return (text or type(exc).__name__).splitlines()[0][:160]
