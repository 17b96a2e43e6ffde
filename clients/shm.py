"""Triton shared memory for request inputs and outputs: system (POSIX) and CUDA.

With shared memory a request carries only region names, offsets and sizes; the tensors stay
where the client put them and Triton reads (and writes) them in place. So a served ÷
in-process ratio measures the server rather than the wire.

* ``system``: a POSIX shared-memory block (Python's ``multiprocessing.shared_memory``, i.e.
  ``shm_open`` under ``/dev/shm``) registered with ``register_system_shared_memory(name, key,
  size)``;
* ``cuda``: a device buffer allocated by torch and exported with CUDA IPC
  (``untyped_storage()._share_cuda_()`` gives the ``cudaIpcMemHandle_t`` of its allocation and
  the buffer's offset in it), registered with ``register_cuda_shared_memory(name, handle,
  device, size)``. Inputs are copied in on the device when they are CUDA tensors, so nothing
  crosses the host.

The protocol is Triton's (the ``shared_memory_region`` / ``_byte_size`` / ``_offset``
parameters of each input and requested output). tritonclient's own region helpers are not
used: ``tritonclient.utils.shared_memory`` needs a C library only tritonclient's platform
wheel ships, and ``tritonclient.utils.cuda_shared_memory`` imports cuda-python's legacy
``cuda.cudart`` module, which cuda-python 13 (the CUDA 13 hosts we check on) no longer has.
"""

from __future__ import annotations

import base64
import math
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from tritonfleet.clients.errors import ServerError, UsageError

SharedMemoryKind = Literal["none", "system", "cuda"]
SHARED_MEMORY_KINDS: tuple[str, ...] = ("none", "system", "cuda")


def _unique(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:12]}"


class Region:
    """One registered block of memory. ``write``/``read`` take positions inside the region;
    ``offset`` is where the region starts inside what was registered (non-zero for a CUDA
    buffer inside a larger allocation), which a request's ``shared_memory_offset`` adds."""

    kind: str
    name: str
    byte_size: int
    offset: int = 0

    def write(self, array: Any, offset: int = 0) -> int:
        raise NotImplementedError

    def read(self, dtype: np.dtype, shape: Sequence[int], offset: int = 0) -> np.ndarray:
        raise NotImplementedError

    def register(self, client) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _check(self, nbytes: int, offset: int) -> None:
        if offset < 0 or offset + nbytes > self.byte_size:
            raise UsageError(f"shared memory region '{self.name}': {nbytes} bytes at offset {offset} do not fit "
                             f"its {self.byte_size} bytes")


class SystemRegion(Region):
    kind = "system"

    def __init__(self, byte_size: int, prefix: str = "tritonfleet"):
        from multiprocessing import shared_memory

        self.name = _unique(prefix)
        self.byte_size = int(byte_size)
        self._shm = shared_memory.SharedMemory(name=self.name, create=True, size=max(1, self.byte_size))
        self.key = "/" + self._shm.name

    def view(self, dtype: np.dtype, shape: Sequence[int], offset: int = 0) -> np.ndarray:
        """The region's bytes as an array (no copy; valid until :meth:`close`)."""
        count = math.prod(shape)
        self._check(count * np.dtype(dtype).itemsize, offset)
        return np.frombuffer(self._shm.buf, dtype=dtype, count=count, offset=offset).reshape(shape)

    def write(self, array: Any, offset: int = 0) -> int:
        array = np.ascontiguousarray(array)
        self.view(array.dtype, array.shape, offset)[...] = array
        return array.nbytes

    def read(self, dtype: np.dtype, shape: Sequence[int], offset: int = 0) -> np.ndarray:
        return self.view(dtype, shape, offset).copy()

    def register(self, client) -> None:
        client.register_system_shared_memory(self.name, self.key, self.byte_size)

    def close(self) -> None:
        self._shm.close()
        try:
            self._shm.unlink()
        except FileNotFoundError:
            pass


class CudaRegion(Region):
    kind = "cuda"

    def __init__(self, byte_size: int, device_id: int = 0, prefix: str = "tritonfleet"):
        torch = _torch_cuda(device_id)
        self.name = _unique(prefix)
        self.byte_size = int(byte_size)
        self.device_id = device_id
        self.buffer = torch.empty(max(1, self.byte_size), dtype=torch.uint8, device=f"cuda:{device_id}")
        shared = self.buffer.untyped_storage()._share_cuda_()
        # (device, cudaIpcMemHandle_t of the allocation, storage bytes, storage offset in the allocation, ...)
        self.handle, self.offset = bytes(shared[1]), int(shared[3])

    def write(self, array: Any, offset: int = 0) -> int:
        import torch

        tensor = array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))
        data = tensor.contiguous().reshape(-1).view(torch.uint8)
        self._check(data.numel(), offset)
        self.buffer[offset:offset + data.numel()].copy_(data)
        torch.cuda.synchronize(self.device_id)
        return data.numel()

    def tensor(self, dtype: np.dtype, shape: Sequence[int], offset: int = 0):
        """The region's bytes as a CUDA tensor (no copy)."""
        import torch

        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        self._check(nbytes, offset)
        torch_dtype = torch.from_numpy(np.empty(0, dtype=dtype)).dtype
        return self.buffer[offset:offset + nbytes].view(torch_dtype).reshape(tuple(shape))

    def read(self, dtype: np.dtype, shape: Sequence[int], offset: int = 0) -> np.ndarray:
        return self.tensor(dtype, shape, offset).cpu().numpy()

    def register(self, client) -> None:
        # tritonclient takes the handle base64-encoded; Triton maps the whole allocation, so the
        # registered size reaches past this buffer's offset in it
        client.register_cuda_shared_memory(self.name, base64.b64encode(self.handle), self.device_id,
                                           self.offset + self.byte_size)

    def close(self) -> None:
        self.buffer = None


def _torch_cuda(device_id: int):
    try:
        import torch
    except ImportError:
        raise UsageError("CUDA shared memory needs torch with CUDA in the client's Python; "
                         "use shared memory 'system' (or 'none') on a host without it") from None
    if not torch.cuda.is_available() or device_id >= torch.cuda.device_count():
        raise UsageError(f"CUDA shared memory needs a CUDA GPU (device {device_id}) visible to torch in the client; "
                         "torch sees none here: use shared memory 'system' (or 'none')")
    return torch


def new_region(kind: str, byte_size: int, device_id: int = 0, prefix: str = "tritonfleet") -> Region:
    if kind == "system":
        return SystemRegion(byte_size, prefix)
    if kind == "cuda":
        return CudaRegion(byte_size, device_id, prefix)
    raise UsageError(f"shared memory must be one of {', '.join(SHARED_MEMORY_KINDS)}, not {kind!r}")


def check_kind(kind: str) -> str:
    if kind not in SHARED_MEMORY_KINDS:
        raise UsageError(f"shared memory must be one of {', '.join(SHARED_MEMORY_KINDS)}, not {kind!r}")
    return kind


def output_bytes(meta_tensor, batch: int | None) -> int:
    """Bytes of one output for a request of ``batch`` samples (fixed shapes only)."""
    if meta_tensor.datatype == "BYTES":
        raise UsageError(f"output '{meta_tensor.name}' holds strings (BYTES), whose size is not known in advance: "
                         "use shared memory 'none' for this model")
    dims = tuple(meta_tensor.shape[1:]) if batch is not None else tuple(meta_tensor.shape)
    if any(d < 0 for d in dims):
        raise UsageError(f"output '{meta_tensor.name}' has a variable shape {list(meta_tensor.shape)}: shared memory "
                         "needs the output's size in advance; use shared memory 'none' for this model")
    return math.prod(dims) * (batch or 1) * meta_tensor.numpy_dtype.itemsize


@dataclass
class SharedMemoryPool:
    """Regions of one kind registered with one server (through a sync tritonclient client), grown on
    demand; :meth:`close` unregisters and frees them all."""

    client: Any
    kind: str
    device_id: int = 0
    prefix: str = "tritonfleet"
    regions: dict[str, Region] = field(default_factory=dict)

    def region(self, role: str, byte_size: int) -> Region:
        """The region for ``role`` (e.g. ``in:image``), at least ``byte_size`` bytes."""
        current = self.regions.get(role)
        if current is not None and current.byte_size >= byte_size:
            return current
        if current is not None:
            self._release(role)
        region = new_region(self.kind, byte_size, self.device_id, self.prefix)
        try:
            region.register(self.client)
        except Exception as exc:
            region.close()
            message = exc.message() if callable(getattr(exc, "message", None)) else str(exc)
            raise ServerError(f"the server refused {self.kind} shared memory region '{region.name}' "
                              f"({byte_size} bytes): {message}") from None
        self.regions[role] = region
        return region

    def _release(self, role: str) -> None:
        region = self.regions.pop(role)
        try:
            if region.kind == "cuda":
                self.client.unregister_cuda_shared_memory(region.name)
            else:
                self.client.unregister_system_shared_memory(region.name)
        except Exception:  # the server may be gone already; the memory is ours to free either way
            pass
        region.close()

    def close(self) -> None:
        for role in list(self.regions):
            self._release(role)

    def __enter__(self) -> SharedMemoryPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
