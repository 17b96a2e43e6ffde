"""The benchmark scripts run end to end (tiny durations; speed is not asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_gpu_check_runs_every_available_runtime(spec_factory, tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--spec", str(spec_factory()), "--device", "cpu",
         "--seconds", "0.02", "--rounds", "1", "--models", "cnn_small_a", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())["rows"]
    measured = {r["runtime"]: r for r in rows if "skipped" not in r}
    assert set(measured) == {"torch eager fp32", "onnxruntime fp32 (CPU)", "onnxruntime fp16 (CPU)",
                             "onnxruntime int8 (CPU)"}
    assert measured["torch eager fp32"]["ratio"] == 1.0
    assert all(r["samples_per_s"] > 0 and 0.9 < r["accuracy"] <= 1.0 for r in measured.values())
    skipped = {r["runtime"]: r["skipped"] for r in rows if "skipped" in r}
    assert "CUDA only" in skipped["torch fp16"]
    assert "| cnn_small_a | torch eager fp32 |" in proc.stdout
