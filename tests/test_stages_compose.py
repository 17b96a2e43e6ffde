"""Build stages are lazy loaders that nest (Polygraphy style): nothing runs until the outermost
one is called, and the nested chain gives the same artifact as the eager twins step by step."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from tritonfleet.builder.spec import TensorSpec
from tritonfleet.builder.stages.base import Loader
from tritonfleet.builder.stages.onnx2fp16 import ConvertToFp16, convert_to_fp16
from tritonfleet.builder.stages.parity import run_onnx, run_torch
from tritonfleet.builder.stages.torch2onnx import ExportOnnx, export_onnx
from tritonfleet.examples.digits.models import DigitsCNN

IN = [TensorSpec(name="image", dtype="float32", shape=(1, 8, 8))]
OUT = [TensorSpec(name="logits", dtype="float32", shape=(10,))]


class CountingModel(Loader):
    """A loader of a torch module that counts its calls."""

    def __init__(self):
        self.calls = 0

    def call_impl(self):
        self.calls += 1
        torch.manual_seed(0)
        return DigitsCNN(width=4).eval()


def test_nested_stages_run_only_when_called_and_match_the_eager_twins(tmp_path):
    x = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
    model = CountingModel()
    chain = ConvertToFp16(ExportOnnx(model, [x], IN, OUT, tmp_path / "lazy" / "fp32.onnx"), tmp_path / "lazy" / "fp16.onnx")
    assert model.calls == 0 and not (tmp_path / "lazy").exists()

    fp16 = chain()
    assert model.calls == 1 and fp16.is_file()

    eager = convert_to_fp16(export_onnx(model(), [x], IN, OUT, tmp_path / "eager" / "fp32.onnx"),
                            tmp_path / "eager" / "fp16.onnx")
    assert hashlib.sha256(fp16.read_bytes()).digest() == hashlib.sha256(eager.read_bytes()).digest()
    reference = run_torch(model(), [x], ["logits"])["logits"]
    served = run_onnx(fp16, {"image": x})["logits"]
    assert served.shape == (8, 10) and served.dtype == np.float32
    np.testing.assert_allclose(served, reference, atol=5e-2, rtol=1e-2)
