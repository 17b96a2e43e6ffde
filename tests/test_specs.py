"""The spec validator: valid specs load, every invalid one gets one clear SpecError."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from builder.errors import SpecError
from builder.specs import load_spec, parse_spec


def _member(name: str, classes: int = 10, checkpoint: str = "/etc/hostname") -> dict:
    return {
        "name": name,
        "model": {"architecture": "examples.digits.models:DigitsCNN", "checkpoint": checkpoint},
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
        ({"members": [_member("a"), _member("a")]}, "model name 'a' is used twice"),
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
    assert "file not found" in _error(_spec(members=[m]), base=tmp_path)


def test_malformed_yaml_reports_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nmembers: [\n  - a\n")
    with pytest.raises(SpecError, match=r"malformed YAML at line \d+, column \d+"):
        load_spec(path)


def test_spec_must_be_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_spec(path)
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "absent.yaml")
