"""Inputs and outputs through Triton's system shared memory, against the real server: the client,
the load generator, and the clear error for CUDA shared memory on a host without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tritonfleet.clients.errors import UsageError
from tritonfleet.clients.loadgen import LoadConfig, run_load
from tritonfleet.clients.shm import SystemRegion

N = 32


def _logits(model, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def _registered(url: str) -> set[str]:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        status = client.get_system_shared_memory_status(as_json=True)
    return set(status.get("regions", {}))


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_system_shared_memory_inference_matches_pytorch(triton, torch_models, digits_data, protocol):
    x = digits_data["x_test"][:N]
    with triton.client(protocol, shared_memory="system") as client:
        for model in ("cnn_small_a", "cnn_small_a_ts"):  # the ONNX runner and the torch runner
            out = client.infer(model, x)["logits"]
            assert out.shape == (N, 10) and out.dtype == np.float32
            np.testing.assert_allclose(out, _logits(torch_models["cnn_small_a"], x), atol=1e-5, rtol=0, err_msg=model)
        small = client.infer("cnn_small_b", x[:3])["logits"]  # smaller requests reuse the regions
        np.testing.assert_allclose(small, _logits(torch_models["cnn_small_b"], x[:3]), atol=1e-5, rtol=0)
        fused = client.infer("digits", x)
        regions = {r.name for r in client._shm.regions.values()}
        assert regions and regions <= _registered(triton.url("grpc"))
    probs = [torch.softmax(torch.from_numpy(_logits(torch_models[m], x)).double(), 1).numpy()
             for m in ("cnn_small_a", "cnn_small_b", "cnn_small_c")]
    np.testing.assert_allclose(fused["probabilities"], np.mean(probs, axis=0), atol=1e-5, rtol=0)
    assert fused["class_index"].shape == (N, 1)
    assert not regions & _registered(triton.url("grpc"))  # closing the client unregistered them
    assert not any(Path("/dev/shm", name).exists() for name in regions)  # and freed the memory


def test_the_load_generator_sends_through_system_shared_memory(triton, digits_data):
    config = LoadConfig("cnn_small_a_ts", concurrency=4, batch_size=8, warmup_s=0.2, window_s=0.3, max_windows=4,
                        shared_memory="system")
    result = run_load(triton.url("grpc"), config, [digits_data["x_test"][:64]])
    assert result.errors == 0 and result.requests > 0, result.error_messages
    # the server counted them: its statistics are read at the reported windows' edges, where up to
    # `concurrency` requests the client counts may have finished on the server just before the first read
    assert result.server["cnn_small_a_ts"].requests >= result.requests - config.concurrency
    assert not any(name.startswith("loadgen_cnn_small_a_ts") for name in _registered(triton.url("grpc")))


def test_a_region_round_trips_and_refuses_what_does_not_fit():
    region = SystemRegion(64)
    try:
        data = np.arange(12, dtype=np.float32).reshape(3, 4)
        assert region.write(data, 8) == 48
        np.testing.assert_array_equal(region.read(np.float32, (3, 4), 8), data)
        with pytest.raises(UsageError) as info:
            region.write(data, 20)
        assert str(info.value) == (f"shared memory region '{region.name}': 48 bytes at offset 20 do not fit "
                                   "its 64 bytes")
    finally:
        region.close()
    assert not Path("/dev/shm", region.name).exists()


def test_cuda_shared_memory_without_a_gpu_is_one_clear_error(triton, digits_data):
    if torch.cuda.is_available():
        pytest.skip("this host has a GPU: bench/gpu_check.py exercises CUDA shared memory")
    with triton.client("grpc", shared_memory="cuda") as client, pytest.raises(UsageError) as info:
        client.infer("cnn_small_a", digits_data["x_test"][:2])
    assert str(info.value) == ("CUDA shared memory needs a CUDA GPU (device 0) visible to torch in the client; torch "
                               "sees none here: use shared memory 'system' (or 'none')")
    with pytest.raises(UsageError) as info:
        triton.client("grpc", shared_memory="shared")
    assert str(info.value) == "shared memory must be one of none, system, cuda, not 'shared'"
    with pytest.raises(UsageError) as info:
        LoadConfig("m", shared_memory="gpu")
    assert str(info.value) == "load shared_memory must be none, system or cuda (got 'gpu')"
