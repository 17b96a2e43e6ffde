"""Any PyTorch model: dynamic axes, value constraints, fp16 of control flow, failed variants, and
the conformance suite's fast part through the real tritonserver."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import yaml

from tritonfleet.builder.errors import ConversionError
from tritonfleet.builder.runtime.input_checks import InputError, check_inputs
from tritonfleet.builder.spec import MemberSpec, TensorSpec
from tritonfleet.builder.spec.axes import EngineProfile, merge_checks
from tritonfleet.builder.spec.options import BatchProfile
from tritonfleet.builder.spec.sizes import resize_inputs, size_points, synthetic_inputs
from tritonfleet.builder.stages.onnx2fp16 import ConvertToFp16
from tritonfleet.builder.stages.parity import run_onnx, run_torch
from tritonfleet.builder.stages.torch2onnx import export_onnx
from tritonfleet.examples.conformance.models import TextTabular

from conftest import ROOT
from test_cli import tritonfleet

TEXT = [TensorSpec(name="ids", dtype="int64", shape=(-1,), dynamic={1: [1, 32, 128]}, range=(0, 499)),
        TensorSpec(name="feats", dtype="float32", shape=(8,), finite=True)]
LOGITS = [TensorSpec(name="logits", dtype="float32", shape=(5,))]


# --------------------------------------------------------------------------- spec
@pytest.mark.parametrize("tensor, message", [
    (dict(shape=(3, -1), dynamic={1: {}}), "axis 1 of 'x' has the fixed size 3 in shape [3, -1]; only -1 axes are dynamic"),
    (dict(shape=(-1,), dynamic={0: {}}), "dynamic axis 0 of 'x' is the batch: serving.max_batch_size bounds it"),
    (dict(shape=(-1,), dynamic={2: {}}), "'x' has no axis 2: shape [-1] gives axes 1..1 (0 is the batch)"),
    (dict(shape=(-1,), dynamic={1: [8, 4, 16]}), "needs min <= opt <= max, got min 8, opt 4, max 16"),
    (dict(shape=(-1,), dynamic={1: {"min": 5, "max": 7, "multiple_of": 4}}), "no multiple of 4 lies in [5, 7]"),
    (dict(dtype="int64", shape=(2,), range=(0, 1.5)), "range [0, 1.5] of the int64 input 'x' must hold integers"),
    (dict(dtype="int64", shape=(2,), finite=True), "finite applies to float inputs; 'x' is int64"),
    (dict(shape=(2,), range=(3, 1)), "range [3, 1] of 'x' must have lo <= hi"),
])
def test_bad_tensor_declarations_are_one_clear_error(tensor, message):
    with pytest.raises(ValueError) as info:
        TensorSpec(name="x", **tensor)
    assert message in str(info.value)


def test_constraints_belong_to_inputs(tmp_path):
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"")
    with pytest.raises(ValueError, match="output 'y' declares range; these apply to inputs"):
        MemberSpec(name="m", model={"torchscript": ckpt}, inputs=[{"name": "x", "shape": [2]}],
                   outputs=[{"name": "y", "shape": [2], "range": [0, 1]}])


def test_engine_profile_covers_every_dynamic_axis():
    profile = EngineProfile(BatchProfile(1, 8, 16), {"ids": {1: (1, 32, 128)}})
    assert profile.shapes((-1,), "ids") == ((1, 1), (8, 32), (16, 128))
    assert profile.shapes((8,), "feats") == ((1, 8), (8, 8), (16, 8))
    assert profile.max == 16 and profile.to_dict()["axes"] == {"ids": {"1": [1, 32, 128]}}
    assert TEXT[0].dynamic_axes()[1].profile == (1, 32, 128)


def test_tensorrt_engines_need_a_max_for_every_dynamic_axis(tmp_path):
    from tritonfleet.builder.errors import SpecError
    from tritonfleet.builder.spec import load_spec
    from tritonfleet.examples.conformance.suite import write_suite

    path = write_suite(tmp_path, ["lstm"])["lstm"]
    raw = yaml.safe_load(path.read_text())
    raw["members"][0]["inputs"][0]["dynamic"] = {1: {"min": 1}}
    raw["tensorrt"] = {"engines": True}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert ("'conf_lstm' input 'frames' axis 1 has no dynamic max; TensorRT engines need one: "
            "dynamic: {1: {min: 1, opt: N, max: N}}") in str(info.value)
    raw["members"][0]["inputs"][0]["dynamic"] = {1: [1, 20, 200]}
    path.write_text(yaml.safe_dump(raw))
    spec = load_spec(path)
    assert spec.engine_profile(spec.members[0]).shapes((-1, 12), "frames") == ((1, 1, 12), (16, 20, 12), (16, 200, 12))


# --------------------------------------------------------------------------- sizes parity tries
def test_sizes_cover_min_data_and_larger_and_keep_tied_axes_equal():
    bert = [TensorSpec(name=n, dtype="int64", shape=(-1,), dynamic={1: [1, 32, 64]}) for n in ("input_ids", "mask")]
    data = (np.arange(26).reshape(2, 13), np.ones((2, 13), np.int64))
    points = size_points(bert, data)
    assert [p.label for p in points] == ["data", "min", "large"]
    assert [p.to_json() for p in points] == [{"input_ids[1]": 13, "mask[1]": 13}, {"input_ids[1]": 1, "mask[1]": 1},
                                             {"input_ids[1]": 64, "mask[1]": 64}]
    small, large = (resize_inputs(bert, data, p) for p in points[1:])
    assert small[0].tolist() == [[0], [13]] and large[0].shape == (2, 64) and large[0][0, 13] == 0  # wrapped
    unet = TensorSpec(name="image", shape=(3, -1, -1), dynamic={2: {"min": 8, "max": 96, "multiple_of": 4},
                                                                3: {"min": 8, "max": 96, "multiple_of": 4}})
    points = size_points([unet], (np.zeros((1, 3, 24, 40), np.float32),))
    assert [p.to_json() for p in points] == [{"image[2]": 24, "image[3]": 40}, {"image[2]": 8, "image[3]": 8},
                                             {"image[2]": 96, "image[3]": 96}]  # max: within 8x the data


def test_synthetic_inputs_are_well_formed():
    points = size_points(TEXT)  # no data: the default size, then min and larger
    assert [p.to_json() for p in points] == [{"ids[1]": 8}, {"ids[1]": 1}, {"ids[1]": 16}]
    ids, feats = synthetic_inputs(TEXT, points[2], 50)
    assert ids.shape == (50, 16) and ids.dtype == np.int64 and ids.min() >= 0 and ids.max() <= 499 and ids.max() > 400
    assert feats.shape == (50, 8) and feats.dtype == np.float32 and np.isfinite(feats).all()


# --------------------------------------------------------------------------- checks on requests
def test_input_checks_name_the_input_and_what_it_takes():
    checks = merge_checks([{t.name: t.checks() for t in TEXT if t.checks()}])
    good = {"ids": np.zeros((2, 5), np.int64), "feats": np.zeros((2, 8), np.float32)}
    check_inputs(good, checks)
    cases = [({"ids": -np.ones((2, 5), np.int64)}, "input 'ids': 10 values outside the declared range [0, 499] "
                                                    "(first: -1 at [0, 0])"),
             ({"ids": np.zeros((2, 129), np.int64)}, "input 'ids': axis 1 has size 129 (shape [2, 129]); this model "
                                                     "takes 1..128 there"),
             ({"feats": np.full((2, 8), np.nan, np.float32)}, "input 'feats': 16 NaN/inf values (first at [0, 0], nan)")]
    for bad, message in cases:
        with pytest.raises(InputError) as info:
            check_inputs({**good, **bad}, checks)
        assert str(info.value).startswith(message)
    # two models fed by the same input: both constraints hold
    assert merge_checks([{"x": {"range": [0, 9]}}, {"x": {"range": [2, 20], "finite": True}}]) == \
        {"x": {"range": [2, 9], "finite": True}}


# --------------------------------------------------------------------------- export and fp16
@pytest.fixture(scope="module")
def text_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = TextTabular().eval()
    rng = np.random.default_rng(0)
    sample = [rng.integers(0, 500, (4, 17)), rng.standard_normal((4, 8)).astype(np.float32)]
    path = export_onnx(model, sample, TEXT, LOGITS, tmp_path_factory.mktemp("text") / "model.onnx", name="text")
    return model, path


def _feeds(length: int, n: int = 3):
    rng = np.random.default_rng(length)
    return {"ids": rng.integers(0, 500, (n, length)), "feats": rng.standard_normal((n, 8)).astype(np.float32)}


def test_every_minus_one_axis_is_dynamic_and_named(text_onnx):
    model, path = text_onnx
    proto = onnx.load(str(path))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*proto.graph.input, *proto.graph.output)}
    assert dims == {"ids": ["batch", "ids_1"], "feats": ["batch", 8], "logits": ["batch", 5]}
    for length in (1, 5, 17, 40):  # the issue: only T = 17 (the export sample) used to work
        feeds = _feeds(length)
        ref = run_torch(model, [feeds["ids"], feeds["feats"]], ["logits"])["logits"]
        np.testing.assert_allclose(run_onnx(path, feeds)["logits"], ref, atol=1e-5, rtol=0)


def test_fp16_of_an_embedding_bag_keeps_its_loop_in_fp32(text_onnx, tmp_path):
    model, path = text_onnx
    convert = ConvertToFp16(path, tmp_path / "fp16.onnx", name="text")
    out = convert()
    assert convert.kept_fp32 == ["Loop"]
    weights = [i for i in onnx.load(str(out)).graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert weights, "the rest of the graph is fp16"
    for length in (1, 17, 40):
        feeds = _feeds(length)
        ref = run_torch(model, [feeds["ids"], feeds["feats"]], ["logits"])["logits"]
        np.testing.assert_allclose(run_onnx(out, feeds)["logits"], ref, atol=5e-3, rtol=0)


def test_an_axis_the_model_fixes_is_a_clear_export_error(tmp_path):
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x.reshape(x.shape[0], 17).sum(1, keepdim=True)

    with pytest.raises(ConversionError) as info:
        export_onnx(Fixed(), [np.zeros((2, 17), np.float32)], [TensorSpec(name="x", shape=(-1,))],
                    [TensorSpec(name="y", shape=(1,))], tmp_path / "m.onnx", name="fixed")
    message = str(info.value)
    assert message.startswith("fixed: ONNX export failed (dynamo exporter, step 1/3: torch.export could not capture")
    assert "tracing inferred a static shape of 17 for dimension inputs['x'].shape[1]" in message
    assert "the model fixes that axis" in message and "export: {exporter: torchscript}" in message
    assert "Traceback" not in message and len(message.splitlines()) == 2


def test_an_op_without_onnx_translation_names_the_op_and_module(tmp_path):
    class Eigen(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.eigh(x @ x.transpose(1, 2))[0]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.spectral = Eigen()

        def forward(self, x):
            return self.spectral(x)

    with pytest.raises(ConversionError) as info:
        export_onnx(Net(), [np.ones((2, 3, 3), np.float32)], [TensorSpec(name="x", shape=(3, 3))],
                    [TensorSpec(name="y", shape=(3,))], tmp_path / "m.onnx", name="eig")
    message = str(info.value)
    assert "step 3/3: translating ops to ONNX) at op aten._linalg_eigh in module 'spectral' (Eigen)" in message
    assert "a newer opset (opset: 20)" in message and "'torchscript'" in message and "'exported_program'" in message


# --------------------------------------------------------------------------- failed variants
def test_a_requested_variant_that_fails_exits_3_unless_optional(tmp_path):
    from tritonfleet.examples.conformance.suite import write_suite

    spec_path = write_suite(tmp_path, ["dict_heads"])["dict_heads"]
    raw = yaml.safe_load(spec_path.read_text())
    raw["precision"]["variants"] = ["fp32", "int8"]
    raw["parity"]["int8"] = {"atol": 1e-9, "rtol": 0.0, "min_top1_agreement": 0.0}  # int8 cannot be this close
    spec_path.write_text(yaml.safe_dump(raw))
    proc = tritonfleet("build", spec_path, "--no-progress", timeout=600)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())
    assert ("missing int8 variant of 'conf_dict_heads' (conf_dict_heads_int8) not built: conf_dict_heads/model.onnx "
            "(int8, onnxruntime-cpu): max abs error") in out
    assert "1 requested variant(s) not built (exit code 3)" in out and "precision.optional: [fp16]" in out
    assert "Traceback" not in proc.stdout + proc.stderr
    manifest = json.loads((tmp_path / "model_repository" / "manifest.json").read_text())
    assert "conf_dict_heads" in manifest["models"] and "conf_dict_heads_int8" not in manifest["models"]

    raw["precision"]["optional"] = ["int8"]
    spec_path.write_text(yaml.safe_dump(raw))
    proc = tritonfleet("build", spec_path, "--no-progress", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "optional int8 variant of 'conf_dict_heads'" in " ".join(proc.stdout.split())


# --------------------------------------------------------------------------- through the server
@pytest.mark.server
def test_conformance_fast_part_through_the_real_server(tmp_path):
    """bench/conformance.py --fast: 6 architectures (5 pipelines) in one repository on one tritonserver;
    every variant and pipeline matches PyTorch at every size tried; bad requests are one clear error."""
    out = tmp_path / "conformance.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "conformance.py"), "--fast", "--workdir",
                           str(tmp_path / "work"), "--json", str(out)], capture_output=True, text=True, timeout=1200)
    assert out.is_file(), proc.stdout[-3000:] + proc.stderr[-3000:]
    raw = json.loads(out.read_text())
    rows = {r["case"]: r for r in raw["cases"]}
    assert set(rows) == {"lstm", "tcn", "unet", "scores_label", "text_ensemble"}
    for name, row in rows.items():
        assert row["status"] == "pass", (name, row["reason"])
        assert row["precisions"]["fp32"]["passed"] and row["precisions"]["fp32"]["max_abs_error"] < 1e-4
        assert all(p["built"] and p["passed"] for p in row["precisions"].values()), (name, row["precisions"])
    assert rows["text_ensemble"]["sizes"] == ["ids[1]=17", "ids[1]=1", "ids[1]=128"]
    assert rows["unet"]["sizes"] == ["image[2]=24, image[3]=40", "image[2]=8, image[3]=8", "image[2]=96, image[3]=96"]
    assert rows["tcn"]["sizes"] == ["wave[2]=400", "wave[2]=16", "wave[2]=800"]  # max 4000 is > 8x: twice the data
    # the manifest records the sizes parity tried
    manifest = json.loads((tmp_path / "work" / "model_repository" / "manifest.json").read_text())
    (parity,) = manifest["models"]["conf_text_bag_fp16"]["parity"]
    assert [s["sizes"] for s in parity["sizes"]] == [{"ids[1]": 17}, {"ids[1]": 1}, {"ids[1]": 128}]
    assert manifest["models"]["conf_text_bag_fp16"]["conversion"] == {"kept_fp32": ["Loop"]}
    # bad requests: one clear error naming the input, to the member and through the ensemble (its guard)
    bad = raw["bad_requests"]
    assert {b["request"] for b in bad if b["case"] == "text_ensemble"} == {
        "ids below its range", "NaN in feats", "ids axis 1 = 129 > max 128", "feats axis 1 = 9 (fixed 8)"}
    for b in bad:
        assert b["clear"] and b["healthy_after"], b
    assert raw["in_flight_at_stop"] == 0  # the guard refused them before the fan-out: nothing left in flight
    assert proc.returncode == 0, proc.stdout[-3000:]
