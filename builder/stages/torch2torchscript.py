"""PyTorch -> TorchScript (``model.pt``): the format Triton's PyTorch backend serves and the
local torch runner loads.

The model (an ``nn.Module``, a TorchScript module or an ``ExportedProgram``'s module) is
wrapped so that ``forward`` takes the spec's inputs in order and returns a tuple of the spec's
outputs in their declared dtypes, then traced on the sample batch. The fp16 variant converts
the weights (and floating inputs) to float16 and casts the outputs back, so its signature is
the fp32 one, like the fp16 ONNX. The file carries no build-host details and no data:
TorchScript's debug records (source ranges with the build machine's file paths) are dropped
unless ``keep_debug_info``, the traced sample is not stored, and the archive's random
serialization id is replaced by a hash of its content. A fresh build process gives the same
bytes for the same model; a second trace of the same classes *in one process* gets
TorchScript's mangled type names (``___torch_mangle_N``, a process-wide counter), so its bytes
differ while the model is the same.
"""

from __future__ import annotations

import copy
import hashlib
import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tritonfleet.builder.errors import ConversionError
from tritonfleet.builder.spec import TensorSpec
from tritonfleet.builder.stages.base import Loader, quiet, resolve
from tritonfleet.clients.dtypes import numpy_dtype

TORCH_PRECISIONS = ("fp32", "fp16")


def _signature_module(module, precision: str, output_dtypes: Sequence[Any]):
    """``module`` with the spec's signature: positional inputs, a tuple of typed outputs."""
    import torch

    half = precision == "fp16"

    class Signature(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = module

        def forward(self, *inputs):
            if half:
                inputs = tuple(x.half() if x.is_floating_point() else x for x in inputs)
            out = self.model(*inputs)
            out = out if isinstance(out, (tuple, list)) else (out,)
            return tuple(o.to(d) for o, d in zip(out, output_dtypes))

    return Signature().eval()


class ExportTorchScript(Loader[Path]):
    """Trace ``model`` (a value or a loader) into ``path``; returns the path."""

    def __init__(self, model: Any, sample: Sequence[np.ndarray], inputs: Sequence[TensorSpec],
                 outputs: Sequence[TensorSpec], path: Path, precision: str = "fp32", name: str = "model",
                 keep_debug_info: bool = False):
        if precision not in TORCH_PRECISIONS:
            raise ConversionError(f"{name}: TorchScript variants are {', '.join(TORCH_PRECISIONS)}, not {precision}")
        self.model = model
        self.sample = sample
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.path = Path(path)
        self.precision = precision
        self.name = name
        self.keep_debug_info = keep_debug_info

    def call_impl(self) -> Path:
        import torch

        model = resolve(self.model)
        module = model.module() if isinstance(model, torch.export.ExportedProgram) else model
        if self.precision == "fp16":
            module = copy.deepcopy(module).half()  # the caller's fp32 reference stays as it is
        out_dtypes = [torch.from_numpy(np.empty(0, numpy_dtype(t.dtype))).dtype for t in self.outputs]
        wrapped = _signature_module(module, self.precision, out_dtypes)
        args = tuple(torch.from_numpy(np.ascontiguousarray(s)) for s in self.sample)
        try:
            with quiet("torch"), torch.no_grad():
                traced = torch.jit.trace(wrapped, args, check_trace=False, _store_inputs=False)
                got = traced(*args)
        except Exception as exc:
            detail = str(exc).strip().splitlines()
            raise ConversionError(
                f"{self.name}: TorchScript tracing ({self.precision}) failed: {type(exc).__name__}: "
                f"{detail[0] if detail else ''}\nCheck that forward() takes the spec's inputs in order and "
                "returns tensors (no Python data structures that depend on the values)."
            ) from None
        if len(got) != len(self.outputs):
            raise ConversionError(f"{self.name}: the model returns {len(got)} outputs, the spec declares "
                                  f"{len(self.outputs)}: {[t.name for t in self.outputs]}")
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        data = buffer.getvalue() if self.keep_debug_info else portable_archive(buffer.getvalue())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(data)
        return self.path


def export_torchscript(*args, **kwargs) -> Path:
    """Eager twin of :class:`ExportTorchScript`."""
    return ExportTorchScript(*args, **kwargs)()


def portable_archive(data: bytes) -> bytes:
    """A TorchScript zip without its debug records (``*.debug_pkl``: source ranges with the build
    machine's file paths), with fixed per-entry metadata and a content hash for the serialization
    id torch draws at random; the same module gives the same bytes."""
    with zipfile.ZipFile(io.BytesIO(data)) as src:
        entries = [(info.filename, src.read(info.filename)) for info in src.infolist()
                   if not info.filename.endswith(".debug_pkl")]
    digest = hashlib.sha256()
    for name, content in entries:
        if not name.endswith("serialization_id"):
            digest.update(name.encode() + b"\0" + content)
    serialization_id = str(int(digest.hexdigest(), 16))[:40].encode()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name, content in entries:
            entry = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            dst.writestr(entry, serialization_id if name.endswith("serialization_id") else content)
    return out.getvalue()


def run_torchscript(path: Path, inputs: Sequence[np.ndarray], output_names: Sequence[str],
                    batch_size: int = 256) -> dict[str, np.ndarray]:
    """Load a TorchScript file on the CPU and run it on numpy inputs, batch by batch."""
    import torch

    from tritonfleet.builder.stages.parity import run_torch

    module = torch.jit.load(str(path), map_location="cpu").eval()
    return run_torch(module, inputs, output_names, batch_size)
