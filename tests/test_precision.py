"""Precision variants: selection rule, TensorRT configs, bad inputs, served accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tritonfleet.builder.build import build
from tritonfleet.builder.errors import SpecError
from tritonfleet.builder.repository.plan import engine_config, member_config, variant_name
from tritonfleet.builder.spec import load_spec
from tritonfleet.builder.stages.onnx2trt import BatchProfile, BuildEngine, tensorrt_version
from tritonfleet.builder.stages.variants import Selection, VariantStats, drop_points, select_variant
from tritonfleet.clients.errors import MissingDependencyError
from tritonfleet.clients.evaluation.accuracy import evaluate_accuracy
from tritonfleet.clients.model_config import parse_pbtxt, tensors_of

from test_cli import tritonfleet

NO_TRT = "TensorRT is not installed (pip install 'tritonfleet[trt]' on a GPU host to run this test)"


# --------------------------------------------------------------------------- selection rule
def _stats(**variants) -> list[VariantStats]:
    return [VariantStats(p, ok, 1000, acc, None, speed) for p, (acc, speed, ok) in variants.items()]


@pytest.mark.parametrize(
    "variants, budget, expected",
    [
        # fastest within budget wins
        (dict(fp32=(0.98, 100, True), fp16=(0.98, 150, True), int8=(0.975, 200, True)), 1.0, "int8"),
        # int8 over budget -> fp16
        (dict(fp32=(0.98, 100, True), fp16=(0.98, 150, True), int8=(0.96, 200, True)), 1.0, "fp16"),
        # lower precision slower than fp32 -> fp32
        (dict(fp32=(0.98, 100, True), fp16=(0.98, 80, True), int8=(0.98, 60, True)), 1.0, "fp32"),
        # faster but below min_speedup (1.05x) -> fp32: noise never trades accuracy
        (dict(fp32=(0.98, 100, True), int8=(0.98, 104, True)), 1.0, "fp32"),
        # failed parity is never served
        (dict(fp32=(0.98, 100, True), int8=(0.98, 300, False)), 1.0, "fp32"),
        # zero budget allows only variants that lose nothing
        (dict(fp32=(0.98, 100, True), fp16=(0.98, 120, True), int8=(0.979, 300, True)), 0.0, "fp16"),
    ],
)
def test_select_variant(variants, budget, expected):
    sel = select_variant("m", _stats(**variants), budget, 1.05)
    assert sel.precision == expected
    assert sel.reason.startswith(expected + ":")


def test_select_variant_explains_rejections():
    sel = select_variant("m", _stats(fp32=(0.98, 100, True), int8=(0.90, 300, True)), 1.0, 1.05)
    assert sel == Selection("m", "fp32", sel.reason)
    assert "int8 drops 8.00 pt > budget 1" in sel.reason
    assert drop_points(0.98, 0.975) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="needs the fp32 variant"):
        select_variant("m", _stats(fp16=(0.9, 1, True)), 1.0, 1.05)


# --------------------------------------------------------------------------- TensorRT logic
def test_batch_profile_for_serving():
    assert BatchProfile.for_serving(64) == BatchProfile(1, 64, 64)
    assert BatchProfile.for_serving(64, preferred=(8, 16, 128)) == BatchProfile(1, 16, 64)
    assert BatchProfile.for_serving(64, opt=200) == BatchProfile(1, 64, 64)
    assert BatchProfile(1, 4, 8).shapes((1, -1, 8)) == ((1, 1, 1, 8), (4, 1, 1, 8), (8, 1, 1, 8))
    with pytest.raises(ValueError):
        BatchProfile(2, 1, 8)


def test_engine_config_respects_the_profile(spec_factory):
    spec = load_spec(spec_factory(serving={"max_batch_size": 32, "dynamic_batching": {"preferred_batch_sizes": [8]}},
                                  tensorrt={"opt_batch_size": 16}))
    member = spec.members[0]
    cfg = parse_pbtxt(engine_config(spec, member, "int8").to_pbtxt())
    assert cfg.name == "cnn_small_a_trt_int8" == variant_name(member, "int8", "plan")
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert cfg.max_batch_size == 32  # == profile max, never more
    assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
    assert tensors_of(cfg, "input") == {"image": ("float32", (1, 8, 8))}


def test_onnxruntime_tensorrt_accelerator_config(spec_factory):
    spec = load_spec(spec_factory(tensorrt={"onnxruntime_accelerator": True, "workspace_mb": 512}))
    cfg = parse_pbtxt(member_config(spec, spec.members[1], "ngc", "fp16").to_pbtxt())
    assert cfg.name == "cnn_small_b_fp16" and cfg.platform == "onnxruntime_onnx"
    (acc,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert acc.name == "tensorrt"
    assert dict(acc.parameters) == {"precision_mode": "FP16", "max_workspace_size_bytes": str(512 << 20)}


def test_engines_without_tensorrt_are_skipped_once_and_the_rest_builds(spec_factory, tmp_path):
    if tensorrt_version() is not None:
        pytest.skip("TensorRT is installed here; this test covers machines without it")
    spec = load_spec(spec_factory(tensorrt={"engines": True}, precision={
        "variants": ["fp32", "fp16", "int8"], "serve": "auto", "accuracy_budget": 1.0}))
    result = build(spec, target="ngc", output_dir=tmp_path / "ngc", progress=False)
    (skipped,) = result.problems
    assert skipped.name == "tensorrt engines" and skipped.status.value == "skipped"
    assert "TensorRT is not installed" in skipped.message and "pip install" in skipped.message
    names = {p.config.name for p in result.models}
    assert not any("_trt_" in n for n in names)
    assert {"cnn_small_a", "cnn_small_a_fp16", "cnn_small_a_int8", "digits"} <= names
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        BuildEngine(tmp_path / "x.onnx", tmp_path / "x.plan", BatchProfile(1, 1, 1))()

    # serve: auto -> the ensemble calls each member's selected variant
    ensemble = parse_pbtxt((tmp_path / "ngc" / "digits" / "config.pbtxt").read_text())
    called = [s.model_name for s in ensemble.ensemble_scheduling.step][:-1]
    for m, name in zip(spec.members, called):
        sel = result.selections[m.name]
        assert sel == select_variant(m.name, result.variants[m.name], 1.0, spec.precision.min_speedup)
        assert name == variant_name(m, sel.precision)
    manifest = json.loads((tmp_path / "ngc" / "manifest.json").read_text())
    assert manifest["pipelines"]["digits"]["served"] == {k: v.to_dict() for k, v in result.selections.items()}


def test_engines_on_the_local_target_say_why(spec_factory, tmp_path):
    spec = load_spec(spec_factory(tensorrt={"engines": True}, precision={"variants": ["fp32"]}))
    result = build(spec, target="local", output_dir=tmp_path / "local", progress=False)
    (skipped,) = result.problems
    assert "ngc target only" in skipped.message


@pytest.mark.skipif(tensorrt_version() is None, reason=NO_TRT)
def test_tensorrt_engines_match_pytorch(spec_factory, tmp_path):
    spec = load_spec(spec_factory(tensorrt={"engines": True, "timing_cache": str(tmp_path / "timing.cache")}))
    result = build(spec, target="ngc", output_dir=tmp_path / "ngc", progress=False)
    engines = [p for p in result.models if p.format == "plan"]
    assert {p.precision for p in engines} == {"fp32", "fp16", "int8"}
    for p in engines:
        (rec,) = [r for r in result.parity[p.member] if r.runtime == "tensorrt" and r.precision == p.precision]
        assert rec.passed
    manifest = json.loads((tmp_path / "ngc" / "manifest.json").read_text())
    record = manifest["models"]["cnn_small_a_trt_fp16"]["engine"]
    assert record["tensorrt"] == tensorrt_version() and record["gpu"]
    assert (tmp_path / "timing.cache").stat().st_size > 0


# --------------------------------------------------------------------------- bad inputs
def _spec_with_data(spec_factory, digits_data, tmp_path, **arrays):
    data = {**digits_data, **arrays}
    np.savez(tmp_path / "data.npz", **data)
    return spec_factory(data={"path": str(tmp_path / "data.npz"), "test": {"inputs": "x_test", "labels": "y_test"},
                              "validation": {"inputs": "x_val", "labels": "y_val"},
                              "calibration": {"inputs": "x_calib"}},
                        distillation=None)  # digits.yaml's student trains on data.train, which this data lacks


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x_calib": np.zeros((8, 1, 7, 7), np.float32)},
         "data.calibration.inputs 'x_calib' has per-sample shape [1, 7, 7]; input 'image' takes [1, 8, 8]"),
        ({"x_calib": np.zeros((8, 1, 8, 8), np.int64)},
         "data.calibration.inputs 'x_calib' has dtype int64; input 'image' takes float32"),
        ({"x_calib": np.zeros((0, 1, 8, 8), np.float32)}, "non-zero number of samples"),
        ({"x_calib": np.full((8, 1, 8, 8), np.nan, np.float32)}, "data.calibration.inputs 'x_calib' holds NaN"),
    ],
)
def test_bad_calibration_data_fails_before_any_artifact(spec_factory, digits_data, tmp_path, arrays, message):
    spec = load_spec(_spec_with_data(spec_factory, digits_data, tmp_path, **arrays))
    with pytest.raises(SpecError) as info:
        build(spec, progress=False)
    assert message in str(info.value)
    assert not spec.output_dir.exists()
    assert not [p for p in spec.output_dir.parent.iterdir() if ".staging-" in p.name]


def test_precision_spec_errors(spec_factory):
    with pytest.raises(SpecError, match=r"precision.variants\[1\]: Input should be 'fp32', 'fp16' or 'int8'"):
        load_spec(spec_factory(precision={"variants": ["fp32", "fp8"]}))
    with pytest.raises(SpecError, match="serve: auto needs an accuracy_budget"):
        load_spec(spec_factory(precision={"variants": ["fp32", "int8"], "serve": "auto"}))
    with pytest.raises(SpecError, match="precision.serve is int8 but member 'cnn_small_a' builds only fp32, fp16"):
        load_spec(spec_factory(precision={"variants": ["fp32", "fp16"], "serve": "int8"}))
    with pytest.raises(SpecError, match="int8 variants need calibration samples"):
        load_spec(spec_factory(data=None, distillation=None))


def test_cli_rejects_an_unknown_precision(spec_factory):
    proc = tritonfleet("build", spec_factory(), "--precisions", "fp32,fp8")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "unknown precision fp8" in proc.stderr


# --------------------------------------------------------------------------- served accuracy
def test_served_variant_accuracy_within_budgets(triton, local_build, digits_data):
    """fp16 loses <= 0.1 and int8 <= 1.0 top-1 points vs fp32, measured through Triton."""
    spec, result = local_build
    x, y = digits_data["x_test"], digits_data["y_test"]
    manifest = json.loads((result.repository / "manifest.json").read_text())
    budgets = {"fp16": 0.1, "int8": 1.0}
    with triton.client("grpc") as client:
        for m in spec.all_models:
            served = {p: evaluate_accuracy(client, variant_name(m, p), x, y).accuracy
                      for p in ("fp32", "fp16", "int8")}
            for precision, accuracy in served.items():
                recorded = manifest["models"][variant_name(m, precision)]["variant"]["test_accuracy"]
                assert accuracy == pytest.approx(recorded, abs=1.0 / len(y)), (m.name, precision)
            for precision, budget in budgets.items():
                assert drop_points(served["fp32"], served[precision]) <= budget, (m.name, precision, served)
