"""tritonfleet as a user installs it: a wheel (not editable) with one top-level package,
whose demo runs outside the clone and writes nothing into site-packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("tritonfleet-*.whl")
    return path


def test_the_wheel_holds_one_top_level_package(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        info = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert zf.read(info).decode().split() == ["tritonfleet"]
        record = zf.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    tops = {line.split("/", 1)[0] for line in record.splitlines() if line}
    assert tops == {"tritonfleet", wheel.name.split("-py3")[0] + ".dist-info"}, tops
    for expected in ("tritonfleet/builder/cli/__init__.py", "tritonfleet/builder/runtime/ops.py",
                     "tritonfleet/clients/loadgen/engines.py", "tritonfleet/examples/digits/models.py",
                     "tritonfleet/examples/ensemble_configs/digits.yaml"):
        assert expected in names
    assert not [n for n in names if "/artifacts/" in n or n.endswith((".pt", ".npz", ".onnx"))]


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh environment with the wheel installed (its dependencies come from the test
    environment through a .pth line; the editable install of the clone is not visible)."""
    env = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    purelib = Path(subprocess.check_output([str(env / "bin" / "python"), "-c",
                                            "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                           text=True).strip())
    (purelib / "_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(purelib), str(wheel)],
                   check=True, timeout=300)
    return env


def test_the_installed_demo_runs_outside_the_clone(installed, artifacts, tmp_path):
    python = installed / "bin" / "python"
    where = subprocess.check_output([str(python), "-c", "import tritonfleet.builder; print(tritonfleet.builder.__file__)"],
                                    text=True, cwd=tmp_path).strip()
    assert where.startswith(str(installed)) and not where.startswith(str(ROOT)), where
    site = Path(where).parents[2]
    before = {p for p in site.rglob("*") if "__pycache__" not in p.parts}

    workdir = tmp_path / "demo"
    shutil.copytree(artifacts, workdir / "examples" / "digits" / "artifacts")  # trained already: cached by recipe
    env = {**os.environ, "PATH": f"{installed / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [str(python), "-m", "tritonfleet.builder.cli", "demo", "--workdir", str(workdir), "--specs", "digits_cascade",
         "--concurrency", "1", "--window", "0.25", "--max-windows", "3", "--no-progress"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (workdir / "ensemble_configs" / "digits.yaml").is_file()  # the specs were copied from the package
    assert (workdir / "model_repository" / "digits_cascade" / "config.pbtxt").is_file()
    assert (workdir / "reports" / "report.md").is_file() and (workdir / "reports" / "bench.json").is_file()
    assert "digits_cascade" in proc.stdout and "report:" in proc.stdout
    after = {p for p in site.rglob("*") if "__pycache__" not in p.parts}
    assert after == before, sorted(map(str, after - before))[:10]
