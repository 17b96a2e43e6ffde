"""Send numpy batches to a Triton model and get numpy outputs back (HTTP or gRPC).

A thin layer over ``tritonclient`` that knows the model's signature, splits large inputs
into batches the model accepts, checks that every output came back with the request's
batch size (an empty tensor is what the Python backend returns when its interpreter has
numpy >= 2), retries idempotent inference on transient errors, and turns server errors
into :class:`ServerError` naming the model. With ``shared_memory="system"`` or ``"cuda"``
inputs and outputs travel through registered shared-memory regions (:mod:`.shm`) instead of
the request and response messages.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from tritonfleet.clients.errors import ServerError, UsageError
from tritonfleet.clients.metadata import ModelMetadata, explain
from tritonfleet.clients.shm import SharedMemoryPool, check_kind, output_bytes

# Errors worth retrying: the server or a model is (re)starting. "no available versions" is a
# model being reloaded (e.g. by the supervisor after its stub died).
TRANSIENT = ("UNAVAILABLE", "Connection refused", "Broken pipe", "Stub process", "not ready",
             "connection reset", "Socket closed", "no available versions")


class TritonClient:
    """``with TritonClient("127.0.0.1:8001") as c: c.infer("digits", x)``."""

    def __init__(self, url: str, protocol: Literal["grpc", "http"] = "grpc", timeout: float = 60.0,
                 retries: int = 0, backoff: float = 0.2, shared_memory: str = "none", device_id: int = 0):
        self.url = url
        self.protocol = protocol
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.retried = 0  # retries made so far (each transient error retried counts once)
        self.shared_memory = check_kind(shared_memory)
        self.device_id = device_id  # the GPU of CUDA shared-memory regions
        self._shm: SharedMemoryPool | None = None
        if protocol == "grpc":
            import tritonclient.grpc as module
            self._client = module.InferenceServerClient(url)
        elif protocol == "http":
            import tritonclient.http as module
            self._client = module.InferenceServerClient(
                url, connection_timeout=timeout, network_timeout=timeout
            )
        else:
            raise UsageError(f"protocol must be 'grpc' or 'http', not {protocol!r}")
        self._module = module
        self._meta: dict[str, ModelMetadata] = {}

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._shm is not None:
            self._shm.close()
            self._shm = None
        self._client.close()

    # ------------------------------------------------------------------ server state
    def is_ready(self, model: str | None = None, version: int | str = "") -> bool:
        try:
            return self._client.is_model_ready(model, str(version)) if model else self._client.is_server_ready()
        except Exception:
            return False

    def wait_ready(self, models: Sequence[str] = (), timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        pending = list(models) or [None]
        while pending and time.monotonic() < deadline:
            pending = [m for m in pending if not self.is_ready(m)]
            if pending:
                time.sleep(0.2)
        if pending:
            what = ", ".join(m or "server" for m in pending)
            raise ServerError(f"not ready after {timeout:.0f}s at {self.url}: {what}")

    def models(self) -> dict[str, str]:
        """``{model name: state}`` from the repository index."""
        index = self._client.get_model_repository_index(**self._json_kw())
        entries = index if isinstance(index, list) else index.get("models", [])
        return {e["name"]: e.get("state", "") for e in entries}

    def metadata(self, model: str) -> ModelMetadata:
        if model not in self._meta:
            self._meta[model] = ModelMetadata.fetch(self._client, model, self.url)
        return self._meta[model]

    def load_model(self, model: str, timeout: float = 60.0, config: str | None = None) -> None:
        """Load (or reload) a model; the server must run with explicit model control. ``config``:
        a ModelConfig as JSON that replaces the model's config.pbtxt for this load (no file changes)."""
        try:
            self._client.load_model(model, **({"config": config} if config is not None else {}))
        except self._module.InferenceServerException as exc:
            raise ServerError(f"cannot load model '{model}' at {self.url}: {exc.message()}") from None
        self._meta.pop(model, None)
        self.wait_ready([model], timeout)

    def unload_model(self, model: str) -> None:
        try:
            self._client.unload_model(model)
        except self._module.InferenceServerException as exc:
            raise ServerError(f"cannot unload model '{model}' at {self.url}: {exc.message()}") from None
        self._meta.pop(model, None)

    def statistics(self, model: str = "") -> list[dict]:
        stats = self._client.get_inference_statistics(model, **self._json_kw())
        return stats.get("model_stats", [])

    # ------------------------------------------------------------------ inference
    def infer(self, model: str, inputs: np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray],
              outputs: Sequence[str] | None = None, version: int | str = "") -> dict[str, np.ndarray]:
        """One request; ``inputs`` by name, or positionally in the model's input order;
        ``version``: a loaded version of the model (default: the server's choice, the newest loaded)."""
        meta = self.metadata(model)
        named = self._name_inputs(meta, inputs)
        if meta.max_batch_size > 0:
            sizes = {name: len(array) if array.ndim else 0 for name, array in named.items()}
            if 0 in sizes.values():
                raise ServerError(f"model '{model}': empty batch ({sizes} samples); send at least one sample")
        wanted = list(outputs) if outputs else [t.name for t in meta.outputs]
        batch = len(next(iter(named.values()))) if meta.max_batch_size > 0 else None
        if self.shared_memory == "none":
            request = [infer_input(self._module, name, array) for name, array in named.items()]
            requested = [self._module.InferRequestedOutput(n) for n in wanted]
        else:
            request, requested = self._shared_memory_request(meta, named, wanted, batch)

        attempt = 0
        while True:
            try:
                result = self._client.infer(model, request, model_version=str(version), outputs=requested,
                                            **self._timeout_kw())
                break
            except self._module.InferenceServerException as exc:
                message = exc.message() or str(exc)
                if attempt < self.retries and any(t.lower() in message.lower() for t in TRANSIENT):
                    time.sleep(self.backoff * 2 ** attempt)
                    attempt += 1
                    self.retried += 1
                    continue
                raise ServerError(explain(model, self.url, message)) from None

        out = {}
        for name in wanted:
            try:
                array = result.as_numpy(name) if self.shared_memory == "none" else \
                    self._shared_memory_output(result, name)
                got = "nothing" if array is None else f"shape {list(array.shape)}"
            except ValueError:  # tritonclient: the data does not fill the declared shape (0 bytes)
                array, got = None, "an empty tensor"
            if array is None or (batch and (array.ndim == 0 or array.shape[0] != batch)):
                raise ServerError(
                    f"model '{model}' returned {got} for output '{name}' on a batch of {batch}; if it is a "
                    "Python-backend model that hands numpy arrays to pb_utils.Tensor, its stub (built for numpy < 2, "
                    "as tritonserver 2.51's is) misreads numpy 2: run the server's Python with numpy < 2, or build "
                    "the model with tritonfleet, whose runtime crosses through DLPack there"
                )
            out[name] = array
        return out

    def infer_batched(self, model: str, inputs: np.ndarray | Sequence[np.ndarray] | Mapping[str, np.ndarray],
                      batch_size: int | None = None, outputs: Sequence[str] | None = None,
                      version: int | str = "") -> dict[str, np.ndarray]:
        """Split ``inputs`` into batches of at most ``batch_size`` (default: max batch)."""
        meta = self.metadata(model)
        named = self._name_inputs(meta, inputs)
        n = len(next(iter(named.values())))
        size = batch_size or meta.max_batch_size or n
        if meta.max_batch_size and size > meta.max_batch_size:
            raise ServerError(f"batch_size {size} exceeds model '{model}' max_batch_size {meta.max_batch_size}")
        parts = [self.infer(model, {k: v[s:s + size] for k, v in named.items()}, outputs, version)
                 for s in range(0, n, size)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    # ------------------------------------------------------------------ shared memory
    def _shared_memory_request(self, meta: ModelMetadata, named: Mapping[str, np.ndarray], wanted: Sequence[str],
                               batch: int | None):
        """Inputs written into (and outputs requested into) this client's registered regions."""
        if self._shm is None:
            self._shm = SharedMemoryPool(self._client, self.shared_memory, self.device_id)
        from tritonclient.utils import np_to_triton_dtype

        request = []
        for name, array in named.items():
            array = np.ascontiguousarray(array)
            region = self._shm.region(f"in:{name}", array.nbytes)
            region.write(array)
            tensor = self._module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_shared_memory(region.name, array.nbytes, region.offset)
            request.append(tensor)
        requested = []
        by_name = {t.name: t for t in meta.outputs}
        for name in wanted:
            nbytes = output_bytes(by_name[name], batch)
            region = self._shm.region(f"out:{name}", nbytes)
            output = self._module.InferRequestedOutput(name)
            output.set_shared_memory(region.name, nbytes, region.offset)
            requested.append(output)
        return request, requested

    def _shared_memory_output(self, result, name: str) -> np.ndarray | None:
        from tritonclient.utils import triton_to_np_dtype

        tensor = result.get_output(name)
        if tensor is None:
            return None
        shape, datatype = (tensor["shape"], tensor["datatype"]) if isinstance(tensor, dict) else \
            (list(tensor.shape), tensor.datatype)
        region = self._shm.regions[f"out:{name}"]
        return region.read(np.dtype(triton_to_np_dtype(datatype)), [int(d) for d in shape])

    # ------------------------------------------------------------------ helpers
    def _name_inputs(self, meta: ModelMetadata, inputs) -> dict[str, np.ndarray]:
        names = [t.name for t in meta.inputs]
        if isinstance(inputs, Mapping):
            unknown = sorted(set(inputs) - set(names))
            missing = sorted(set(names) - set(inputs))
            if unknown or missing:
                raise ServerError(
                    f"model '{meta.name}' takes inputs {names}; got unknown {unknown}, missing {missing}"
                )
            return {n: np.asarray(inputs[n]) for n in names}
        arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
        if len(arrays) != len(names):
            raise ServerError(f"model '{meta.name}' takes {len(names)} inputs ({names}), got {len(arrays)}")
        return {n: np.asarray(a) for n, a in zip(names, arrays)}

    def _json_kw(self) -> dict:
        return {"as_json": True} if self.protocol == "grpc" else {}

    def _timeout_kw(self) -> dict:
        return {"client_timeout": self.timeout} if self.protocol == "grpc" else {}


def infer_input(module, name: str, array: np.ndarray):
    """A tritonclient ``InferInput`` (of ``module``: HTTP, gRPC or an asyncio twin) holding ``array``."""
    from tritonclient.utils import np_to_triton_dtype

    array = np.ascontiguousarray(array)
    datatype = np_to_triton_dtype(array.dtype)
    if datatype is None:
        raise UsageError(f"input '{name}': numpy dtype {array.dtype} has no Triton equivalent")
    tensor = module.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor
