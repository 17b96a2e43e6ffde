"""numpy 2 in the server's Python, and uint8 image inputs normalised inside the model.

A second real tritonserver runs its Python-backend stubs with an interpreter whose numpy is
2.x (a venv with numpy 2 in front of this venv's packages: the stub's embedded Python ignores
PYTHONPATH, so the interpreter itself has to change). It serves the ONNX runner, the torch
runner, a fusion ensemble, a BLS cascade and a ResNet-like model that takes uint8 images,
copied from the session repository and from a small image build; outputs are compared with
PyTorch. A probe model written the naive way (numpy arrays straight into pb_utils.Tensor)
shows the environment really has the fault: its outputs come back empty.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tritonfleet.clients.errors import ServerError
from tritonfleet.clients.server import TritonServer

from conftest import ROOT

SESSION_MODELS = ("cnn_small_a", "cnn_large", "digits_cascade", "digits_torch", "digits_torch_fusion",
                  "cnn_small_a_ts", "cnn_small_b_ts")
SIDE = 32
N = 16

NAIVE_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy() * 2)]) for r in requests]
'''
NAIVE_CONFIG = '''name: "naive_numpy"
backend: "python"
max_batch_size: 8
input { name: "x" data_type: TYPE_FP32 dims: [3] }
output { name: "y" data_type: TYPE_FP32 dims: [3] }
instance_group { count: 1 kind: KIND_CPU }
'''


@pytest.fixture(scope="module")
def numpy2_python(tmp_path_factory) -> Path:
    """A venv whose numpy is 2.x and whose other packages are this venv's (through a .pth file)."""
    venv = tmp_path_factory.mktemp("numpy2-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
                          "numpy>=2,<3"], capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, f"pip could not install numpy 2 for this test: {pip.stderr[-800:]}"
    (site / "zz_tritonfleet_test_parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    version = subprocess.run([str(python), "-c", "import numpy; print(numpy.__version__)"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert version.startswith("2."), version
    return python


@pytest.fixture(scope="module")
def image_build(tmp_path_factory):
    """bench/resnet.py's SmallResNetLike (random weights) taking uint8 [3, 32, 32], built as
    ONNX and TorchScript members."""
    from tritonfleet.builder.build import build
    from tritonfleet.builder.spec import load_spec
    from tritonfleet.builder.stages.load_torch import load_torch_model

    work = tmp_path_factory.mktemp("image-build")
    arch = f"{ROOT / 'bench' / 'resnet.py'}:SmallResNetLike"
    torch.manual_seed(0)
    torch.save(_load_class(arch)().state_dict(), work / "resnet.pt")
    spec_model = {"architecture": arch, "checkpoint": str(work / "resnet.pt")}
    raw = {
        "name": "images", "output_dir": str(work / "repository"),
        "serving": {"max_batch_size": 16, "dynamic_batching": {"enabled": False}},
        "members": [{"name": "resnet_small", "model": spec_model,
                     "inputs": [{"name": "image", "dtype": "uint8", "shape": [3, SIDE, SIDE]}],
                     "outputs": [{"name": "logits", "dtype": "float32", "shape": [10]}]}],
        "fusion": {"type": "none"},
        "formats": {"variants": ["onnx", "torchscript"], "serve": "torchscript"},
        "parity": {"samples": 16},
    }
    path = work / "images.yaml"
    path.write_text(yaml.safe_dump(raw))
    spec = load_spec(path)
    result = build(spec, spec_path=path, progress=False)
    return spec, result, load_torch_model(spec.members[0].model)


def _load_class(arch: str):
    import importlib.util

    file, _, name = arch.rpartition(":")
    module_spec = importlib.util.spec_from_file_location("test_resnet", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return getattr(module, name)


@pytest.fixture(scope="module")
def numpy2_server(numpy2_python, image_build, repository, tmp_path_factory):
    _, session = repository["digits"]
    repo = tmp_path_factory.mktemp("numpy2-repository")
    for name in SESSION_MODELS:
        shutil.copytree(session.repository / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    for plan in image_build[1].models:
        shutil.copytree(image_build[1].repository / plan.config.name, repo / plan.config.name)
    (repo / "naive_numpy" / "1").mkdir(parents=True)
    (repo / "naive_numpy" / "1" / "model.py").write_text(NAIVE_MODEL)
    (repo / "naive_numpy" / "config.pbtxt").write_text(NAIVE_CONFIG)
    log = tmp_path_factory.mktemp("numpy2-server") / "tritonserver.log"
    with TritonServer(repo, log_path=log, python=numpy2_python) as server:
        yield server


def _logits(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def test_the_environment_has_the_fault(numpy2_server):
    """Arrays handed to pb_utils.Tensor come back empty under numpy 2: the setup reproduces it."""
    with numpy2_server.client("grpc") as client, pytest.raises(ServerError) as info:
        client.infer("naive_numpy", np.ones((2, 3), np.float32))
    assert str(info.value).startswith("model 'naive_numpy' returned an empty tensor for output 'y' on a batch of 2; "
                                      "if it is a Python-backend model that hands numpy arrays to pb_utils.Tensor")
    assert "tritonfleet: numpy 2." in numpy2_server.logs()  # our runtimes saw numpy 2 ...
    assert "tensors cross through DLPack" in numpy2_server.logs()  # ... and took the DLPack path


def test_runners_fusion_and_bls_are_correct_under_numpy2(numpy2_server, torch_models, digits_data):
    x = digits_data["x_test"][:N]
    with numpy2_server.client("grpc") as client:
        for name, member in (("cnn_small_a", "cnn_small_a"), ("cnn_small_a_ts", "cnn_small_a")):
            out = client.infer(name, x)["logits"]
            assert out.shape == (N, 10), name
            np.testing.assert_allclose(out, _logits(torch_models[member], x), atol=1e-5, rtol=0, err_msg=name)
        fused = client.infer("digits_torch", x)
        cascade = client.infer("digits_cascade", x)
    probs = [torch.softmax(torch.from_numpy(_logits(torch_models[m], x)).double(), 1).numpy()
             for m in ("cnn_small_a", "cnn_small_b")]
    assert fused["probabilities"].shape == (N, 10) and fused["class_index"].shape == (N, 1)
    np.testing.assert_allclose(fused["probabilities"], np.mean(probs, axis=0), atol=1e-5, rtol=0)
    small = torch.softmax(torch.from_numpy(_logits(torch_models["cnn_small_a"], x)).double(), 1).numpy()
    large = torch.softmax(torch.from_numpy(_logits(torch_models["cnn_large"], x)).double(), 1).numpy()
    escalate = small.max(1) < 0.9
    np.testing.assert_array_equal(cascade["stage"][:, 0], escalate.astype(np.int64))
    np.testing.assert_allclose(cascade["probabilities"], np.where(escalate[:, None], large, small), atol=1e-5, rtol=0)


@pytest.mark.parametrize("shared_memory", ["none", "system"])
def test_uint8_images_are_normalised_inside_the_model(numpy2_server, image_build, shared_memory):
    _, result, model = image_build
    images = np.random.default_rng(0).integers(0, 256, (N, 3, SIDE, SIDE), dtype=np.uint8)
    want = _logits(model, images)
    with numpy2_server.client("grpc", shared_memory=shared_memory) as client:
        assert client.metadata("resnet_small_ts").inputs[0].datatype == "UINT8"
        for name in ("resnet_small", "resnet_small_ts", "images"):  # ONNX runner, torch runner, the pipeline
            out = client.infer(name, images)["logits"]
            assert out.shape == (N, 10), name
            np.testing.assert_allclose(out, want, atol=1e-4, rtol=1e-4, err_msg=name)
    assert result.served_format == "torchscript"
