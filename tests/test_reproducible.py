"""Reproducible, portable repositories: the same spec, checkpoints, data and tool versions give
the same bytes in any directory, from any working directory; verify flags build-host leaks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tritonfleet.builder.build import build
from tritonfleet.builder.repository.verify import leaked_host_details, verify
from tritonfleet.builder.spec import load_spec

from conftest import digits_spec_dict

# Fields of manifest.json that vary between identical builds, by design: when it was built and
# the in-process speed measured during the build (a measurement, not an input).
VARYING = ("built_at", "samples_per_s")


def _layout(root: Path, artifacts: Path, **changes) -> Path:
    """root/ensemble_configs/small.yaml pointing at root/examples/digits/artifacts by relative paths."""
    (root / "examples" / "digits").mkdir(parents=True)
    shutil.copytree(artifacts, root / "examples" / "digits" / "artifacts")
    raw = digits_spec_dict(artifacts, root / "model_repository")
    relative = "../examples/digits/artifacts/"
    raw["members"] = raw["members"][:2]
    raw["baselines"] = []
    for m in raw["members"]:
        m["model"]["checkpoint"] = relative + Path(m["model"]["checkpoint"]).name
    raw["data"]["path"] = relative + "digits.npz"
    raw["output_dir"] = "../model_repository"
    raw.update(changes)
    (root / "ensemble_configs").mkdir()
    spec = root / "ensemble_configs" / "small.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))
    return spec


def _build_in_subprocess(spec: Path, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "tritonfleet.builder.cli", "build", str(spec), "--no-progress"],
                          capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _fingerprint(repo: Path) -> dict[str, str]:
    """sha256 of every file; the manifest without its intentionally varying fields."""
    out = {}
    for path in sorted(p for p in repo.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        data = path.read_bytes()
        if path.name == "manifest.json":
            data = json.dumps(_without_varying(json.loads(data)), sort_keys=True).encode()
        out[path.relative_to(repo).as_posix()] = hashlib.sha256(data).hexdigest()
    return out


def _without_varying(value):
    if isinstance(value, dict):
        return {k: _without_varying(v) for k, v in value.items() if k not in VARYING}
    if isinstance(value, list):
        return [_without_varying(v) for v in value]
    return value


@pytest.fixture(scope="module")
def two_builds(artifacts, tmp_path_factory):
    """The same spec built in two directories, each from a different working directory."""
    a, b = tmp_path_factory.mktemp("place-a") / "project", tmp_path_factory.mktemp("elsewhere") / "deep" / "x"
    spec_a, spec_b = _layout(a, artifacts), _layout(b, artifacts)
    _build_in_subprocess(spec_a, cwd=a)                 # from the project folder
    _build_in_subprocess(spec_b, cwd=Path("/"))         # from elsewhere: relative paths are the spec's
    return (a, spec_a), (b, spec_b)


def test_two_directories_give_identical_files(two_builds):
    (a, _), (b, _) = two_builds
    fa, fb = _fingerprint(a / "model_repository"), _fingerprint(b / "model_repository")
    assert set(fa) == set(fb)
    assert any(name.endswith("model.onnx") for name in fa) and len(fa) > 10
    assert {n for n in fa if fa[n] != fb[n]} == set()


def test_the_manifest_holds_no_absolute_path(two_builds):
    (a, _), (b, _) = two_builds
    for root in (a, b):
        text = (root / "model_repository" / "manifest.json").read_text()
        assert str(root) not in text and "/tmp/" not in text, "absolute path in the manifest"
        pipeline = json.loads(text)["pipelines"]["digits"]
        assert pipeline["spec_dir"] == "../ensemble_configs"
        assert pipeline["spec"]["members"][0]["model"]["checkpoint"] == "../examples/digits/artifacts/cnn_small_a.pt"
        assert pipeline["splits"]["test"]["path"] == "../examples/digits/artifacts/digits.npz"


def test_both_repositories_verify_clean(two_builds):
    for root, _ in two_builds:
        report = verify(root / "model_repository")
        assert report.ok, report.problems


def test_a_repository_moved_to_another_directory_keeps_its_versions(two_builds, tmp_path):
    """A repository built in A, rebuilt from B's spec after moving: nothing is a new version."""
    (a, _), (b, _) = two_builds
    moved = tmp_path / "project"
    shutil.copytree(b, moved, ignore=shutil.ignore_patterns("model_repository"))
    shutil.copytree(a / "model_repository", moved / "model_repository")
    result = build(load_spec(moved / "ensemble_configs" / "small.yaml"), progress=False)
    assert result.actions and all(action == ("unchanged", 1) for action in result.actions.values()), result.actions
    # the monitoring profile is recomputed from the reused variants (an onnxruntime pass over data.validation)
    assert all(step.name.startswith("reuse") or step.name in ("select served variants", "reference profile (monitoring)",
                                                              "write repository")
               for step in result.steps), [s.name for s in result.steps]


def test_debug_info_is_kept_on_request_and_verify_flags_it(artifacts, tmp_path):
    spec = _layout(tmp_path / "dbg", artifacts, export={"keep_debug_info": True},
                   precision={"variants": ["fp32"], "serve": "fp32"})
    build(load_spec(spec), progress=False)
    report = verify(tmp_path / "dbg" / "model_repository")
    leaks = [p for p in report.problems if "holds an absolute path" in p or "repository's absolute path" in p]
    assert leaks and all(p.startswith(("cnn_small_a/1/model.onnx", "cnn_small_b/1/model.onnx")) for p in leaks), \
        report.problems
    assert "rebuild without keep_debug_info" in leaks[0]


def test_leaked_host_details_finds_each_kind(tmp_path, monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "buildhost-7")
    files = {"a.json": b'{"x": "/home/alice/models/a.pt"}', "b.pbtxt": b"built on buildhost-7\n",
             "c.onnx": b"\x00\x01C:\\Users\\bob\\m.py\x00", "d.json": b'{"path": "../data/x.npz"}',
             "e.py": b"# runs on buildhost-7\n", "f.txt": str(tmp_path / "f").encode(),
             "g.onnx": b'File "/builds/ci-42/src/models.py", line 3', "h.py": b"# see builder/runtime/ops.py\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    problems = leaked_host_details(tmp_path, [tmp_path / n for n in files])
    assert problems == [
        "a.json: holds an absolute path ('/home/alice'); a repository should not depend on the machine that built "
        "it (rebuild without keep_debug_info)",
        "b.pbtxt: holds the host name ('buildhost-7'); a repository should not depend on the machine that built "
        "it (rebuild without keep_debug_info)",
        "c.onnx: holds an absolute path ('C:\\Users\\'); a repository should not depend on the machine that built "
        "it (rebuild without keep_debug_info)",
        f"f.txt: holds the repository's absolute path ('{tmp_path}'); a repository should not depend on the "
        "machine that built it (rebuild without keep_debug_info)",
        "g.onnx: holds an absolute path ('/builds/ci-42/src/models.py'); a repository should not depend on the "
        "machine that built it (rebuild without keep_debug_info)",
    ]
    assert os.sep == "/"  # the paths above are POSIX paths
