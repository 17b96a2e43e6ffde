"""The spec validator: valid specs load, every invalid one gets one clear SpecError."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tritonfleet.builder.errors import SpecError
from tritonfleet.builder.spec import load_spec, parse_spec


def _member(name: str, classes: int = 10, checkpoint: str = "/etc/hostname") -> dict:
    return {
        "name": name,
        "model": {"architecture": "tritonfleet.examples.digits.models:DigitsCNN", "checkpoint": checkpoint},
        "inputs": [{"name": "image", "dtype": "float32", "shape": [1, 8, 8]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [classes]}],
    }


def _spec(**changes) -> dict:
    raw = {"name": "p", "members": [_member("a"), _member("b")], "fusion": {"type": "mean"}}
    raw.update(changes)
    return raw


def _error(raw, base: Path = Path("/")) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(raw, base_dir=base, source="spec.yaml")
    return str(info.value)


def test_committed_digits_spec_is_valid(spec_factory):
    spec = load_spec(spec_factory())
    assert [m.name for m in spec.members] == ["cnn_small_a", "cnn_small_b", "cnn_small_c"]
    assert [m.name for m in spec.baselines] == ["cnn_large"]
    assert spec.num_classes == 10
    assert spec.fusion.type == "mean"


def test_relative_paths_resolve_against_the_spec_folder(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "a.pt").write_bytes(b"x")
    raw = _spec(members=[_member("a", checkpoint="ckpt/a.pt")], output_dir="out")
    spec = parse_spec(raw, base_dir=tmp_path)
    assert spec.members[0].model.checkpoint == tmp_path / "ckpt" / "a.pt"
    assert spec.output_dir == tmp_path / "out"


def test_unknown_field_is_named_with_a_suggestion():
    msg = _error(_spec(memebers=[]))
    assert "memebers: unknown field; did you mean 'members'?" in msg
    nested = _spec()
    nested["members"][1]["model"]["kwarg"] = {}
    msg = _error(nested)
    assert "members[1] (b).model.kwarg: unknown field; did you mean 'kwargs'?" in msg


def test_missing_checkpoint_names_field_and_file():
    msg = _error(_spec(members=[_member("a", checkpoint="missing/a.pt")]), base=Path("/srv/specs"))
    assert "members[0] (a).model.checkpoint" in msg
    assert "file not found: /srv/specs/missing/a.pt" in msg


def test_mismatched_member_output_shapes():
    msg = _error(_spec(members=[_member("a", 10), _member("b", 12)]))
    assert "output 'logits' of 'b' has shape [12] but 'logits' of 'a' has shape [10]" in msg
    assert "identical member output shapes" in msg


def test_unknown_fusion_type():
    msg = _error(_spec(fusion={"type": "median"}))
    assert "fusion: unknown type 'median'; choose one of: 'mean'" in msg


def test_every_problem_is_reported_at_once():
    raw = _spec(members=[_member("a", checkpoint="nope.pt"), _member("b/..")], fusion={"type": "x"})
    lines = [ln for ln in _error(raw).splitlines() if ln.startswith("  - ")]
    assert len(lines) == 3, lines


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"name": "../etc"}, "name: '../etc' is not a valid name"),
        ({"members": [_member("a"), _member("a")]}, "model name 'a' is used twice (members and baselines); give each its own name"),
        ({"members": [_member("p")]}, "model name 'p' clashes with the pipeline's own models"),
        ({"serving": {"max_batch_size": 0}}, "serving.max_batch_size: Input should be greater than or equal to 1"),
        ({"serving": {"max_batch_size": 8, "dynamic_batching": {"preferred_batch_sizes": [16]}}},
         "preferred_batch_sizes [16] exceed serving.max_batch_size 8"),
        ({"target": "cloud"}, "target: Input should be 'local' or 'ngc'"),
        ({"members": []}, "members: List should have at least 1 item"),
    ],
)
def test_invalid_specs(change, expected):
    assert expected in _error(_spec(**change))


def test_member_batch_below_pipeline_batch():
    low = _member("b")
    low["max_batch_size"] = 4
    msg = _error(_spec(members=[_member("a"), low], serving={"max_batch_size": 16}))
    assert "'b' max_batch_size 4 is below the pipeline's serving.max_batch_size 16" in msg


def test_members_must_share_the_input_signature():
    other = _member("b")
    other["inputs"][0]["shape"] = [3, 8, 8]
    msg = _error(_spec(members=[_member("a"), other]))
    assert "inputs of 'b' (image:float32[3, 8, 8]) differ from inputs of 'a' (image:float32[1, 8, 8])" in msg


def test_model_source_forms_are_exclusive():
    both = _member("a")
    both["model"]["torchscript"] = "/etc/hostname"
    assert "give exactly one model source" in _error(_spec(members=[both]))
    ts = _member("a")
    ts["model"] = {"torchscript": "/etc/hostname", "kwargs": {"width": 3}}
    assert "'kwargs' only applies to 'architecture'" in _error(_spec(members=[ts]))


def test_architecture_file_form_is_resolved(tmp_path):
    (tmp_path / "nets.py").write_text("class Net: pass\n")
    m = _member("a")
    m["model"]["architecture"] = "nets.py:Net"
    spec = parse_spec(_spec(members=[m]), base_dir=tmp_path)
    assert spec.members[0].model.architecture == f"{tmp_path / 'nets.py'}:Net"
    m["model"]["architecture"] = "other.py:Net"
    assert _error(_spec(members=[m]), base=tmp_path) == (
        "spec.yaml: invalid spec\n  - members[0] (a).model.architecture: file not found: "
        f"{tmp_path / 'other.py'} (relative paths are resolved against the spec's folder)")


def test_malformed_yaml_reports_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmembers: [\n  - a\n")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == (f"{path}: malformed YAML at line 3, column 3: expected the node content, but found '-'; "
                               "fix the YAML there (indentation, brackets, quotes)")


def test_spec_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == (f"{path}: the spec must be a YAML mapping with keys such as 'name', 'members' and "
                               "'fusion' (got list)")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "absent.yaml")
    assert str(info.value) == (f"spec file not found: {tmp_path / 'absent.yaml'}; check the path (a relative path is "
                               "resolved against the current folder)")


# --------------------------------------------------------------------------- fusion types
def _chain_member(name: str, source: str, width: int = 64) -> dict:
    return {
        "name": name,
        "model": {"architecture": "tritonfleet.examples.digits.models:DigitsHead", "checkpoint": "/etc/hostname"},
        "inputs": [{"name": "features", "dtype": "float32", "shape": [width]}],
        "inputs_from": {"features": source},
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [10]}],
    }


def _backbone() -> dict:
    m = _member("backbone")
    m["outputs"] = [{"name": "features", "dtype": "float32", "shape": [64]}]
    return m


def test_chained_members_are_checked_at_both_ends():
    spec = parse_spec(_spec(members=[_backbone(), _chain_member("head", "backbone.features")]), base_dir=Path("/"))
    assert [m.name for m in spec.fused_members] == ["head"] and spec.inputs[0].name == "image"
    msg = _error(_spec(members=[_backbone(), _chain_member("head", "backbone.features", width=32)]))
    assert "'backbone.features' produces float32[64] but 'head.features' expects float32[32]" in msg
    msg = _error(_spec(members=[_chain_member("head", "backbone.features"), _backbone()]))
    assert "reads 'backbone', which comes later" in msg
    msg = _error(_spec(members=[_backbone(), _chain_member("head", "backbone.feats")]))
    assert "'backbone' has no output 'feats' (outputs: features)" in msg
    msg = _error(_spec(members=[_backbone(), _chain_member("head", "nobody.features")]))
    assert "reads 'nobody', which is not a member" in msg


@pytest.mark.parametrize("fusion, expected", [
    ({"type": "weighted_mean", "weights": [1, 2, 3]}, "fusion.weights has 3 values for 2 fused members"),
    ({"type": "weighted_mean", "weights": [1, -2]}, "weights must be finite, >= 0 and not all zero"),
    ({"type": "vote", "weights": [0, 0]}, "weights must be finite, >= 0 and not all zero"),
    ({"type": "rescore", "members": ["a"]}, "rescore fuses exactly two members"),
    ({"type": "rescore", "top_k": 11}, "fusion.top_k 11 exceeds the 10 classes"),
    ({"type": "mean", "members": ["a", "zz"]}, "fusion.members names 'zz', which is not a member"),
    ({"type": "stacking"}, "stacking fusion is fitted on data.validation"),
    ({"type": "cascade", "stages": [{"model": "a"}, {"model": "b"}], "thresholds": [0.9, 0.5]},
     "2 stages need 1 thresholds"),
    ({"type": "cascade", "stages": [{"model": "x"}, {"model": "y"}], "thresholds": [0.9]},
     "cascade needs at least one stage that is a model of this spec"),
    ({"type": "route", "current": {"model": "a"}, "candidate": {"model": "b"}, "candidate_fraction": 2},
     "candidate_fraction: Input should be less than or equal to 1"),
    ({"type": "none", "member": "zz"}, "fusion.member 'zz' is not a member"),
    ({"type": "detection"}, "detection member 'a' has no output 'boxes'"),
])
def test_fusion_spec_errors(fusion, expected):
    assert expected in _error(_spec(fusion=fusion))


def test_bls_and_chain_pipelines_have_no_fusion_model():
    cascade = parse_spec(_spec(fusion={"type": "cascade", "stages": [{"model": "a"}, {"model": "digits"}],
                                       "thresholds": [0.9]}), base_dir=Path("/"))
    assert cascade.fusion_kind == "bls" and cascade.fusion_model_name is None and cascade.num_classes == 10
    chain = parse_spec(_spec(fusion={"type": "none"}), base_dir=Path("/"))
    assert chain.fusion_kind == "chain" and chain.fused_members == []


def test_extends_merges_mappings_and_replaces_lists(tmp_path):
    base = _spec(serving={"max_batch_size": 32, "instances": 2})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "child.yaml").write_text(yaml.safe_dump({
        "extends": "base.yaml", "name": "child", "serving": {"instances": 3},
        "fusion": {"type": "vote", "mode": "soft"}, "members": [_member("only")]}))
    spec = load_spec(tmp_path / "child.yaml")
    assert spec.name == "child" and spec.serving.max_batch_size == 32 and spec.serving.instances == 3
    assert [m.name for m in spec.members] == ["only"] and spec.fusion.type == "vote"
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\n")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "loop.yaml")
    assert str(info.value) == (f"{tmp_path / 'loop.yaml'}: extends: 'loop.yaml' makes a cycle; a spec cannot extend "
                               "itself, directly or through the specs it extends: remove one of the extends")
    (tmp_path / "far.yaml").write_text("extends: ../base.yaml\n")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "far.yaml")
    assert str(info.value) == f"{tmp_path / 'far.yaml'}: extends: '../base.yaml' must name a spec file in the same folder"
    (tmp_path / "gone.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "gone.yaml")
    assert str(info.value) == (f"spec file not found: {tmp_path / 'missing.yaml'} (extended by {tmp_path / 'gone.yaml'}); "
                               "check the extends: name (a file in the folder of the spec that extends it)")


def test_every_committed_spec_parses_once_trained(example_specs):
    for path in example_specs.glob("*.yaml"):
        spec = load_spec(path)
        assert spec.name == path.stem, path
