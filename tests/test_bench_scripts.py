"""The benchmark scripts run end to end (tiny durations; speed is not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT

GPU_CHECK = ROOT / "bench" / "gpu_check.py"


def test_gpu_check_runs_the_cpu_path_end_to_end(tmp_path):
    """Build (ONNX + TorchScript, uint8 inputs), every in-process runtime with device-resident inputs,
    served over gRPC and system shared memory with served outputs equal to in-process ones."""
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(GPU_CHECK), "--device", "cpu", "--batches", "1,4", "--seconds", "0.02", "--rounds", "2",
         "--warmup", "0.1", "--window", "0.2", "--max-windows", "3", "--concurrency", "2", "--skip", "compile",
         "--json", str(out)],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["device"] == "cpu" and data["problems"] == []
    measured = {(r["runtime"], r["batch"]): r for r in data["in_process"] if "skipped" not in r}
    runtimes = {"torch eager fp32", "torch eager fp32 channels_last", "torchscript fp32 (the served file)",
                "onnxruntime fp32 IOBinding (CPU)"}
    assert set(measured) == {(name, b) for name in runtimes for b in (1, 4)}
    assert all(r["samples_per_s"] > 0 and len(r["rounds"]) == 2 for r in measured.values())
    assert all(r["max_abs_diff_vs_eager_fp32"] < 1e-4 for r in measured.values())  # same model everywhere
    skipped = {r["runtime"]: r["skipped"] for r in data["in_process"] if "skipped" in r}
    assert skipped == {"torch eager fp16": "CUDA only (CPU fp16 convolutions are reference kernels)",
                       "torch.compile": "skipped (--skip compile)",
                       "tensorrt": "the tensorrt package is not installed"}
    served = {(r["transport"], r["batch"]): r for r in data["served"]}
    assert set(served) == {(t, b) for t in ("grpc", "system") for b in (1, 4)}  # CUDA shm only on CUDA
    for row in served.values():
        assert row["max_rel_diff"] <= 1e-3  # served == in-process, checked before timing
        assert len(row["served_rounds"]) == len(row["in_process_rounds"]) == 2  # ABBA
        assert row["ratio_min"] <= row["ratio"] <= row["ratio_max"]
    assert "| fp32 | system shm | 4 |" in proc.stdout
    assert "Goals (issue 16) apply to the CUDA run" in proc.stdout


def test_gpu_check_prints_the_gpu_recipe_and_rerenders_a_saved_run(tmp_path):
    help_text = subprocess.run([sys.executable, str(GPU_CHECK), "--help"], capture_output=True, text=True,
                               timeout=120).stdout
    assert "GPU recipe" in help_text and "carry [\".whl\"]" in help_text
    assert "python3 bench/gpu_check.py --json $OUT/gpu_check.json" in help_text
    saved = {"header": "device: cuda (H100)", "device": "cuda", "concurrency": 4, "batches": [32], "notes": [],
             "problems": [],
             "in_process": [{"runtime": "torch.compile fp16 channels_last", "batch": 32, "samples_per_s": 1000.0,
                             "vs_eager_fp32": 3.0, "max_abs_diff_vs_eager_fp32": 0.01, "rounds": [1000.0]}],
             "served": [{"model": "m", "precision": "fp16", "transport": "cuda", "batch": 32, "served_per_s": 900.0,
                         "in_process_per_s": 1000.0, "ratio": 0.9, "ratio_min": 0.75, "ratio_max": 0.95,
                         "stable": True, "max_rel_diff": 1e-3, "served_rounds": [], "in_process_rounds": []}]}
    path = tmp_path / "saved.json"
    path.write_text(json.dumps(saved))
    proc = subprocess.run([sys.executable, str(GPU_CHECK), "--from-json", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    # the lower end of the range decides: 0.75 < 0.8 is a missed goal, however good the median
    assert "- CUDA shm ÷ in-process, fp16, batch 32: 0.90 [0.75–0.95] — goal >= 0.8: MISSED" in proc.stdout
    assert ("- best served variant at batch 32 (fp16, cuda): 900/s vs torch.compile fp16 channels_last in-process "
            "1,000/s — goal >=: MISSED") in proc.stdout


def test_tune_digits_smoke(triton, tmp_path, capsys):
    """tune --dry-run on the session server's digits ensemble, then the default against the compared
    candidate in ABBA rounds; afterwards the server serves the repository's configs again."""
    import importlib

    from tritonfleet.builder.lifecycle.tune.space import read_settings
    from tritonfleet.clients.model_config import parse_pbtxt

    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    repo, out = triton.config.repository, tmp_path / "tune.json"
    argv = ["--smoke", "--url", triton.url("grpc"), "--repository", str(repo), "--json", str(out)]
    assert importlib.import_module("tune_digits").main(argv) == 0
    data, printed = json.loads(out.read_text()), capsys.readouterr().out
    assert data["models"][-1] == "digits_fusion" and len(data["models"]) >= 3
    assert data["candidates"][0]["label"] == "default" and len(data["candidates"]) == 2
    rounds = data["rounds"]
    assert rounds["sides"] == ["default", "tuned"] and len(rounds["rounds"]) == 2
    assert all(r[s]["value"] > 0 and r[s]["errors"] == 0 for r in rounds["rounds"] for s in ("default", "tuned"))
    ratios = [rounds["rounds"][i]["tuned"]["value"] / rounds["rounds"][i]["default"]["value"] for i in rounds["kept"]]
    assert data["ratio"]["n"] == len(ratios)
    if ratios:
        assert data["ratio"]["min"] <= data["ratio"]["median"] <= data["ratio"]["max"]
        assert min(ratios) == data["ratio"]["min"] and max(ratios) == data["ratio"]["max"]
    assert ("The default is already best on this machine" in printed) != data["improved"]
    assert "| 0 | default |" in printed and "Verdict (the ratio > 1 in every kept round" in printed
    client = triton.client("grpc")
    try:
        for model in data["models"]:
            served = client._client.get_model_config(model, as_json=True)["config"]
            disk = read_settings(parse_pbtxt((repo / model / "config.pbtxt").read_text()))
            assert int(served["instance_group"][0]["count"]) == disk.instances, model
    finally:
        client.close()
