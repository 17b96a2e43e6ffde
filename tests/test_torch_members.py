"""TorchScript members: traced from the same checkpoints, checked against PyTorch, served by the
real tritonserver (the local torch runner) and configured for Triton's PyTorch backend on ngc.

``ensemble_configs/digits_torch.yaml`` is one of the example specs, so the session fixtures build
it into the shared repository and the session server serves it.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from tritonfleet.builder import runtime
from tritonfleet.builder.build import build
from tritonfleet.builder.errors import SpecError
from tritonfleet.builder.repository.plan import plan_pipeline
from tritonfleet.builder.repository.verify import leaked_host_details
from tritonfleet.builder.spec import load_spec, parse_spec
from tritonfleet.clients.model_config import parse_pbtxt
from tritonfleet.clients.vocabulary import ArtifactFormat

PIPELINE = "digits_torch"
TORCH_MODELS = {"cnn_small_a_ts": ("cnn_small_a", "fp32"), "cnn_small_a_ts_fp16": ("cnn_small_a", "fp16"),
                "cnn_small_b_ts": ("cnn_small_b", "fp32")}
N = 64


def _logits(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def test_torchscript_variants_are_built_and_checked_against_pytorch(repository):
    spec, result = repository[PIPELINE]
    plans = {p.config.name: p for p in result.models}
    assert {n for n, p in plans.items() if p.format == ArtifactFormat.TORCHSCRIPT} == set(TORCH_MODELS)
    for name, (member, precision) in TORCH_MODELS.items():
        records = [r for r in result.parity[member] if r.runtime == "torchscript-cpu" and r.precision == precision]
        assert len(records) == 1 and records[0].passed, name
        assert records[0].max_abs_error <= (1e-5 if precision == "fp32" else 5e-2), records[0]
        folder = result.repository / name / "1"
        files = sorted(p.name for p in folder.iterdir() if p.name != "__pycache__")
        assert files == ["model.pt", "model.py", "tritonfleet_serving.py"]  # the runner hands errors on through it
        assert (folder / "model.py").read_bytes() == runtime.TORCH_RUNNER.read_bytes()
        assert leaked_host_details(result.repository, [folder / "model.pt"]) == []
    manifest = json.loads((result.repository / "manifest.json").read_text())
    assert manifest["models"]["cnn_small_a_ts_fp16"]["format"] == "torchscript"
    assert manifest["models"]["cnn_small_a_ts_fp16"]["precision"] == "fp16"


def test_the_ensemble_calls_the_torchscript_members(repository):
    spec, result = repository[PIPELINE]
    ensemble = next(p.config for p in result.models if p.config.name == PIPELINE)
    assert [s.model_name for s in ensemble.ensemble_steps] == ["cnn_small_a_ts", "cnn_small_b_ts",
                                                               "digits_torch_fusion"]
    assert result.served_format == ArtifactFormat.TORCHSCRIPT


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_torch_members_and_their_ensemble_match_pytorch_through_the_server(triton, torch_models, digits_data,
                                                                          protocol):
    x = digits_data["x_test"][:N]
    with triton.client(protocol) as client:
        for name, (member, precision) in TORCH_MODELS.items():
            out = client.infer(name, x)["logits"]
            want = _logits(torch_models[member], x)
            assert out.shape == (N, 10) and out.dtype == np.float32, name
            np.testing.assert_allclose(out, want, atol=1e-5 if precision == "fp32" else 5e-2, rtol=0, err_msg=name)
            assert np.mean(out.argmax(1) == want.argmax(1)) >= 0.98, name
        fused = client.infer(PIPELINE, x)
    probs = [torch.softmax(torch.from_numpy(_logits(torch_models[m], x)).double(), 1).numpy()
             for m in ("cnn_small_a", "cnn_small_b")]
    np.testing.assert_allclose(fused["probabilities"], np.mean(probs, axis=0), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(fused["class_index"][:, 0], np.mean(probs, axis=0).argmax(1))


def test_the_torch_runner_batches_requests_like_one_call(triton, torch_models, digits_data):
    """Requests the dynamic batcher groups run as one call and are split back per request."""
    import concurrent.futures as futures

    x = digits_data["x_test"][:48]
    want = _logits(torch_models["cnn_small_a"], x)
    with triton.client("grpc") as client, futures.ThreadPoolExecutor(8) as pool:
        parts = list(pool.map(lambda i: client.infer("cnn_small_a_ts", x[i:i + 3])["logits"], range(0, 48, 3)))
    np.testing.assert_allclose(np.concatenate(parts), want, atol=1e-5, rtol=0)


def test_ngc_configs_follow_the_pytorch_backend_conventions(repository):
    """platform pytorch_libtorch, model.pt, inputs and outputs named as in the spec and listed in
    forward()'s order (the backend's strict config ordering), and a model.pt whose forward takes
    exactly those tensors and returns a tuple of that many (what the backend validates at load)."""
    spec, result = repository[PIPELINE]
    plans = {p.config.name: p for p in plan_pipeline(spec, "ngc")}
    for name, (member, _) in TORCH_MODELS.items():
        proto = parse_pbtxt(plans[name].config.to_pbtxt())  # Triton's own schema
        m = spec.model(member)
        assert proto.platform == "pytorch_libtorch" and proto.default_model_filename == "model.pt"
        assert [i.name for i in proto.input] == [t.name for t in m.inputs]
        assert [o.name for o in proto.output] == [t.name for t in m.outputs]
        assert all("__" not in t.name for t in (*proto.input, *proto.output))
        assert [g.kind for g in proto.instance_group] == [proto.instance_group[0].KIND_GPU]
        assert proto.parameters["INFERENCE_MODE"].string_value == "true"
        scripted = torch.jit.load(str(result.repository / name / "1" / "model.pt"))
        arguments = scripted.forward.schema.arguments[1:]  # after self
        assert len(arguments) == len(proto.input) and all(str(a.type) == "Tensor" for a in arguments)
        returns = scripted.forward.schema.returns[0].type
        assert str(returns) == "Tuple[" + ", ".join(["Tensor"] * len(proto.output)) + "]"
    local = {p.config.name: p.config for p in plan_pipeline(spec, "local")}
    steps = tuple(replace(s, input_map={k: v for k, v in s.input_map.items() if not k.startswith("member_error_")},
                          output_map={k: v for k, v in s.output_map.items() if k != "tritonfleet_error"})
                  for s in local[PIPELINE].ensemble_steps)
    # the same ensemble on both targets, but for the errors local runners hand to the fusion step
    assert plans[PIPELINE].config == replace(local[PIPELINE], ensemble_steps=steps)


@pytest.mark.parametrize("formats, message", [
    ({"variants": ["torchscript"]},
     "formats: variants must include onnx: int8, accuracy measurements and fitted fusion parameters are computed "
     "on it (add onnx, e.g. [onnx, torchscript])"),
    ({"variants": ["onnx"], "serve": "torchscript"},
     "formats: serve is torchscript, which is not among the variants ['onnx']"),
    ({"variants": ["onnx", "onnx"]}, "formats: variants listed twice: ['onnx', 'onnx']"),
    ({"variants": ["onnx", "torchscript"], "serve": "tensorrt"},
     "formats.serve: Input should be 'onnx' or 'torchscript'"),
])
def test_bad_formats_are_one_clear_error(spec_factory, formats, message):
    with pytest.raises(SpecError) as info:
        load_spec(spec_factory(formats=formats))
    assert message in str(info.value)


def test_torchscript_refuses_what_the_pytorch_backend_would_misread(tmp_path):
    member = {"model": {"architecture": "tritonfleet.examples.digits.models:DigitsCNN", "checkpoint": "/etc/hostname"},
              "inputs": [{"name": "image__0", "dtype": "float32", "shape": [1, 8, 8]}],
              "outputs": [{"name": "logits", "dtype": "float32", "shape": [10]}]}
    raw = {"name": "p", "members": [{"name": "a", **member}], "fusion": {"type": "mean"},
           "formats": {"variants": ["onnx", "torchscript"], "serve": "torchscript"},
           "precision": {"variants": ["fp32", "int8"], "serve": "int8"}}
    with pytest.raises(SpecError) as info:
        parse_spec(raw, base_dir=tmp_path, source="spec.yaml")
    assert str(info.value) == (
        "spec.yaml: invalid spec\n  - int8 variants need calibration samples: add data.calibration ({inputs: "
        "<array name>}) pointing at real, representative inputs; formats.serve: torchscript serves fp32 or fp16, but "
        "precision.serve is int8; set precision.serve to fp32 or fp16; tensor 'image__0' of 'a': TorchScript members "
        "cannot have '__' in tensor names (Triton's PyTorch backend reads '<name>__<index>' as a position); rename it")


def test_gpu_fusion_on_ngc_needs_torch_in_the_server_and_says_so_before_any_work(spec_factory, tmp_path):
    path = spec_factory(serving={"max_batch_size": 64, "fusion_device": "gpu"})
    with pytest.raises(SpecError) as info:
        build(load_spec(path), target="ngc", output_dir=tmp_path / "ngc", progress=False)
    assert str(info.value) == (
        "serving.fusion_device: gpu runs the fusion math with torch inside the server's Python, and the NGC "
        "tritonserver container ships no torch (the fusion model would fail to load). Use serving.fusion_device: "
        "cpu, or serve from an image built FROM the container with 'pip install torch' and declare it with "
        "serving.server_has_torch: true")
    assert not (tmp_path / "ngc").exists()  # nothing was written
    declared = load_spec(spec_factory(serving={"max_batch_size": 64, "fusion_device": "gpu", "server_has_torch": True}))
    fusion = next(p.config for p in plan_pipeline(declared, "ngc") if p.config.name == "digits_fusion")
    assert fusion.parameters["FORCE_CPU_ONLY_INPUT_TENSORS"] == "no" and fusion.instance_kind == "KIND_GPU"
