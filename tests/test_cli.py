"""The tritonfleet command line as a user runs it (a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml


def tritonfleet(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tritonfleet.builder.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


def test_help_lists_subcommands():
    proc = tritonfleet("--help")
    assert proc.returncode == 0
    for sub in ("build", "serve", "demo"):
        assert sub in proc.stdout


def test_bad_spec_is_one_message_without_traceback(spec_factory, tmp_path):
    path = spec_factory(fusion={"type": "median"}, colour="blue")
    proc = tritonfleet("build", path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "error:" in proc.stderr
    assert "fusion: unknown type 'median'" in proc.stderr
    assert "colour: unknown field" in proc.stderr
    assert not (tmp_path / "model_repository").exists()


def test_conversion_error_is_one_message(spec_factory, artifacts, tmp_path):
    raw = yaml.safe_load(spec_factory().read_text())
    raw["members"][0]["model"]["kwargs"] = {"width": 99}
    path = tmp_path / "wrong_width.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = tritonfleet("build", path, "--no-progress")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "members[0] (cnn_small_a).model.checkpoint" in proc.stderr
    assert "does not fit architecture" in proc.stderr
    assert not (tmp_path / "model_repository").exists()
    assert not [p for p in Path(tmp_path).iterdir() if ".staging-" in p.name]


def test_build_prints_the_parity_table(spec_factory, tmp_path):
    path = spec_factory()
    proc = tritonfleet("build", path, "--no-progress", "--target", "ngc", "--output", tmp_path / "ngc")
    assert proc.returncode == 0, proc.stderr
    assert "(target ngc)" in proc.stdout
    for name in ("cnn_small_a", "cnn_small_a_fp16", "cnn_large_int8", "digits_fusion"):
        assert name in proc.stdout
    assert "cnn_small_b serves fp32" in proc.stdout
    assert (tmp_path / "ngc" / "digits" / "config.pbtxt").is_file()


def test_serve_reports_a_missing_repository(tmp_path):
    proc = tritonfleet("serve", tmp_path / "nothing")
    assert proc.returncode == 2
    assert "model repository not found" in proc.stderr and "Traceback" not in proc.stderr
