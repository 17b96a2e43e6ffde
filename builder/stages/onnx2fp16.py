"""fp32 ONNX -> fp16 ONNX with fp32 inputs and outputs kept (onnxconverter-common).

Weights and activations become float16; Cast nodes at the graph boundary keep the model's
signature, so the Triton config and the ensemble do not change. On TensorRT (>= 10,
strongly typed networks) this fp16-typed graph is what selects fp16 kernels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tritonfleet.builder.errors import ConversionError
from tritonfleet.builder.stages.base import Loader, quiet, resolve


class ConvertToFp16(Loader[Path]):
    def __init__(self, onnx_path: Any, path: Path, name: str = "model"):
        self.onnx_path = onnx_path
        self.path = Path(path)
        self.name = name

    def call_impl(self) -> Path:
        import onnx

        try:
            from onnxconverter_common import float16
        except ImportError:
            raise ConversionError(
                f"{self.name}: fp16 variants need onnxconverter-common, which is not installed; "
                "fix: pip install onnxconverter-common (a tritonfleet dependency), or drop fp16 from precision.variants"
            ) from None

        source = resolve(self.onnx_path)
        try:
            with quiet("onnxconverter_common"):
                model = float16.convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
        except OSError:  # disk full, permissions: the build reports it
            raise
        except Exception as exc:
            raise ConversionError(f"{self.name}: fp16 conversion failed: {type(exc).__name__}: {exc}") from None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        onnx.save_model(model, str(self.path), save_as_external_data=False)
        onnx.checker.check_model(str(self.path))
        return self.path


def convert_to_fp16(onnx_path: Any, path: Path, name: str = "model") -> Path:
    """Eager twin of :class:`ConvertToFp16`."""
    return ConvertToFp16(onnx_path, path, name)()
