"""PyTorch loading, ONNX export and parity, for each of the three source forms."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from tritonfleet.builder.errors import ConversionError, ValidationError
from tritonfleet.builder.spec import ModelSource, TensorSpec
from tritonfleet.builder.stages.load_torch import load_torch_model
from tritonfleet.builder.stages.parity import compare_outputs, run_onnx, run_torch
from tritonfleet.builder.stages.torch2onnx import export_onnx
from tritonfleet.examples.digits.models import DigitsCNN

IN = [TensorSpec(name="image", dtype="float32", shape=(1, 8, 8))]
OUT = [TensorSpec(name="logits", dtype="float32", shape=(10,))]


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return DigitsCNN(width=4).eval()


@pytest.fixture(scope="module")
def sample():
    return np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)


def _check_file(path, net, sample):
    files = sorted(p.name for p in path.parent.iterdir())
    assert files == [path.name], f"expected one self-contained file, found {files}"
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    for value in (*proto.graph.input, *proto.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    ref = run_torch(net, [sample[:13]], ["logits"])
    got = run_onnx(path, {"image": sample[:13]})  # a batch size never seen at export
    record = compare_outputs(ref, got, atol=1e-5, rtol=0)
    assert record.passed and record.samples == 13 and record.top1_agreement == 1.0
    assert record.max_abs_error < 1e-5


def test_state_dict_source(tmp_path, net, sample):
    ckpt = tmp_path / "net.pt"
    torch.save(net.state_dict(), ckpt)
    source = ModelSource(architecture="tritonfleet.examples.digits.models:DigitsCNN", kwargs={"width": 4}, checkpoint=ckpt)
    model = load_torch_model(source)
    path = export_onnx(model, [sample[:4]], IN, OUT, tmp_path / "out" / "model.onnx")
    _check_file(path, net, sample)


def test_lightning_style_checkpoint_is_unwrapped(tmp_path, net):
    ckpt = tmp_path / "wrapped.pt"
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, ckpt)
    source = ModelSource(architecture="tritonfleet.examples.digits.models:DigitsCNN", kwargs={"width": 4}, checkpoint=ckpt)
    model = load_torch_model(source)
    assert torch.equal(model.head[-1].weight, net.head[-1].weight)


def test_torchscript_source(tmp_path, net, sample):
    path = tmp_path / "net.ts"
    torch.jit.save(torch.jit.script(net), str(path))
    model = load_torch_model(ModelSource(torchscript=path))
    out = export_onnx(model, [sample[:4]], IN, OUT, tmp_path / "out" / "model.onnx")
    _check_file(out, net, sample)


def test_exported_program_source(tmp_path, net, sample):
    path = tmp_path / "net.pt2"
    program = torch.export.export(net, (torch.from_numpy(sample[:4]),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(path))
    model = load_torch_model(ModelSource(exported_program=path))
    out = export_onnx(model, [sample[:4]], IN, OUT, tmp_path / "out" / "model.onnx")
    _check_file(out, net, sample)


def test_exported_program_with_fixed_batch_is_rejected(tmp_path, net, sample):
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(net, (torch.from_numpy(sample[:4]),)), str(path))
    model = load_torch_model(ModelSource(exported_program=path))
    with pytest.raises(ConversionError, match="fixed batch size 4; export with a dynamic batch"):
        export_onnx(model, [sample[:4]], IN, OUT, tmp_path / "out" / "model.onnx", name="fixed")


def test_checkpoint_for_another_architecture(tmp_path, net):
    ckpt = tmp_path / "net.pt"
    torch.save(net.state_dict(), ckpt)
    source = ModelSource(architecture="tritonfleet.examples.digits.models:DigitsCNN", kwargs={"width": 8}, checkpoint=ckpt)
    with pytest.raises(ConversionError) as info:
        load_torch_model(source, where="members[0] (a).model")
    msg = str(info.value)
    assert "members[0] (a).model.checkpoint" in msg and "does not fit architecture" in msg
    assert "size mismatch" in msg


def test_unreadable_checkpoint_and_bad_architecture(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    src = ModelSource(architecture="tritonfleet.examples.digits.models:DigitsCNN", checkpoint=junk)
    with pytest.raises(ConversionError, match="cannot read .*junk.pt as a PyTorch checkpoint"):
        load_torch_model(src)
    missing = ModelSource(architecture="no_such_pkg.models:Net", checkpoint=junk)
    with pytest.raises(ConversionError, match="cannot import 'no_such_pkg.models'"):
        load_torch_model(missing)
    wrong = ModelSource(architecture="tritonfleet.examples.digits.models:Nope", checkpoint=junk)
    with pytest.raises(ConversionError, match="has no attribute 'Nope'"):
        load_torch_model(wrong)


def test_pickled_objects_are_refused(tmp_path):
    # weights_only=True: a checkpoint holding arbitrary objects must not be unpickled.
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    path = tmp_path / "evil.pt"
    torch.save({"w": Evil()}, path)
    src = ModelSource(architecture="tritonfleet.examples.digits.models:DigitsCNN", checkpoint=path)
    with pytest.raises(ConversionError, match="cannot read"):
        load_torch_model(src)


def test_export_names_must_match_forward(tmp_path, net, sample):
    two_outputs = [*OUT, TensorSpec(name="extra", dtype="float32", shape=(10,))]
    with pytest.raises(ConversionError, match="exported ONNX has inputs"):
        export_onnx(net, [sample[:4]], IN, two_outputs, tmp_path / "m.onnx", name="net")


def test_compare_outputs_failure_kinds():
    ref = {"y": np.zeros((4, 3), np.float32)}
    with pytest.raises(ValidationError) as info:
        compare_outputs(ref, {"z": ref["y"]}, atol=1e-5, rtol=0)
    assert info.value.kind == "output-names"
    with pytest.raises(ValidationError) as info:
        compare_outputs(ref, {"y": np.zeros((4, 2))}, atol=1e-5, rtol=0)
    assert info.value.kind == "shape"
    with pytest.raises(ValidationError) as info:
        compare_outputs(ref, {"y": np.full((4, 3), np.nan)}, atol=1e-5, rtol=0)
    assert info.value.kind == "non-finite"
    with pytest.raises(ValidationError, match=r"max abs error 0.01 on 'y' exceeds atol 1e-05 .*atol 0.01 would pass"):
        compare_outputs(ref, {"y": ref["y"] + 0.01}, atol=1e-5, rtol=0)
    record = compare_outputs(ref, {"y": ref["y"] + 0.01}, atol=1e-5, rtol=0, raise_on_failure=False)
    assert not record.passed and record.max_abs_error == pytest.approx(0.01)
