"""Reliability: versioned builds, rollback, verify, interrupted builds, the bad-input
catalogue (docs/RELIABILITY.md), soak, stub faults and security defaults."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tritonfleet.builder.build import build
from tritonfleet.builder.cli import main as cli_main
from tritonfleet.builder.repository.verify import verify
from tritonfleet.builder.repository.versions import rollback
from tritonfleet.builder.spec import load_spec
from tritonfleet.clients.errors import ServerError
from tritonfleet.clients.infer import TritonClient
from tritonfleet.clients.loadgen.soak import run_soak
from tritonfleet.clients.model_config import parse_pbtxt
from tritonfleet.clients.server import TritonServer

from conftest import ROOT, digits_spec_dict

PIPELINE = "rel"


def small_spec(artifacts: Path, repo: Path, checkpoint: Path | None = None, **changes) -> dict:
    """One small CNN and a mean 'ensemble' of it: quick to build, fully served."""
    raw = digits_spec_dict(artifacts, repo)
    member = raw["members"][0]
    if checkpoint is not None:
        member["model"]["checkpoint"] = str(checkpoint)
    raw.update(name=PIPELINE, members=[member], baselines=[], precision={"variants": ["fp32"], "serve": "fp32"})
    raw.update(changes)
    return raw


def write(path: Path, raw: dict | str) -> Path:
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))
    return path


def snapshot(repo: Path) -> dict[str, bytes]:
    return {p.relative_to(repo).as_posix(): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def perturbed(artifacts, tmp_path_factory) -> Path:
    """cnn_small_a with one bias nudged: same architecture, different artifact."""
    state = torch.load(artifacts / "cnn_small_a.pt", weights_only=True)
    state["head.4.bias"] = state["head.4.bias"] + 0.01
    path = tmp_path_factory.mktemp("perturbed") / "cnn_small_a_v2.pt"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def served_repo(artifacts, tmp_path_factory) -> Path:
    """A built repository every bad-input case must leave byte-identical."""
    folder = tmp_path_factory.mktemp("served")
    spec_path = write(folder / "rel.yaml", small_spec(artifacts, folder / "model_repository"))
    build(load_spec(spec_path), progress=False)
    return folder / "model_repository"


# --------------------------------------------------------------------------- versions
def test_changed_model_becomes_a_new_version_and_rolls_back(artifacts, perturbed, tmp_path):
    repo = tmp_path / "model_repository"
    first = build(load_spec(write(tmp_path / "v1.yaml", small_spec(artifacts, repo))), progress=False)
    assert first.actions["cnn_small_a"] == ("new", 1)
    ensemble_config = (repo / PIPELINE / "config.pbtxt").read_bytes()

    second = build(load_spec(write(tmp_path / "v2.yaml", small_spec(artifacts, repo, perturbed))), progress=False)
    assert second.actions["cnn_small_a"] == ("version", 2)
    assert second.actions[PIPELINE][0] == "unchanged"  # the ensemble calls the latest version
    assert (repo / PIPELINE / "config.pbtxt").read_bytes() == ensemble_config
    assert sorted(p.name for p in (repo / "cnn_small_a").iterdir()) == ["1", "2", "config.pbtxt"]
    record = json.loads((repo / "manifest.json").read_text())["models"]["cnn_small_a"]
    assert record["version"] == 2 and sorted(record["versions"]) == ["1", "2"]
    assert record["versions"]["1"]["artifact_sha256"] != record["versions"]["2"]["artifact_sha256"]
    assert verify(repo).ok

    done = rollback(repo, "cnn_small_a")
    assert done.served == 1 and done.available == [1, 2]
    config = parse_pbtxt((repo / "cnn_small_a" / "config.pbtxt").read_text())
    assert list(config.version_policy.specific.versions) == [1]
    assert verify(repo).ok  # the manifest follows the config
    rollback(repo, "cnn_small_a", latest=True)
    assert not parse_pbtxt((repo / "cnn_small_a" / "config.pbtxt").read_text()).HasField("version_policy")
    with pytest.raises(Exception, match="no version 7"):
        rollback(repo, "cnn_small_a", 7)

    for _ in range(3):  # keep_versions=3: the oldest goes
        build(load_spec(write(tmp_path / "v1.yaml", small_spec(artifacts, repo))), progress=False)
        build(load_spec(write(tmp_path / "v2.yaml", small_spec(artifacts, repo, perturbed))), progress=False)
    assert len([p for p in (repo / "cnn_small_a").iterdir() if p.name.isdigit()]) == 3
    assert verify(repo).ok


def test_verify_finds_tampering(served_repo, tmp_path):
    import shutil

    copy = tmp_path / "model_repository"
    shutil.copytree(served_repo, copy)
    assert verify(copy).ok
    (copy / "cnn_small_a" / "1" / "model.onnx").write_bytes(b"tampered")
    (copy / "cnn_small_a" / "1" / "extra.bin").write_bytes(b"x")
    (copy / "stray").mkdir()
    problems = "\n".join(verify(copy).problems)
    assert "cnn_small_a/1/model.onnx: sha256 differs" in problems
    assert "cnn_small_a/1/extra.bin: not recorded" in problems
    assert "stray: folder not recorded" in problems
    assert cli_main(["verify", str(copy)]) == 1


def test_supervised_server_picks_up_builds_and_rollbacks(artifacts, perturbed, tmp_path, digits_data):
    repo = tmp_path / "model_repository"
    build(load_spec(write(tmp_path / "v1.yaml", small_spec(artifacts, repo))), progress=False)
    x = digits_data["x_test"][:8]
    with TritonServer(repo, model_control_mode="explicit", supervise=True) as server, \
            TritonClient(server.url("grpc")) as client:
        v1 = client.infer("cnn_small_a", x)["logits"]
        build(load_spec(write(tmp_path / "v2.yaml", small_spec(artifacts, repo, perturbed))), progress=False)
        v2 = _wait_for_change(client, "cnn_small_a", x, v1)
        assert np.abs(v2 - v1).max() > 1e-4
        assert client._client.is_model_ready("cnn_small_a", "2")
        rollback(repo, "cnn_small_a")
        back = _wait_for_change(client, "cnn_small_a", x, v2)
        np.testing.assert_allclose(back, v1, atol=1e-6)
        assert client.infer(PIPELINE, x)["probabilities"].shape == (8, 10)
        assert server.supervisor.errors == []
        assert server.supervisor.reloads["cnn_small_a"] >= 2


def _wait_for_change(client, model, x, before, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            out = client.infer(model, x)["logits"]
            if np.abs(out - before).max() > 1e-6:
                return out
        except ServerError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{model} did not change within {timeout}s")


# --------------------------------------------------------------------------- interrupted builds
PRE_COMMIT = ["after-export", "after-steps", "before-commit"]
MID_COMMIT = ["commit-journal-written", "commit-step-0", "commit-step-1"]


@pytest.mark.parametrize("point", [*PRE_COMMIT, *MID_COMMIT, "commit-manifest-replaced"])
def test_killed_builds_never_damage_the_repository(artifacts, perturbed, tmp_path, point):
    repo = tmp_path / "model_repository"
    build(load_spec(write(tmp_path / "v1.yaml", small_spec(artifacts, repo))), progress=False)
    before = snapshot(repo)
    # a new artifact and new serving settings: a commit of several steps (configs, version folder)
    changed = write(tmp_path / "v2.yaml", small_spec(artifacts, repo, perturbed, serving={
        "max_batch_size": 64, "dynamic_batching": {"max_queue_delay_microseconds": 500}}))
    proc = subprocess.run([sys.executable, "-m", "tritonfleet.builder.cli", "build", str(changed), "--no-progress"],
                          env={**os.environ, "TRITONFLEET_FAILPOINT": point}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    if point in PRE_COMMIT:
        assert snapshot(repo) == before  # untouched, no repair needed
        assert verify(repo).ok
    else:
        report = verify(repo)
        if point in MID_COMMIT:
            assert not report.ok and "interrupted commit" in report.problems[0]
        repaired = verify(repo, repair=True)
        assert repaired.repaired == ("completed" if point == "commit-manifest-replaced" else "rolled back")
        assert repaired.ok, repaired.problems
        if point in MID_COMMIT:
            assert snapshot(repo) == before
        else:
            assert (repo / "cnn_small_a" / "2").is_dir()
    # the next build cleans up after the killed one and succeeds
    build(load_spec(changed), progress=False)
    assert verify(repo).ok
    assert not list(repo.parent.glob(".model_repository.staging-*"))


def test_a_repaired_repository_loads(artifacts, perturbed, tmp_path, digits_data):
    repo = tmp_path / "model_repository"
    build(load_spec(write(tmp_path / "v1.yaml", small_spec(artifacts, repo))), progress=False)
    changed = write(tmp_path / "v2.yaml", small_spec(artifacts, repo, perturbed))
    subprocess.run([sys.executable, "-m", "tritonfleet.builder.cli", "build", str(changed), "--no-progress"],
                   env={**os.environ, "TRITONFLEET_FAILPOINT": "commit-step-1"}, capture_output=True, timeout=300)
    assert cli_main(["verify", str(repo), "--repair"]) == 0
    with TritonServer(repo) as server, server.client() as client:
        assert set(client.models().values()) == {"READY"}
        assert client.infer(PIPELINE, digits_data["x_test"][:4])["class_index"].shape == (4, 1)


# --------------------------------------------------------------------------- bad-input catalogue
def _catalogue(artifacts: Path, repo: Path, tmp: Path, digits: dict, perturbed: Path):
    """id -> (spec path, expected message). Every case must fail before touching ``repo``."""

    def spec(**changes):
        return small_spec(artifacts, repo, **changes)

    def member_edit(fn):
        raw = spec()
        fn(raw["members"][0])
        return raw

    def data(name, **arrays):  # one file per case: the whole table is built at once
        np.savez(tmp / f"{name}.npz", **{**digits, **arrays})
        return spec(data={"path": str(tmp / f"{name}.npz"), "test": {"inputs": "x_test", "labels": "y_test"},
                          "validation": {"inputs": "x_val", "labels": "y_val"}, "calibration": {"inputs": "x_calib"}},
                    precision={"variants": ["fp32", "int8"], "serve": "fp32"})

    junk = tmp / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    (tmp / "afile").write_text("a file, not a folder")
    (tmp / "loop.yaml").write_text("extends: loop.yaml\n")
    second = small_spec(artifacts, repo, perturbed, name="other")
    two = spec()
    two["members"] = [two["members"][0], {**two["members"][0], "name": "twin",
                                          "outputs": [{"name": "logits", "dtype": "float32", "shape": [12]}]}]
    chained = spec()
    chained["members"] = [chained["members"][0], {
        "name": "head", "model": {"architecture": "tritonfleet.examples.digits.models:DigitsHead",
                                  "checkpoint": str(artifacts / "digits_head_a.pt")},
        "inputs": [{"name": "features", "dtype": "float32", "shape": [32]}],
        "inputs_from": {"features": "cnn_small_a.logits"},
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [10]}]}]
    return {
        "yaml-malformed": ("name: x\nmembers: [\n", "malformed YAML at line"),
        "yaml-not-a-mapping": ("- 1\n- 2\n", "must be a YAML mapping"),
        "spec-file-missing": (tmp / "absent.yaml", "spec file not found"),
        "unknown-key": (spec(colour="blue"), "colour: unknown field"),
        "unknown-nested-key": (member_edit(lambda m: m["model"].update(kwarg={})), "did you mean 'kwargs'"),
        "duplicate-member": (spec(members=[spec()["members"][0]] * 2), "model name 'cnn_small_a' is used twice"),
        "name-with-separator": (spec(name="a/b"), "'a/b' is not a valid name"),
        "name-dot-dot": (member_edit(lambda m: m.update(name="..")), "'..' is not a valid name"),
        "missing-checkpoint": (member_edit(lambda m: m["model"].update(checkpoint=str(tmp / "none.pt"))),
                               "file not found"),
        "corrupt-checkpoint": (member_edit(lambda m: m["model"].update(checkpoint=str(junk))),
                               "as a PyTorch checkpoint"),
        "checkpoint-for-another-architecture": (member_edit(lambda m: m["model"].update(kwargs={"width": 99})),
                                                "does not fit architecture"),
        "architecture-not-importable": (member_edit(lambda m: m["model"].update(architecture="no_pkg.mod:Net")),
                                        "cannot import 'no_pkg.mod'"),
        "negative-weights": (spec(fusion={"type": "weighted_mean", "weights": [-1.0]}), "weights must be finite"),
        "non-finite-weights": (spec(fusion={"type": "weighted_mean", "weights": [float("nan")]}),
                               "weights must be finite"),
        "mismatched-output-shapes": (two, "identical member output shapes"),
        "unsupported-dtype": (member_edit(lambda m: m["inputs"][0].update(dtype="complex64")), "dtype: Input should be"),
        "max-batch-zero": (spec(serving={"max_batch_size": 0}), "greater than or equal to 1"),
        "max-batch-huge": (spec(serving={"max_batch_size": 100000}), "less than or equal to 4096"),
        "unknown-fusion": (spec(fusion={"type": "median"}), "unknown type 'median'"),
        "unknown-precision": (spec(precision={"variants": ["fp8"]}), "Input should be 'fp32', 'fp16' or 'int8'"),
        "chained-shape-mismatch": (chained, "'cnn_small_a.logits' produces float32[10] but 'head.features' expects"),
        "extends-cycle": (tmp / "loop.yaml", "makes a cycle"),
        "calibration-wrong-shape": (data("calibration-wrong-shape", x_calib=np.zeros((8, 1, 7, 7), np.float32)),
                                    "per-sample shape [1, 7, 7]"),
        "calibration-wrong-dtype": (data("calibration-wrong-dtype", x_calib=np.zeros((8, 1, 8, 8), np.int64)), "has dtype int64"),
        "calibration-empty": (data("calibration-empty", x_calib=np.zeros((0, 1, 8, 8), np.float32)), "non-zero number of samples"),
        "data-with-nan": (data("data-with-nan", x_val=np.full((8, 1, 8, 8), np.nan, np.float32)), "holds NaN or inf"),
        "labels-count-mismatch": (data("labels-count-mismatch", y_test=digits["y_test"][:5]), "5 labels for 360 samples"),
        "data-array-missing": (spec(data={"path": str(artifacts / "digits.npz"), "test": {"inputs": "x_tst"}}),
                               "array 'x_tst' is not in"),
        "output-not-writable": (spec(output_dir=str(tmp / "afile" / "repo")), "cannot write beside output_dir"),
        "output-is-a-file": (spec(output_dir=str(tmp / "afile")), "exists and is not a folder"),
        "shared-model-would-change": (second, "is shared with pipeline rel and would change"),
    }


CATALOGUE_IDS = [
    "yaml-malformed", "yaml-not-a-mapping", "spec-file-missing", "unknown-key", "unknown-nested-key",
    "duplicate-member", "name-with-separator", "name-dot-dot", "missing-checkpoint", "corrupt-checkpoint",
    "checkpoint-for-another-architecture", "architecture-not-importable", "negative-weights", "non-finite-weights",
    "mismatched-output-shapes", "unsupported-dtype", "max-batch-zero", "max-batch-huge", "unknown-fusion",
    "unknown-precision", "chained-shape-mismatch", "extends-cycle", "calibration-wrong-shape",
    "calibration-wrong-dtype", "calibration-empty", "data-with-nan", "labels-count-mismatch", "data-array-missing",
    "output-not-writable", "output-is-a-file", "shared-model-would-change",
]


@pytest.mark.parametrize("case", CATALOGUE_IDS)
def test_bad_input_is_one_clear_error(case, served_repo, artifacts, digits_data, perturbed, tmp_path, capsys):
    before = snapshot(served_repo)
    source, expected = _catalogue(artifacts, served_repo, tmp_path, digits_data, perturbed)[case]
    path = source if isinstance(source, Path) else write(tmp_path / f"{case}.yaml", source)
    code = cli_main(["build", str(path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in " ".join(err.split()), err
    assert "Traceback" not in err and err.count("error:") == 1
    assert snapshot(served_repo) == before
    assert not list(served_repo.parent.glob(".model_repository.staging-*"))


def test_disk_full_during_the_build(served_repo, artifacts, tmp_path):
    """A write failure (simulated with a file-size limit) is one error; the repository is intact."""
    import resource

    before = snapshot(served_repo)
    path = write(tmp_path / "full.yaml", small_spec(artifacts, served_repo, name="full"))

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    proc = subprocess.run([sys.executable, "-m", "tritonfleet.builder.cli", "build", str(path), "--no-progress"],
                          preexec_fn=limit, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "File too large" in proc.stderr and "nothing was changed" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
    assert snapshot(served_repo) == before


def test_the_catalogue_is_documented():
    doc = (ROOT / "docs" / "RELIABILITY.md").read_text()
    for case in [*CATALOGUE_IDS, "disk-full", *REQUEST_CASES]:
        assert f"`{case}`" in doc, case


# --------------------------------------------------------------------------- bad requests
REQUEST_CASES = ["wrong-input-name", "wrong-shape", "wrong-dtype", "empty-batch", "nan-input", "oversized-request",
                 "unknown-model", "server-not-running"]


@pytest.mark.parametrize("case", REQUEST_CASES)
def test_bad_request_is_a_clear_error_and_the_server_stays_healthy(case, triton, digits_data):
    x = digits_data["x_test"]
    nan = x[:2].copy()
    nan[0, 0, 0, 0] = np.nan
    cases = {
        "wrong-input-name": ("digits", {"img": x[:2]}, "takes inputs ['image']; got unknown ['img']"),
        "wrong-shape": ("digits", x[:2, :, :4], "unexpected shape for input 'image'"),
        "wrong-dtype": ("digits", x[:2].astype(np.float64), "data-type is 'FP64', but model 'digits' expects 'FP32'"),
        "empty-batch": ("digits", x[:0], "empty batch ({'image': 0} samples); send at least one sample"),
        "nan-input": ("digits_vote", nan, "fusion: member 0 scores hold NaN or inf values"),
        "oversized-request": ("digits", np.concatenate([x, x])[:65], "batch-size must be <= 64"),
        "unknown-model": ("nope", x[:2], "model 'nope'"),
        "server-not-running": ("digits", x[:2], "cannot reach tritonserver at 127.0.0.1:1"),
    }
    model, inputs, message = cases[case]
    url = "127.0.0.1:1" if case == "server-not-running" else triton.url("grpc")
    with TritonClient(url) as client:
        with pytest.raises(ServerError) as info:
            client.infer(model, inputs)
        assert message in str(info.value)
    with triton.client() as client:
        assert client.infer("digits", x[:2])["probabilities"].shape == (2, 10)


# --------------------------------------------------------------------------- soak and faults
def test_short_soak_has_no_failures(triton, digits_data):
    result = run_soak(triton.url("grpc"), "digits", [digits_data["x_test"]], total=3000, concurrency=16,
                      server_pid=triton.pid, warmup=300)
    assert result.completed == 3000 and result.failures == 0, result.error_messages
    assert len(result.segments) == 10 and all(s["p50_ms"] <= s["p99_ms"] for s in result.segments)
    assert len(result.rss_mb) >= 2 and result.rss_mb[0] > 100  # server + stubs measured


def test_a_killed_stub_is_restarted_and_retrying_clients_see_no_error(served_repo, digits_data, tmp_path):
    import shutil

    repo = tmp_path / "model_repository"
    shutil.copytree(served_repo, repo)
    x = digits_data["x_test"][:4]
    with TritonServer(repo, model_control_mode="explicit", supervise=True) as server:
        (stub,) = [pid for pid, model in server.supervisor.stub_processes() if model == "cnn_small_a"]
        with server.client("grpc", retries=6, backoff=0.25) as client:
            outputs = []
            for i in range(40):
                if i == 5:
                    os.kill(stub, signal.SIGKILL)
                outputs.append(client.infer(PIPELINE, x)["probabilities"])
        assert server.supervisor.restarts["cnn_small_a"] == 1
        assert all(np.allclose(o, outputs[0], atol=1e-6) for o in outputs)
        with server.client("grpc") as plain:  # without retries: also fine once restarted
            assert plain.infer(PIPELINE, x)["probabilities"].shape == (4, 10)


# --------------------------------------------------------------------------- security defaults
def test_no_unsafe_deserialisation_or_eval_in_the_code():
    sources = [p for folder in ("builder", "clients", "examples", "bench") for p in (ROOT / folder).rglob("*.py")]
    unsafe = re.compile(r"^\s*(import|from) pickle|pickle\.loads?\(|(?<![\w.])eval\(|(?<![\w.])exec\(|"
                        r"yaml\.load\(|allow_pickle=True|weights_only=False|shell=True")
    offenders = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in sources
                 for i, line in enumerate(p.read_text().splitlines(), 1) if unsafe.search(line)]
    assert offenders == []
    loads = [line for p in sources for line in p.read_text().splitlines() if "torch.load(" in line]
    assert loads and all("weights_only=True" in line for line in loads), loads


def test_server_binds_loopback_by_default(triton):
    assert triton.config.host == "127.0.0.1"
    args = " ".join(triton.config.to_args())
    assert "--http-address=127.0.0.1" in args and "--grpc-address=127.0.0.1" in args
