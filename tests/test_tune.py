"""tritonfleet tune end to end on the real bundled tritonserver: a member, then an ensemble.

A small repository (two digits CNNs, the mean fusion step, the ensemble) is built once. Each
tune measures real candidates with tiny windows (speed is not what is tested here: which
candidate wins on a busy 2-core machine is not predictable). When the search keeps the
default, the test commits the first candidate that loaded through the same commit function,
so the commit, the new versions on a fresh server, verify and rollback are always exercised.
The pure search is tested in test_tune_search.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tritonfleet.builder.build import build
from tritonfleet.builder.cli import main
from tritonfleet.builder.lifecycle.tune import TuneOptions, tune
from tritonfleet.builder.lifecycle.tune.commit import commit_tuned, config_text
from tritonfleet.builder.lifecycle.tune.measure import config_json
from tritonfleet.builder.lifecycle.tune.space import Settings, apply_settings, read_settings
from tritonfleet.builder.repository.verify import verify
from tritonfleet.builder.spec import load_spec
from tritonfleet.builder.stages.load_torch import load_torch_model
from tritonfleet.clients.infer import TritonClient
from tritonfleet.clients.model_config import parse_pbtxt
from tritonfleet.clients.server import TritonServer

from conftest import digits_spec_dict, write_spec

MEMBERS = ("cnn_small_a", "cnn_small_b")
FAST = ["--budget", "3", "--window", "0.3", "--warmup", "0.2", "--max-windows", "3", "--stability-percentage", "50",
        "--concurrency", "4", "--no-progress"]


@pytest.fixture(scope="module")
def small(artifacts, tmp_path_factory):
    """(repository, spec path, spec, raw spec) of two members averaged into 'digits'."""
    folder = tmp_path_factory.mktemp("tune")
    raw = digits_spec_dict(artifacts, folder / "model_repository")
    raw.update(members=raw["members"][:2], baselines=[], precision={"variants": ["fp32"], "serve": "fp32"})
    raw["parity"]["samples"] = 32
    spec_path = write_spec(folder / "digits2.yaml", raw)
    spec = load_spec(spec_path)
    build(spec, spec_path=spec_path, progress=False)
    return folder / "model_repository", spec_path, spec, raw


@pytest.fixture(scope="module")
def reference(small, digits_data):
    """x and the PyTorch logits of each member on it."""
    spec = small[2]
    x = digits_data["x_test"][:16]
    with torch.no_grad():
        logits = {m.name: load_torch_model(m.model)(torch.from_numpy(x)).numpy() for m in spec.members}
    return x, logits


def disk(repo: Path, model: str):
    return parse_pbtxt((repo / model / "config.pbtxt").read_text())


def manifest(repo: Path) -> dict:
    return json.loads((repo / "manifest.json").read_text())


def committed_or_commit(repo: Path, target: str, data: dict) -> tuple[dict[str, Settings], list[dict]]:
    """The settings committed by tune, or, when it kept the default, commit the first candidate
    that loaded with the same function tune uses. Returns (settings per model, committed)."""
    if data["committed"]:
        chosen = data["candidates"][data["winner"]]
        assert data["improved"] and chosen["verdict"] == "winner"
        return {m: Settings.from_dict(s) for m, s in chosen["settings"].items()}, data["committed"]
    assert data["decision"].startswith(("the default is already best", "the default's measurement is not usable",
                                        "no candidate met")), data["decision"]
    chosen = next(c for c in data["candidates"][1:] if not (c["measurement"]["problem"] or "").startswith("failed"))
    settings = {m: Settings.from_dict(s) for m, s in chosen["settings"].items()}
    default = {m: Settings.from_dict(s) for m, s in data["candidates"][0]["settings"].items()}
    configs = {m: apply_settings(disk(repo, m), s) for m, s in settings.items() if s != default[m]}
    done = commit_tuned(repo, target, configs, data["models"], {"picked_by": "test"})
    return settings, [{"model": c.model, "previous": c.previous, "version": c.version} for c in done]


def server_config(client: TritonClient, model: str) -> dict:
    return client._client.get_model_config(model, as_json=True)["config"]


def test_tune_a_member_commits_a_version_that_loads_and_rolls_back(small, reference, tmp_path, capsys):
    repo, spec_path, spec, _ = small
    x, logits = reference
    before = (repo / "cnn_small_a" / "config.pbtxt").read_text()
    out = tmp_path / "report"

    assert main(["tune", str(repo), "cnn_small_a", *FAST, "--output", str(out)]) == 0   # starts its own server
    printed = capsys.readouterr().out
    data = json.loads((out / "tune.json").read_text())
    assert {p.name for p in out.iterdir()} == {"tune.md", "tune.json", "tune.png"}
    assert data["models"] == ["cnn_small_a"] and len(data["candidates"]) == 3 and data["decision"] in printed
    assert data["candidates"][0]["label"] == "default" and all(c["label"] != "default" for c in data["candidates"][1:])
    assert "| 0 | default |" in (out / "tune.md").read_text()

    settings, committed = committed_or_commit(repo, "cnn_small_a", data)
    assert committed == [{"model": "cnn_small_a", "previous": 1, "version": 2}]
    tuned = disk(repo, "cnn_small_a")
    assert read_settings(tuned) == settings["cnn_small_a"] != read_settings(parse_pbtxt(before))
    assert list(tuned.version_policy.specific.versions) == [2]
    for name in ("model.onnx", "model.py"):
        assert (repo / "cnn_small_a" / "2" / name).read_bytes() == (repo / "cnn_small_a" / "1" / name).read_bytes()
    record = manifest(repo)["models"]["cnn_small_a"]
    assert record["versions"]["1"]["config"] == before                 # the default, kept for comparison
    assert record["versions"]["2"]["config"] == config_text(tuned)
    assert record["tuned"]["version"] == 2
    assert verify(repo).ok, verify(repo).problems

    # a build of the same spec keeps the tuned config, and says so
    rebuilt = build(spec, spec_path=spec_path, progress=False)
    assert rebuilt.actions["cnn_small_a"] == ("unchanged", 2)
    assert any(n.startswith("cnn_small_a: kept the config 'tritonfleet tune' committed (version 2)")
               for n in rebuilt.notes), rebuilt.notes
    assert disk(repo, "cnn_small_a") == tuned and verify(repo).ok

    with TritonServer(repo, model_control_mode="explicit") as server, TritonClient(server.url("grpc")) as client:
        assert client._client.is_model_ready("cnn_small_a", "2") and not client._client.is_model_ready("cnn_small_a", "1")
        assert int(server_config(client, "cnn_small_a")["instance_group"][0]["count"]) == settings["cnn_small_a"].instances
        np.testing.assert_allclose(client.infer("cnn_small_a", x)["logits"], logits["cnn_small_a"], atol=1e-4)
        assert client.infer("digits", x)["probabilities"].shape == (16, 10)

        assert main(["rollback", str(repo), "cnn_small_a", "--url", server.url("grpc")]) == 0
        assert "cnn_small_a: serving version 1 (was [2]" in capsys.readouterr().out
        restored = disk(repo, "cnn_small_a")
        assert config_text(restored) == before and list(restored.version_policy.specific.versions) == [1]
        client.wait_ready(["cnn_small_a"])
        assert client._client.is_model_ready("cnn_small_a", "1")
        assert server_config(client, "cnn_small_a")["instance_group"][0]["count"] == \
            read_settings(parse_pbtxt(before)).instances
        np.testing.assert_allclose(client.infer("cnn_small_a", x)["logits"], logits["cnn_small_a"], atol=1e-4)
    assert "tuned" not in manifest(repo)["models"]["cnn_small_a"] and verify(repo).ok


def test_tune_an_ensemble_moves_its_steps_jointly_and_rolls_back_together(small, reference, tmp_path, capsys):
    repo, _, _, raw = small
    x, logits = reference
    steps = (*MEMBERS, "digits_fusion")
    before = {m: (repo / m / "config.pbtxt").read_text() for m in steps}
    served_before = {m: sorted(int(p.name) for p in (repo / m).iterdir() if p.name.isdigit()) for m in steps}
    expected = torch.softmax(torch.from_numpy(np.stack([logits[m] for m in MEMBERS])), -1).mean(0).numpy()

    with TritonServer(repo, model_control_mode="explicit") as server, TritonClient(server.url("grpc")) as client:
        url = server.url("grpc")
        options = TuneOptions(budget=2, window_s=0.3, warmup_s=0.2, max_windows=3, stability_pct=50, concurrency=4,
                              url=url, progress=False)
        result = tune(repo, "digits", options, output=tmp_path / "report")
        data = json.loads((tmp_path / "report" / "tune.json").read_text())
        assert result.ensemble and result.models == list(steps)
        first = result.search.trials[1]                                   # one joint step: every model moves
        assert all(first.settings[m] != result.search.default.settings[m] for m in steps), first.label
        assert len(result.space.dimensions[0].models) == 3

        settings, committed = committed_or_commit(repo, "digits", data)
        if not result.committed:  # committed by the test: load what tune would have loaded
            for c in committed:
                client.load_model(c["model"], config=config_json(disk(repo, c["model"])))
        changed = [c["model"] for c in committed if c["model"] != "digits"]
        assert committed[-1]["model"] == "digits" and set(changed) == {m for m in steps if settings[m] !=
                                                                      read_settings(parse_pbtxt(before[m]))}
        assert len(changed) == 3                                          # the joint step moved all of them
        for c in committed:
            assert client._client.is_model_ready(c["model"], str(c["version"])), c
            assert list(disk(repo, c["model"]).version_policy.specific.versions) == [c["version"]]
        for m in changed:
            assert read_settings(disk(repo, m)) == settings[m]
        ensemble = manifest(repo)["models"]["digits"]
        version = str(committed[-1]["version"])
        assert set(ensemble["versions"][version]["tuned"]["models"]) == set(changed)
        np.testing.assert_allclose(client.infer("digits", x)["probabilities"], expected, atol=1e-4)
        assert verify(repo).ok, verify(repo).problems

        assert main(["rollback", str(repo), "digits", "--url", url]) == 0
        printed = capsys.readouterr().out
        for m in changed:
            assert f"{m}: serving version " in printed
            assert config_text(disk(repo, m)) == config_text(parse_pbtxt(before[m]))
            assert read_settings(disk(repo, m)) == read_settings(parse_pbtxt(before[m]))
        client.wait_ready(["digits"])
        for c in committed:
            previous = c["previous"]
            assert client._client.is_model_ready(c["model"], str(previous)), c
            assert previous in served_before.get(c["model"], [previous])
        np.testing.assert_allclose(client.infer("digits", x)["probabilities"], expected, atol=1e-4)
    assert verify(repo).ok, verify(repo).problems

    # a build with other serving settings replaces the tuned configs and says so
    changed_spec = write_spec(tmp_path / "changed.yaml", {**raw, "serving": {**raw["serving"], "instances": 2}})
    rebuilt = build(load_spec(changed_spec), spec_path=changed_spec, progress=False)
    assert any(n.startswith("cnn_small_b: the spec's serving settings replace the config 'tritonfleet tune'")
               for n in rebuilt.notes), rebuilt.notes
    record = manifest(repo)["models"]["cnn_small_b"]
    assert "tuned" not in record and not any("config" in v or "tuned" in v for v in record["versions"].values())
    assert read_settings(disk(repo, "cnn_small_b")).instances == 2 and verify(repo).ok


def test_bad_input_is_one_clear_error(small, tmp_path, capsys):
    repo = small[0]
    cases = [
        (["tune", str(repo), "nope"], "error: model 'nope' is not in"),
        (["tune", str(repo), "cnn_small_a", "--max-windows", "2"], "error: --max-windows must be >= 3"),
        (["tune", str(repo), "digits", "--batch-size", "100"], "error: --batch-size 100 is more than 'digits' accepts"),
        (["tune", str(tmp_path), "digits"], "has no manifest.json: not a tritonfleet repository"),
        (["tune", str(repo), "digits", "--budget", "0"], "argument --budget: must be >= 1"),
    ]
    for argv, message in cases:
        assert main([*argv, "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert message in " ".join(err.split()) and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
