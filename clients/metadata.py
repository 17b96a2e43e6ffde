"""What a served model takes and returns, as the server reports it (one type for every client)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tritonfleet.clients.errors import ServerError

# tritonfleet's own outputs of a local member runner (docs/RELIABILITY.md, "member errors inside an
# ensemble"): the error text it hands to the ensemble's final step, and a marker it never produces
# (asked for by callers that want all outputs, i.e. everyone but an ensemble step). Hidden from clients.
MEMBER_ERROR = "tritonfleet_error"
RAISE_MARKER = "tritonfleet_raise"
INTERNAL_OUTPUTS = frozenset({MEMBER_ERROR, RAISE_MARKER})


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str  # Triton short name, e.g. "FP32"
    shape: tuple[int, ...]  # with the batch dimension (-1) when the model batches

    @property
    def numpy_dtype(self) -> np.dtype:
        from tritonclient.utils import triton_to_np_dtype

        return np.dtype(triton_to_np_dtype(self.datatype))


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    max_batch_size: int

    @property
    def batching(self) -> bool:
        return self.max_batch_size > 0

    @classmethod
    def fetch(cls, client, model: str, url: str = "") -> ModelMetadata:
        """Ask a tritonclient ``InferenceServerClient`` (HTTP or gRPC) about ``model``."""
        grpc = type(client).__module__.startswith("tritonclient.grpc")
        kw = {"as_json": True} if grpc else {}
        try:
            meta = client.get_model_metadata(model, **kw)
            config = client.get_model_config(model, **kw)
        except Exception as exc:  # InferenceServerException of either protocol
            message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
            raise ServerError(explain(model, url, message or str(exc))) from None
        config = config.get("config", config)

        def tensors(items) -> tuple[TensorMeta, ...]:
            return tuple(TensorMeta(t["name"], t["datatype"], tuple(int(d) for d in t["shape"])) for t in items)

        outputs = [t for t in meta["outputs"] if t["name"] not in INTERNAL_OUTPUTS]
        return cls(model, tensors(meta["inputs"]), tensors(outputs), int(config.get("max_batch_size", 0)))

    def check_batch_size(self, batch_size: int) -> None:
        if self.batching and batch_size > self.max_batch_size:
            raise ServerError(f"batch size {batch_size} exceeds model '{self.name}' max_batch_size "
                              f"{self.max_batch_size}; send at most {self.max_batch_size} samples per request")


def explain(model: str, url: str, message: str) -> str:
    """A server error as one message that names the model, or says the server is unreachable."""
    unreachable = ("failed to connect", "connection refused", "unavailable", "connect call failed",
                   "name resolution")
    if any(token in message.lower() for token in unreachable):
        return (f"cannot reach tritonserver at {url} ({message.strip().splitlines()[0][:200]}); is it running? "
                "Start one with 'tritonfleet serve REPOSITORY'")
    return f"model '{model}' at {url}: {message}"
