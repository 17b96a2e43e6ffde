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
    raw.pop("distillation", None)  # other commands' settings: this spec is for builds only
    raw.get("serving", {}).pop("compile", None)
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
# a new artifact and new serving settings: a commit of several steps (configs, version folder)
SEVERAL_STEPS = {"serving": {"max_batch_size": 64, "dynamic_batching": {"max_queue_delay_microseconds": 500}}}


def _killed_build(spec_path: Path, point: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "tritonfleet.builder.cli", "build", str(spec_path), "--no-progress"],
                          env={**os.environ, "TRITONFLEET_FAILPOINT": point}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr)  # it was killed right there


def _interrupted_commit_reported(repo: Path) -> None:
    repo = repo.resolve()
    report = verify(repo)
    journal = repo.parent / f".{repo.name}.commit-journal.json"
    assert not report.ok and report.problems == [
        f"an interrupted commit left {journal}; run 'tritonfleet verify {repo} --repair' (or build again) to restore "
        "the repository"], report.problems


@pytest.mark.parametrize("point", [*PRE_COMMIT, *MID_COMMIT, "commit-manifest-replaced"])
def test_killed_builds_never_damage_the_repository(artifacts, perturbed, tmp_path, point):
    """Killed at each point, then repaired by ``verify --repair`` -- except inside the commit's steps
    (commit-step-1), where nothing repairs it but the next build."""
    repo = tmp_path / "model_repository"
    build(load_spec(write(tmp_path / "v1.yaml", small_spec(artifacts, repo))), progress=False)
    before = snapshot(repo)
    changed = write(tmp_path / "v2.yaml", small_spec(artifacts, repo, perturbed, **SEVERAL_STEPS))
    _killed_build(changed, point)
    if point in PRE_COMMIT:
        assert snapshot(repo) == before  # untouched, no repair needed
        assert verify(repo).ok
    elif point == "commit-step-1":  # recovered by the next build alone (below)
        _interrupted_commit_reported(repo)
        assert snapshot(repo) != before  # two steps were applied
    else:
        if point in MID_COMMIT:
            _interrupted_commit_reported(repo)
        repaired = verify(repo, repair=True)
        assert repaired.repaired == ("completed" if point == "commit-manifest-replaced" else "rolled back")
        assert repaired.ok, repaired.problems
        if point in MID_COMMIT:
            assert snapshot(repo) == before
        else:
            assert (repo / "cnn_small_a" / "2").is_dir()
    # the next build recovers (or cleans up after) the killed one and succeeds
    result = build(load_spec(changed), progress=False)
    assert result.actions["cnn_small_a"] == (("version+config", 2) if point != "commit-manifest-replaced"
                                             else ("unchanged", 2))
    assert verify(repo).ok
    after = snapshot(repo)
    assert {k: v for k, v in after.items() if k.startswith("cnn_small_a/1/")} == \
        {k: v for k, v in before.items() if k.startswith("cnn_small_a/1/")}  # version 1 kept byte for byte
    assert not list(repo.parent.glob(".model_repository.staging-*"))
    assert not (repo.parent / ".model_repository.commit-journal.json").exists()


def test_a_repaired_repository_loads(artifacts, perturbed, tmp_path, digits_data):
    repo = tmp_path / "model_repository"
    build(load_spec(write(tmp_path / "v1.yaml", small_spec(artifacts, repo))), progress=False)
    before = snapshot(repo)
    changed = write(tmp_path / "v2.yaml", small_spec(artifacts, repo, perturbed, **SEVERAL_STEPS))
    _killed_build(changed, "commit-step-1")  # two of its steps applied, the manifest still the old one
    _interrupted_commit_reported(repo)
    assert cli_main(["verify", str(repo), "--repair"]) == 0
    assert snapshot(repo) == before
    with TritonServer(repo) as server, server.client() as client:
        assert set(client.models().values()) == {"READY"}
        assert client.infer(PIPELINE, digits_data["x_test"][:4])["class_index"].shape == (4, 1)


def test_a_write_error_inside_the_commit_is_one_error_and_changes_nothing(served_repo, artifacts, tmp_path,
                                                                         monkeypatch, capsys):
    """A disk error between two commit steps (failpoint ``commit-step-1:eio``), not in staging: the
    steps applied are rolled back at once, the build fails with one error, no journal is left."""
    import shutil

    repo = tmp_path / "model_repository"
    shutil.copytree(served_repo, repo)
    before = snapshot(repo)
    # serving settings only: the artifacts are reused, the commit replaces configs (several steps)
    changed = write(tmp_path / "config-only.yaml", small_spec(artifacts, repo, serving={
        "max_batch_size": 32, "dynamic_batching": {"max_queue_delay_microseconds": 700}}))
    monkeypatch.setenv("TRITONFLEET_FAILPOINT", "commit-step-1:eio")
    code = cli_main(["build", str(changed), "--no-progress"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2, err
    assert re.fullmatch(
        rf"error: could not write while building into {re.escape(str(repo))}: Input/output error "
        rf"\({re.escape(str(repo))}/[^ ]+\); nothing was changed\. Free space or fix permissions and build again\.",
        err), err
    assert snapshot(repo) == before
    assert not (repo.parent / ".model_repository.commit-journal.json").exists()
    assert verify(repo).ok
    monkeypatch.delenv("TRITONFLEET_FAILPOINT")
    assert cli_main(["build", str(changed), "--no-progress"]) == 0  # the same build, without the fault
    assert verify(repo).ok and snapshot(repo) != before


def test_the_commit_fsyncs_before_it_renames(tmp_path, monkeypatch):
    """Durability across a power cut: every staged file is fsynced before the first step, a backup
    before the file it saves is replaced, every folder a rename touches after it, the repository
    folder after the new manifest, and the journal's folder before and after the journal."""
    from tritonfleet.builder.repository import journal as journal_module
    from tritonfleet.builder.repository.journal import Journal, journal_path

    repo, staging = tmp_path / "repo", tmp_path / ".repo.staging-1"
    (repo / "m" / "1").mkdir(parents=True)
    (repo / "m" / "config.pbtxt").write_text("old config")
    (repo / "m" / "1" / "model.onnx").write_bytes(b"v1")
    (repo / "manifest.json").write_text("{}")
    (staging / "m" / "1").mkdir(parents=True)
    (staging / "m" / "config.pbtxt").write_text("new config")
    (staging / "m" / "1" / "model.onnx").write_bytes(b"v2")
    (staging / "manifest.json").write_text('{"new": true}')
    staged_files = sorted(p for p in staging.rglob("*") if p.is_file())

    events: list[tuple] = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")))),
                                                   real_fsync(fd))[1])
    monkeypatch.setattr(os, "rename", lambda a, b: (events.append(("rename", Path(a), Path(b))), real_rename(a, b))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", Path(a), Path(b))),
                                                     real_replace(a, b))[1])
    journal = Journal(str(repo), str(staging))
    journal.replace(staging / "m" / "config.pbtxt", repo / "m" / "config.pbtxt", staging / ".replaced" / "m.config")
    journal.move(staging / "m" / "1", repo / "m" / "2")
    journal.commit(staging / "manifest.json")
    monkeypatch.undo()
    assert journal_module.journal_path(repo) == journal_path(repo) and not journal_path(repo).exists()

    def index(event):
        return events.index(event)

    synced = [e[1] for e in events if e[0] == "fsync"]
    renames = [i for i, e in enumerate(events) if e[0] == "rename"]
    steps = [e for e in events if e[0] == "rename" and e[1] in (staging / "m" / "config.pbtxt", staging / "m" / "1",
                                                                 staging / "manifest.json")]
    assert [e[2] for e in steps] == [repo / "m" / "config.pbtxt", repo / "m" / "2", repo / "manifest.json"]
    first_step = index(steps[0])
    for f in staged_files:  # every staged file, before the first step
        assert ("fsync", f) in events[:first_step], f
    journal_written = [i for i, e in enumerate(events) if e[0] == "rename" and e[2] == journal_path(repo)]
    assert journal_written and journal_written[0] < first_step
    assert ("fsync", journal_path(repo).parent) in events[journal_written[0]:first_step]
    backup = staging / ".replaced" / "m.config"
    assert ("fsync", backup) in events[:first_step] and ("fsync", backup.parent) in events[:first_step]
    for step in steps:  # each rename's folders in the repository, before the next rename
        at = index(step)
        following = next((i for i in renames if i > at), len(events))
        for folder in {f for f in (step[1].parent, step[2].parent) if f == repo or repo in f.parents}:
            assert ("fsync", folder) in events[at:following], (step, folder)
    assert synced[-1] == journal_path(repo).parent  # the journal's removal, last
    assert (repo / "m" / "2" / "model.onnx").read_bytes() == b"v2"
    assert (repo / "m" / "config.pbtxt").read_text() == "new config"


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
        return spec(data={**spec()["data"], "path": str(tmp / f"{name}.npz")},
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
    # the whole message as the CLI prints it ("error: " + what, where, how to fix); {spec} is the case's
    # spec file, {tmp}/{repo}/{artifacts} the folders, {any} text that is not ours (torch's, the OS's)
    invalid = "{spec}: invalid spec - "
    return {
        "yaml-malformed": ("name: x\nmembers: [\n", "{spec}: malformed YAML at line 3, column 1: expected the node "
                           "content, but found '<stream end>'; fix the YAML there (indentation, brackets, quotes)"),
        "yaml-not-a-mapping": ("- 1\n- 2\n", "{spec}: the spec must be a YAML mapping with keys such as 'name', "
                               "'members' and 'fusion' (got list)"),
        "spec-file-missing": (tmp / "absent.yaml", "spec file not found: {tmp}/absent.yaml; check the path (a relative "
                              "path is resolved against the current folder)"),
        "unknown-key": (spec(colour="blue"), invalid + "colour: unknown field; allowed fields here: baselines, data, "
                        "description, {any}, tensorrt"),
        "unknown-nested-key": (member_edit(lambda m: m["model"].update(kwarg={})),
                               invalid + "members[0] (cnn_small_a).model.kwarg: unknown field; did you mean 'kwargs'? "
                               "allowed fields here: architecture, checkpoint, exported_program, kwargs, torchscript"),
        "duplicate-member": (spec(members=[spec()["members"][0]] * 2),
                             invalid + "model name 'cnn_small_a' is used twice (members and baselines); give each its own name"),
        "name-with-separator": (spec(name="a/b"), invalid + "name: 'a/b' is not a valid name: use letters, digits, '_' "
                                "and '-' (tensor names may also use '.'), starting with a letter"),
        "name-dot-dot": (member_edit(lambda m: m.update(name="..")), invalid + "members[0] (..).name: '..' is not a "
                         "valid name: use letters, digits, '_' and '-' (tensor names may also use '.'), starting with a "
                         "letter"),
        "missing-checkpoint": (member_edit(lambda m: m["model"].update(checkpoint=str(tmp / "none.pt"))),
                               invalid + "members[0] (cnn_small_a).model.checkpoint: file not found: {tmp}/none.pt "
                               "(relative paths are resolved against the spec's folder)"),
        "corrupt-checkpoint": (member_edit(lambda m: m["model"].update(checkpoint=str(junk))),
                               "members[0] (cnn_small_a).model.checkpoint: cannot read {tmp}/junk.pt as a PyTorch "
                               "checkpoint ({any}); save it with torch.save(model.state_dict(), path)"),
        "checkpoint-for-another-architecture": (
            member_edit(lambda m: m["model"].update(kwargs={"width": 99})),
            "members[0] (cnn_small_a).model.checkpoint: {artifacts}/cnn_small_a.pt does not fit architecture "
            "'tritonfleet.examples.digits.models:DigitsCNN' with kwargs {'width': 99}: Error(s) in loading state_dict "
            "for DigitsCNN: size mismatch for features.0.weight: {any}. Check that the checkpoint was saved from this "
            "architecture and kwargs."),
        "architecture-not-importable": (member_edit(lambda m: m["model"].update(architecture="no_pkg.mod:Net")),
                                        "members[0] (cnn_small_a).model.architecture: cannot import 'no_pkg.mod' "
                                        "(ModuleNotFoundError: No module named 'no_pkg'); install the package that "
                                        "defines it or use 'path/to/file.py:Class'"),
        "negative-weights": (spec(fusion={"type": "weighted_mean", "weights": [-1.0]}),
                             invalid + "fusion: weights must be finite, >= 0 and not all zero (got [-1.0])"),
        "non-finite-weights": (spec(fusion={"type": "weighted_mean", "weights": [float("nan")]}),
                               invalid + "fusion: weights must be finite, >= 0 and not all zero (got [nan])"),
        "mismatched-output-shapes": (two, invalid + "output 'logits' of 'twin' has shape [12] but 'logits' of "
                                     "'cnn_small_a' has shape [10]; mean fusion needs identical member output shapes"),
        "unsupported-dtype": (member_edit(lambda m: m["inputs"][0].update(dtype="complex64")),
                              invalid + "members[0] (cnn_small_a).inputs[0] (image).dtype: Input should be 'float32', "
                              "'float16', 'float64', 'int64', 'int32', 'int16', 'int8', 'uint8' or 'bool'"),
        "max-batch-zero": (spec(serving={"max_batch_size": 0}),
                           invalid + "serving.max_batch_size: Input should be greater than or equal to 1"),
        "max-batch-huge": (spec(serving={"max_batch_size": 100000}),
                           invalid + "serving.max_batch_size: Input should be less than or equal to 4096"),
        "unknown-fusion": (spec(fusion={"type": "median"}), invalid + "fusion: unknown type 'median'; choose one of: "
                           "'mean', 'geometric_mean', 'weighted_mean', 'vote', 'stacking', 'rescore', 'detection', "
                           "{any}"),
        "unknown-precision": (spec(precision={"variants": ["fp8"]}),
                              invalid + "precision.variants[0]: Input should be 'fp32', 'fp16' or 'int8'"),
        "chained-shape-mismatch": (chained, invalid + "'cnn_small_a.logits' produces float32[10] but 'head.features' "
                                   "expects float32[32]"),
        "extends-cycle": (tmp / "loop.yaml", "{tmp}/loop.yaml: extends: 'loop.yaml' makes a cycle; a spec cannot extend "
                          "itself, directly or through the specs it extends: remove one of the extends"),
        "calibration-wrong-shape": (data("calibration-wrong-shape", x_calib=np.zeros((8, 1, 7, 7), np.float32)),
                                    "data.calibration.inputs 'x_calib' has per-sample shape [1, 7, 7]; input 'image' "
                                    "takes [1, 8, 8] (arrays are [samples, ...])"),
        "calibration-wrong-dtype": (data("calibration-wrong-dtype", x_calib=np.zeros((8, 1, 8, 8), np.int64)),
                                    "data.calibration.inputs 'x_calib' has dtype int64; input 'image' takes float32"),
        "calibration-empty": (data("calibration-empty", x_calib=np.zeros((0, 1, 8, 8), np.float32)),
                              "data.calibration.inputs: arrays must hold the same, non-zero number of samples (got [0])"),
        "data-with-nan": (data("data-with-nan", x_val=np.full((8, 1, 8, 8), np.nan, np.float32)),
                          "data.validation.inputs 'x_val' holds NaN or inf values (first in sample 0); clean the data or drop "
                          "those samples"),
        "labels-count-mismatch": (data("labels-count-mismatch", y_test=digits["y_test"][:5]),
                                  "data.test: 5 labels for 360 samples in {tmp}/labels-count-mismatch.npz"),
        "data-array-missing": (spec(data={"path": str(artifacts / "digits.npz"), "test": {"inputs": "x_tst"}}),
                               "data.test.inputs: array 'x_tst' is not in {artifacts}/digits.npz (arrays: {any})"),
        "output-not-writable": (spec(output_dir=str(tmp / "afile" / "repo")),
                                "cannot write beside output_dir {tmp}/afile/repo ({any}); choose a writable output_dir "
                                "in the spec or with --output"),
        "output-is-a-file": (spec(output_dir=str(tmp / "afile")), "output_dir {tmp}/afile exists and is not a folder; "
                             "choose another output_dir in the spec or with --output"),
        "shared-model-would-change": (second, "refusing to overwrite in {repo}: - model 'cnn_small_a' is shared with "
                                      "pipeline rel and would change (different checkpoint, precision or serving "
                                      "settings) Rename the models in the spec or choose another output_dir."),
    }


def expected_message(template: str, **places: Path | str) -> re.Pattern:
    """``template`` with each ``{place}`` replaced by that path (or text) and ``{any}`` by any text."""
    parts = re.split(r"(\{(?:any|spec|tmp|repo|artifacts|url)\})", template)
    return re.compile("".join(".+" if p == "{any}" else re.escape(str(places[p[1:-1]])) if p[:1] == "{" and p[-1:] == "}"
                              and p[1:-1] in places else re.escape(p) for p in parts))


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
    pattern = expected_message("error: " + expected, spec=path, tmp=tmp_path, repo=served_repo.resolve(),
                               artifacts=artifacts)
    assert pattern.fullmatch(" ".join(err.split())), (pattern.pattern, err)
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
    pattern = expected_message("error: " + DISK_FULL, repo=served_repo.resolve())
    assert pattern.fullmatch(" ".join(proc.stderr.split())), proc.stderr
    assert "Traceback" not in proc.stderr
    assert snapshot(served_repo) == before


DOC_PLACES = {"spec": "SPEC", "tmp": "DIR", "repo": "REPO", "artifacts": "DIR", "url": "URL", "any": "..."}
DISK_FULL = ("could not write while building into {repo}: File too large ({any}); nothing was changed. Free space or "
             "fix permissions and build again.")


def documented(template: str) -> str:
    """A message template as docs/RELIABILITY.md's catalogue shows it (SPEC, DIR, REPO, URL, ...)."""
    for place, shown in DOC_PLACES.items():
        template = template.replace("{" + place + "}", shown)
    return template


def test_the_catalogue_is_documented(tmp_path):
    """Each row of the doc's table holds the whole message its test asserts."""
    doc = (ROOT / "docs" / "RELIABILITY.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([\w-]+)` \| [^|]+ \| `(.+)` \|$", doc, re.M)}
    fake = {"y_test": np.zeros(360, np.int64)}
    (tmp_path / "artifacts").mkdir()
    messages = {case: m for case, (_, m) in _catalogue(tmp_path / "artifacts", tmp_path / "repo", tmp_path, fake,
                                                        tmp_path / "p.pt").items()}
    messages.update({"disk-full": DISK_FULL, **REQUEST_MESSAGES})
    assert sorted(rows) == sorted([*CATALOGUE_IDS, "disk-full", *REQUEST_CASES])
    for case, template in messages.items():
        assert rows[case] == documented(template), case


# --------------------------------------------------------------------------- bad requests
REQUEST_CASES = ["wrong-input-name", "wrong-shape", "wrong-dtype", "empty-batch", "nan-input", "oversized-request",
                 "unknown-model", "server-not-running"]


# the whole message; {any} is Triton's own wording around the part that names the problem
REQUEST_MESSAGES = {
    "wrong-input-name": "model 'digits' takes inputs ['image']; got unknown ['img'], missing ['image']",
    "wrong-shape": "model 'digits' at {url}: {any}unexpected shape for input 'image' for model 'digits'. Expected "
                   "[-1,1,8,8], got [2,1,4,8]{any}",
    "wrong-dtype": "model 'digits' at {url}: {any}inference input 'image' data-type is 'FP64', but model 'digits' "
                   "expects 'FP32'",
    "empty-batch": "model 'digits': empty batch ({'image': 0} samples); send at least one sample",
    "nan-input": "model 'digits_vote' at {url}: in ensemble 'digits_vote', fusion: member 0 scores hold NaN or inf "
                 "values",
    "oversized-request": "model 'digits' at {url}: {any}inference request batch-size must be <= 64 for 'digits'",
    "unknown-model": "model 'nope' at {url}: Request for unknown model: 'nope' is not found",
    "server-not-running": "cannot reach tritonserver at {url} ({any}); is it running? Start one with 'tritonfleet "
                          "serve REPOSITORY'",
}


@pytest.mark.parametrize("case", REQUEST_CASES)
def test_bad_request_is_a_clear_error_and_the_server_stays_healthy(case, triton, digits_data):
    x = digits_data["x_test"]
    nan = x[:2].copy()
    nan[0, 0, 0, 0] = np.nan
    inputs = {"wrong-input-name": ("digits", {"img": x[:2]}), "wrong-shape": ("digits", x[:2, :, :4]),
              "wrong-dtype": ("digits", x[:2].astype(np.float64)), "empty-batch": ("digits", x[:0]),
              "nan-input": ("digits_vote", nan), "oversized-request": ("digits", np.concatenate([x, x])[:65]),
              "unknown-model": ("nope", x[:2]), "server-not-running": ("digits", x[:2])}
    model, inputs = inputs[case]
    template = REQUEST_MESSAGES[case]
    url = "127.0.0.1:1" if case == "server-not-running" else triton.url("grpc")
    with TritonClient(url) as client:
        with pytest.raises(ServerError) as info:
            client.infer(model, inputs)
        assert expected_message(template, url=url).fullmatch(str(info.value)), str(info.value)
    with triton.client() as client:
        assert client.infer("digits", x[:2])["probabilities"].shape == (2, 10)


# --------------------------------------------------------------------------- soak and faults
def test_short_soak_has_no_failures(triton, digits_data):
    result = run_soak(triton.url("grpc"), "digits", [digits_data["x_test"]], total=3000, concurrency=16,
                      server_pid=triton.pid, warmup=300)
    assert result.completed == 3000 and result.failures == 0, result.error_messages
    assert len(result.segments) == 10 and all(s["p50_ms"] <= s["p99_ms"] for s in result.segments)
    assert len(result.rss_mb) >= 2 and result.rss_mb[0] > 100  # server + stubs measured


@pytest.fixture(scope="module")
def digits_repo(artifacts, tmp_path_factory) -> Path:
    """The three-member ``digits`` ensemble (fp32 only, no baselines), built once."""
    folder = tmp_path_factory.mktemp("digits3")
    raw = digits_spec_dict(artifacts, folder / "model_repository")
    raw.update(baselines=[], precision={"variants": ["fp32"], "serve": "fp32"})
    build(load_spec(write(folder / "digits.yaml", raw)), progress=False)
    return folder / "model_repository"


def test_a_killed_stub_under_concurrency_16_is_invisible_to_retrying_clients(digits_repo, digits_data):
    """16 clients with retries keep sending to the three-member ensemble while a member's stub is
    SIGKILLed: the supervisor restarts it once, every request is answered with the right result,
    and the clients did retry (the fault was seen, not missed)."""
    import threading
    from concurrent import futures

    x = digits_data["x_test"]
    with TritonServer(digits_repo, model_control_mode="explicit", supervise=True) as server:
        with server.client("grpc") as plain:
            expected = plain.infer_batched("digits", x)["probabilities"]
        (stub,) = [pid for pid, model in server.supervisor.stub_processes() if model == "cnn_small_b"]
        clients = [server.client("grpc", retries=8, backoff=0.1) for _ in range(16)]
        killed, answered, errors = threading.Event(), [], []

        def send(k: int) -> None:
            client, i, after_restart = clients[k], 0, 0
            while after_restart < 20 and i < 2000:  # until 20 requests each after the restart
                if k == 0 and i == 10:
                    os.kill(stub, signal.SIGKILL)
                    killed.set()
                j = (k * 131 + i) % len(x)
                try:
                    answered.append((j, client.infer("digits", x[j:j + 1])["probabilities"][0]))
                except Exception as exc:  # a client-visible error
                    errors.append(str(exc))
                i += 1
                after_restart += killed.is_set() and server.supervisor.restarts["cnn_small_b"] >= 1

        with futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(send, range(16)))
        retried = sum(c.retried for c in clients)
        for c in clients:
            c.close()
        restarts = dict(server.supervisor.restarts)
    assert errors == []
    assert restarts == {"cnn_small_b": 1}
    assert retried > 0, "no client retried: the kill went unnoticed"
    assert len(answered) >= 16 * 20
    worst = max(float(np.abs(out - expected[j]).max()) for j, out in answered)
    assert worst < 1e-5, worst


def test_a_server_that_stopped_answering_is_restarted_by_its_canary(digits_repo, digits_data):
    """A live server that answers nothing (SIGSTOP: the process and its stubs exist, requests hang)
    is found by the supervisor's canary request and restarted once, on the same ports."""
    x = digits_data["x_test"][:2]
    with TritonServer(digits_repo, model_control_mode="explicit", supervise=True, canary=("digits", x)) as server:
        supervisor = server.supervisor
        supervisor.canary_interval, supervisor.canary_timeout = 1.0, 2.0
        with server.client() as client:
            expected = client.infer("digits", x)["probabilities"]
        stopped, url = server.pid, server.url("grpc")
        os.kill(stopped, signal.SIGSTOP)
        deadline = time.monotonic() + 180
        while not supervisor.server_restarts and time.monotonic() < deadline:
            time.sleep(0.5)
        assert len(supervisor.server_restarts) == 1, supervisor.errors
        assert supervisor.server_restarts[0] in ("no answer within 2 s",) or "Deadline" in supervisor.server_restarts[0]
        assert server.pid != stopped and server.url("grpc") == url
        with server.client() as client:
            np.testing.assert_allclose(client.infer("digits", x)["probabilities"], expected, atol=1e-6)
        time.sleep(3)  # healthy again: no second restart
        assert len(supervisor.server_restarts) == 1 and supervisor.errors == []


def test_soak_script_smoke_run_records_the_kill_and_keeps_empty_tenths(digits_repo, tmp_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "soak.py"), "--smoke", "--repository", str(digits_repo),
                           "--kill-stub-at", "0.3", "--requests", "1500", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["completed"] == 1500 and len(data["segments"]) == 10  # every tenth, empty ones too
    assert data["fault_after"] >= 450 and 0 < data["fault_s"] < data["seconds"]  # recorded, not estimated
    assert sum(s["requests"] for s in data["segments"]) == 1500 - min(1000, 1500 // 10)
    text = " ".join(proc.stdout.split())
    assert f"`cnn_small_b`'s stub SIGKILLed at {data['fault_s']:.2f} s, after {data['fault_after']:,} of 1,500" in text
    outage = data["outage_summary"]
    if outage is not None:  # the non-retrying client saw the restart: its span, from the timestamps
        assert outage["first_failure_s"] >= data["fault_s"] - 0.05
        assert f"an outage of {outage['seconds']:.2f} s" in text
    rows = [line for line in proc.stdout.splitlines() if re.match(r"\| \d+ \| ", line)]
    assert [int(r.split("|")[1]) for r in rows] == list(range(1, 11))


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
