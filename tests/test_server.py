"""The generated local repository in the real tritonserver, compared against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tritonfleet.builder.repository.verify import verify
from tritonfleet.clients.errors import ServerError
from tritonfleet.clients.evaluation.accuracy import evaluate_accuracy
from tritonfleet.clients.server import TritonServer

N = 64


def _torch_logits(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def test_every_model_is_ready(triton, local_build):
    spec, result = local_build
    with triton.client("http") as client:
        states = client.models()
        expected = {p.config.name for p in result.models}
        assert expected <= set(states)
        assert all(state == "READY" for state in states.values()), states
        for name in expected:
            assert client.is_ready(name)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_members_match_pytorch(triton, torch_models, digits_data, protocol):
    x = digits_data["x_test"][:N]
    with triton.client(protocol) as client:
        for name, model in torch_models.items():
            out = client.infer(name, x)["logits"]
            assert out.shape == (N, 10) and out.dtype == np.float32
            np.testing.assert_allclose(out, _torch_logits(model, x), atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_ensemble_matches_pytorch_mean_of_softmaxes(triton, local_build, torch_models, digits_data, protocol):
    spec, _ = local_build
    x = digits_data["x_test"][:N]
    probs = [torch.softmax(torch.from_numpy(_torch_logits(torch_models[m.name], x)).double(), 1).numpy()
             for m in spec.members]
    expected = np.mean(probs, axis=0)
    with triton.client(protocol) as client:
        out = client.infer(spec.name, x)
    assert out["probabilities"].shape == (N, 10) and out["probabilities"].dtype == np.float32
    assert out["class_index"].shape == (N, 1) and out["class_index"].dtype == np.int64
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(out["class_index"][:, 0], expected.argmax(1))


def test_served_accuracy_equals_pytorch_accuracy(triton, local_build, torch_models, digits_data):
    spec, _ = local_build
    x, y = digits_data["x_test"], digits_data["y_test"]
    with triton.client("grpc") as client:
        for name, model in torch_models.items():
            served = evaluate_accuracy(client, name, x, y)
            assert served.samples == len(y)
            assert served.accuracy == pytest.approx(float((_torch_logits(model, x).argmax(1) == y).mean()))
        ensemble = evaluate_accuracy(client, spec.name, x, y, batch_size=37)
        assert ensemble.samples == len(y) and 0.9 < ensemble.accuracy <= 1.0


def test_a_served_repository_still_verifies(triton, local_build, digits_data):
    """Python-backend stubs import model.py from the version folders and leave __pycache__ there
    (the stub's embedded interpreter ignores PYTHONDONTWRITEBYTECODE); verify must not call that
    a modification, and every built file must still match its recorded sha256."""
    spec, result = local_build
    with triton.client("grpc") as client:
        client.infer(spec.name, digits_data["x_test"][:4])
    assert list(result.repository.rglob("__pycache__")), "expected the stubs to have written bytecode"
    report = verify(result.repository)
    assert report.ok, report.problems
    assert report.files > 0 and report.models == len(list(p for p in result.repository.iterdir() if p.is_dir()))


def test_a_bad_request_is_a_clear_error(triton, digits_data):
    with triton.client("grpc") as client:
        with pytest.raises(ServerError, match="model 'digits' .*"):
            client.infer("digits", digits_data["x_test"][:2, :, :4])  # wrong shape
        with pytest.raises(ServerError, match="takes inputs \\['image'\\]; got unknown \\['img'\\]"):
            client.infer("digits", {"img": digits_data["x_test"][:2]})
        with pytest.raises(ServerError, match="model 'nope'"):
            client.infer("nope", digits_data["x_test"][:2])


def test_missing_repository_and_taken_port(tmp_path, triton):
    with pytest.raises(ServerError, match="model repository not found"):
        TritonServer(tmp_path / "absent")
    port = int(triton.url("http").rsplit(":", 1)[1])
    with pytest.raises(ServerError, match=f"port {port} on 127.0.0.1 \\(http port\\) is already in use"):
        TritonServer(triton.config.repository, http_port=port).start()


def test_a_model_that_fails_to_load_stops_startup_with_its_log(tmp_path):
    broken = tmp_path / "repo" / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 0\n')
    (broken / "1" / "model.py").write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(ServerError) as info:
        TritonServer(tmp_path / "repo", startup_timeout=60).start()
    assert "tritonserver exited" in str(info.value) and "boom at import" in str(info.value)
