"""fp32 ONNX -> int8 Q/DQ ONNX, calibrated on real samples (onnxruntime quantize_static).

Symmetric int8 weights (per channel by default) and activations in QDQ format: the
explicit-quantization graph onnxruntime runs on CPU and TensorRT >= 10 builds int8
engines from (TensorRT 11 has no calibrators left, so the scales must live in the graph).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tritonfleet.builder.errors import ConversionError, SpecError
from tritonfleet.builder.spec import Calibration
from tritonfleet.builder.stages.base import Loader, quiet, resolve

CALIBRATION_BATCH = 32


class QuantizeInt8(Loader[Path]):
    def __init__(self, onnx_path: Any, path: Path, samples: Sequence[np.ndarray], input_names: Sequence[str],
                 options: Calibration | None = None, name: str = "model",
                 other_sizes: Sequence[Sequence[np.ndarray]] = (), keep_prefix: str | None = None):
        self.onnx_path = onnx_path
        self.path = Path(path)
        self.samples = samples
        self.input_names = list(input_names)
        self.options = options or Calibration()
        self.name = name
        self.samples_used = 0
        # the same samples at the other sizes of the dynamic axes (minmax only): activation ranges
        # then cover short and long inputs, not only the data's size
        self.other_sizes = [list(x) for x in other_sizes] if self.options.method == "minmax" else []
        self.keep_prefix = keep_prefix  # nodes named with it are not quantized (a compiled graph's float64 fusion)

    def call_impl(self) -> Path:
        from onnxruntime.quantization import (
            CalibrationDataReader,
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )
        from onnxruntime.quantization.shape_inference import quant_pre_process

        samples = [np.asarray(x)[: self.options.samples] for x in self.samples]
        if len(samples) != len(self.input_names) or any(len(x) == 0 for x in samples):
            raise SpecError(f"{self.name}: int8 calibration needs at least one sample for each input")
        # onnxruntime's histogram calibrators (entropy, percentile) fail on batches of
        # unequal size: keep whole batches only (all samples when fewer than one batch).
        usable = len(samples[0]) - len(samples[0]) % CALIBRATION_BATCH or len(samples[0])
        samples = [x[:usable] for x in samples]
        self.samples_used = usable
        batches = [
            {n: x[s:s + CALIBRATION_BATCH] for n, x in zip(self.input_names, samples)}
            for s in range(0, len(samples[0]), CALIBRATION_BATCH)
        ]
        for extra in self.other_sizes:
            batches += [{n: np.ascontiguousarray(x[s:s + CALIBRATION_BATCH]) for n, x in zip(self.input_names, extra)}
                        for s in range(0, len(extra[0]), CALIBRATION_BATCH)]

        class Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter(batches)

            def get_next(self):
                return next(self._it, None)

        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[self.options.method]
        source = resolve(self.onnx_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="tritonfleet-int8-") as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            try:
                with quiet("onnxruntime", "root"):
                    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
                    kept = [n.name for n in onnx_nodes(prepared) if self.keep_prefix and n.name.startswith(self.keep_prefix)]
                    quantize_static(
                        str(prepared), str(self.path), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        per_channel=self.options.per_channel, calibrate_method=method, nodes_to_exclude=kept,
                        extra_options={"ActivationSymmetric": self.options.symmetric_activations,
                                       "WeightSymmetric": True},
                    )
            except OSError:  # disk full, permissions: the build reports it
                raise
            except Exception as exc:
                raise ConversionError(
                    f"{self.name}: int8 quantization failed: {type(exc).__name__}: {exc}"
                ) from None
        return self.path


def onnx_nodes(path: Path) -> list:
    import onnx

    return list(onnx.load(str(path), load_external_data=False).graph.node)


def quantize_int8(*args, **kwargs) -> Path:
    """Eager twin of :class:`QuantizeInt8`."""
    return QuantizeInt8(*args, **kwargs)()
