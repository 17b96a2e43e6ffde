"""The built repository: layout, configs through Triton's schema, manifest, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tritonfleet.builder import runtime
from tritonfleet.builder.build import build
from tritonfleet.builder.errors import ConversionError, RepositoryError
from tritonfleet.builder.repository.manifest import hash_tree, sha256_file
from tritonfleet.builder.spec import load_spec
from tritonfleet.clients.model_config import parse_pbtxt, tensors_of


def _configs(repo: Path) -> dict:
    return {p.parent.name: parse_pbtxt(p.read_text()) for p in repo.glob("*/config.pbtxt")}


@pytest.mark.parametrize("which", ["local_build", "ngc_build"])
def test_every_config_parses_with_expected_fields(which, request):
    spec, result = request.getfixturevalue(which)
    configs = _configs(result.repository)
    members = [m.name for m in spec.members]
    variants = [f"{m}{suffix}" for m in [*members, "cnn_large"] for suffix in ("", "_fp16", "_int8")]
    compiled = {f"digits_compiled{suffix}" for suffix in ("", "_fp16", "_int8")}  # serving.compile (test_compiled.py)
    assert {p.config.name for p in result.models} == {*variants, "digits_fusion", "digits", *compiled}
    assert set(configs) >= {*variants, "digits_fusion", "digits"}

    for name in variants:
        cfg = configs[name]
        if result.target == "ngc":
            assert cfg.platform == "onnxruntime_onnx" and cfg.backend == ""
            assert cfg.default_model_filename == "model.onnx"
            assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
            assert not cfg.HasField("optimization")  # no TensorRT accelerator unless asked
        else:
            assert cfg.backend == "python" and cfg.platform == ""
            assert cfg.parameters["onnx_file"].string_value == "model.onnx"
            suffix = name.rpartition("_")[2]
            expected = suffix if suffix in ("fp16", "int8") else "fp32"
            assert cfg.parameters["precision"].string_value == expected
            assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_CPU
        assert cfg.max_batch_size == 64
        assert tensors_of(cfg, "input") == {"image": ("float32", (1, 8, 8))}
        # local runners also declare their handed-on error text and the marker (docs/RELIABILITY.md)
        runner = {"tritonfleet_error": ("string", (1,)), "tritonfleet_raise": ("bool", (1,))}
        assert tensors_of(cfg, "output") == {"logits": ("float32", (10,)), **(runner if result.target == "local" else {})}
        assert cfg.dynamic_batching.max_queue_delay_microseconds == 200

    local = result.target == "local"
    fusion = configs["digits_fusion"]
    assert fusion.backend == "python"
    handed_on = {f"member_error_{i}": ("string", (1,)) for i in range(3)} if local else {}
    inputs = {k: v for k, v in tensors_of(fusion, "input").items() if not k.startswith("monitor_")}  # monitoring's
    assert inputs == {**{f"scores_{i}": ("float32", (10,)) for i in range(3)}, **handed_on}
    assert {i.name: i.optional for i in fusion.input if i.name in inputs} == {**{f"scores_{i}": False for i in range(3)},
                                                                             **{k: True for k in handed_on}}
    assert tensors_of(fusion, "output") == {"probabilities": ("float32", (10,)), "class_index": ("int64", (1,))}
    params = json.loads(fusion.parameters["fusion"].string_value)
    assert params == {"type": "mean", "activation": "softmax", "inputs": ["scores_0", "scores_1", "scores_2"],
                      "outputs": {"probabilities": "probabilities", "class_index": "class_index"}}

    ens = configs["digits"]
    assert ens.platform == "ensemble" and ens.max_batch_size == 64
    assert tensors_of(ens, "input") == {"image": ("float32", (1, 8, 8))}
    assert tensors_of(ens, "output") == tensors_of(fusion, "output")
    steps = ens.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [*members, "digits_fusion"]
    for s, m in zip(steps, members):
        assert dict(s.input_map) == {"image": "image"}
        assert dict(s.output_map) == {"logits": f"{m}__logits", **({"tritonfleet_error": f"{m}__tritonfleet_error"}
                                                                   if local else {})}
    assert {k: v for k, v in steps[-1].input_map.items() if not k.startswith("monitor_")} == {
        **{f"scores_{i}": f"{m}__logits" for i, m in enumerate(members)},
        **({f"member_error_{i}": f"{m}__tritonfleet_error" for i, m in enumerate(members)} if local else {})}


def test_targets_share_the_same_ensemble(local_build, ngc_build):
    """The same ensemble and fusion step, except that local runners hand their errors to the fusion step."""
    local = _configs(local_build[1].repository)
    ngc = _configs(ngc_build[1].repository)
    for step in local["digits"].ensemble_scheduling.step:
        step.output_map.pop("tritonfleet_error", None)
        for key in [k for k in step.input_map if k.startswith("member_error_")]:
            step.input_map.pop(key)
    assert local["digits"] == ngc["digits"]
    fusion = local["digits_fusion"]
    kept = [i for i in fusion.input if not i.name.startswith("member_error_")]
    del fusion.input[:]
    fusion.input.extend(kept)
    fusion.parameters.pop("member_errors")
    assert fusion == ngc["digits_fusion"]


def test_version_folders_hold_self_contained_artifacts(local_build, ngc_build):
    for _, result in (local_build, ngc_build):
        repo = result.repository
        assert not list(repo.rglob("*.onnx.data")) and not list(repo.rglob("*.data"))
        for name in ("cnn_small_a", "cnn_large"):
            # __pycache__ is the Python-backend stub's, written when a server imports model.py
            files = sorted(p.name for p in (repo / name / "1").iterdir() if p.name != "__pycache__")
            local = ["model.onnx", "model.py", runtime.SERVING.name]  # the runner and its tensor helpers
            assert files == (local if result.target == "local" else ["model.onnx"])
        assert (repo / "digits" / "1").is_dir() and not any((repo / "digits" / "1").iterdir())
    repo = local_build[1].repository
    assert (repo / "digits_fusion" / "1" / "ops.py").read_bytes() == runtime.OPS.read_bytes()
    assert (repo / "digits_fusion" / "1" / runtime.SERVING.name).read_bytes() == runtime.SERVING.read_bytes()
    assert (repo / "cnn_small_a" / "1" / "model.py").read_bytes() == runtime.ONNX_RUNNER.read_bytes()
    assert (repo / "cnn_small_a" / "1" / runtime.SERVING.name).read_bytes() == runtime.SERVING.read_bytes()


def test_manifest_records_hashes_parity_and_tools(local_build):
    spec, result = local_build
    repo = result.repository
    manifest = json.loads((repo / "manifest.json").read_text())
    pipe = manifest["pipelines"]["digits"]
    assert set(pipe["models"]) == {p.config.name for p in result.models}
    assert pipe["target"] == "local" and pipe["spec"]["name"] == "digits"
    assert {"torch", "onnx", "onnxruntime", "tritonclient"} <= set(pipe["tools"])
    for name, record in manifest["models"].items():
        assert record["files"] == hash_tree(repo / name), name
        assert record["owners"], name
    for m in spec.all_models:
        for precision in ("fp32", "fp16", "int8"):
            name = m.name if precision == "fp32" else f"{m.name}_{precision}"
            record = manifest["models"][name]
            assert record["precision"] == precision
            assert record["artifact_sha256"] == sha256_file(repo / name / "1" / "model.onnx")
            assert record["size_bytes"] == (repo / name / "1" / "model.onnx").stat().st_size
            (parity,) = record["parity"]
            tol = spec.parity.for_precision(precision)
            assert parity["passed"] and parity["precision"] == precision
            assert parity["samples"] == spec.parity.samples
            assert parity["inputs"].startswith("data.validation")
            assert parity["top1_agreement"] >= tol.min_top1_agreement
            if tol.atol is not None:
                assert 0 <= parity["max_abs_error"] <= tol.atol + tol.rtol * 30  # logits stay below 30
            variant = record["variant"]
            assert variant["precision"] == precision and 0.9 < variant["test_accuracy"] <= 1.0
        int8 = manifest["models"][f"{m.name}_int8"]["calibration"]
        assert int8["samples_used"] == 256 and int8["method"] == "minmax"
    assert manifest["pipelines"]["digits"]["served"]["cnn_small_a"]["precision"] == "fp32"


def _snapshot(repo: Path) -> dict[str, bytes]:
    return {p.relative_to(repo).as_posix(): p.read_bytes() for p in sorted(repo.rglob("*")) if p.is_file()}


def test_failed_build_leaves_the_repository_untouched(spec_factory, artifacts, tmp_path):
    good = load_spec(spec_factory())
    build(good, progress=False)
    repo = good.output_dir
    before = _snapshot(repo)

    raw = yaml.safe_load(spec_factory().read_text())
    raw["members"][2]["model"]["checkpoint"] = str(artifacts / "cnn_large.pt")  # wrong architecture
    bad_path = tmp_path / "bad.yaml"
    bad_path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConversionError, match=r"members\[2\] \(cnn_small_c\).model.checkpoint"):
        build(load_spec(bad_path), progress=False)
    assert _snapshot(repo) == before
    assert not [p for p in repo.parent.iterdir() if ".staging-" in p.name]


def test_foreign_folders_are_never_overwritten(spec_factory):
    spec = load_spec(spec_factory())
    (spec.output_dir / "cnn_small_b").mkdir(parents=True)
    (spec.output_dir / "cnn_small_b" / "mine.txt").write_text("user data")
    with pytest.raises(RepositoryError, match="folder '.*cnn_small_b' exists and was not written by tritonfleet"):
        build(spec, progress=False)
    assert (spec.output_dir / "cnn_small_b" / "mine.txt").read_text() == "user data"
    assert not (spec.output_dir / "cnn_small_a").exists()


def test_rebuilds_reuse_unchanged_variants_of_the_right_member(spec_factory, tmp_path):
    spec = load_spec(spec_factory())
    first = build(spec, progress=False)
    repo = first.repository
    before = json.loads((repo / "manifest.json").read_text())["models"]

    again = build(spec, progress=False)  # nothing changed: every member reused, nothing rewritten
    assert [s.name for s in again.steps][:4] == [f"reuse {m.name} (unchanged)" for m in spec.all_models]
    assert json.loads((repo / "manifest.json").read_text())["models"].keys() == before.keys()

    # a new calibration method changes only the int8 variants; fp32/fp16 are reused per member
    raw = yaml.safe_load(spec_factory().read_text())
    raw["precision"]["calibration"]["method"] = "percentile"
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(raw))
    result = build(load_spec(changed), progress=False)
    names = [s.name for s in result.steps]
    assert "fp16 cnn_small_b (unchanged)" in names and "int8 cnn_small_b" in names
    after = json.loads((repo / "manifest.json").read_text())["models"]
    for m in spec.all_models:
        for suffix in ("", "_fp16"):
            name = m.name + suffix
            assert after[name]["artifact_sha256"] == before[name]["artifact_sha256"], name
            assert sha256_file(repo / name / "1" / "model.onnx") == before[name]["artifact_sha256"], name
        assert after[f"{m.name}_int8"]["calibration"]["method"] == "percentile"
    assert len({after[f"{m.name}_fp16"]["artifact_sha256"] for m in spec.all_models}) == len(spec.all_models)
