"""Compiled pipelines (``serving.compile``): members and fusion merged into one ONNX graph.

The fusion written as ONNX ops is checked against ``ops.py`` on random scores and on every tie the
documented rules decide (onnxruntime, no Triton). Then, through the real server serving the session
repository (every example spec, ``digits.yaml`` and those extending it with ``serving.compile``): each
compiled model against its Triton ensemble (within 1e-5, identical class indices on the test split)
and against PyTorch (the members' PyTorch outputs fused by ``ops.py``); its variants, its ngc config
(Triton's schema), reuse and reproducibility of the merged file; and the one line that cascade,
route and detection print instead.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from tritonfleet.builder.runtime import ops
from tritonfleet.builder.stages.fusion2onnx import fusion_in_float32, fusion_model
from tritonfleet.clients.model_config import parse_pbtxt, tensors_of

COMPILED = ["digits", "digits_geometric", "digits_weighted", "digits_vote", "digits_stacking", "digits_rescore",
            "digits_chain", "digits_torch"]
REFUSED = {"digits_cascade": "cascade cannot be compiled into one graph (it calls stages conditionally)",
           "digits_route": "route cannot be compiled into one graph"}


# --------------------------------------------------------------------------- the ONNX fusion vs ops.py
def run_fusion(model, scores):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    probs, index = session.run(None, {f"scores_{i}": s for i, s in enumerate(scores)})
    return {"probabilities": probs, "class_index": index}


def assert_same(params, scores, opset=18):
    expected = ops.fuse(params, scores)
    got = run_fusion(fusion_model(params, len(scores), scores[0].shape[1], opset=opset), scores)
    assert got["probabilities"].dtype == np.float32 and got["class_index"].dtype == np.int64
    assert got["class_index"].shape == (len(scores[0]), 1)
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], atol=1e-7, rtol=0)
    np.testing.assert_array_equal(got["class_index"], expected["class_index"])
    return got


def _params(kind, members, classes, rng):
    return {
        "mean": {"type": "mean"},
        "mean_none": {"type": "mean", "activation": "none"},
        "geometric_mean": {"type": "geometric_mean"},
        "weighted_mean": {"type": "weighted_mean", "weights": [0.2, 0.3, 0.5][:members]},
        "vote_hard": {"type": "vote", "mode": "hard"},
        "vote_hard_weighted": {"type": "vote", "mode": "hard", "weights": [0.5, 0.25, 0.25][:members]},
        "vote_soft": {"type": "vote", "mode": "soft"},
        "stacking": {"type": "stacking", "coef": rng.normal(size=(members * classes, classes)).tolist(),
                     "intercept": rng.normal(size=classes).tolist()},
        "rescore": {"type": "rescore", "top_k": 3, "alpha": 0.3},
    }[kind]


KINDS = ["mean", "mean_none", "geometric_mean", "weighted_mean", "vote_hard", "vote_hard_weighted", "vote_soft",
         "stacking", "rescore"]


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("kind", KINDS)
def test_onnx_fusion_equals_ops_on_random_scores(kind, opset):
    rng = np.random.default_rng(100 * KINDS.index(kind) + opset)
    members, classes = (2 if kind == "rescore" else 3), 10
    scores = [(rng.normal(size=(300, classes)) * 3).astype(np.float32) for _ in range(members)]
    if kind == "mean_none":
        scores = [ops.softmax(s) for s in scores]
    assert_same(_params(kind, members, classes, rng), scores, opset)


@pytest.mark.parametrize("kind", KINDS)
def test_ties_go_where_the_documented_rules_say(kind):
    """Equal scores in a row, identical members: the lowest class wins, as in ops.py."""
    rng = np.random.default_rng(3)
    members = 2 if kind == "rescore" else 3
    base = (rng.normal(size=(6, 5)) * 2).astype(np.float32)
    base[0] = 0.0                        # every class tied
    base[1] = [1.0, 3.0, 3.0, 3.0, 1.0]  # classes 1, 2, 3 tied at the top
    scores = [base.copy() for _ in range(members)]
    got = assert_same(_params(kind, members, 5, rng), scores)
    if kind not in ("stacking",):  # (stacking's coefficients break the symmetry)
        assert got["class_index"][0, 0] == 0 and got["class_index"][1, 0] == 1


def test_hard_vote_ties_go_to_the_highest_summed_probability_then_the_lowest_class():
    # three members vote for three different classes: one vote each
    a = np.log(np.array([[0.5, 0.3, 0.2, 1e-6]], np.float32))  # votes 0
    b = np.log(np.array([[0.3, 0.6, 0.1, 1e-6]], np.float32))  # votes 1; class 1 has the highest sum (0.3+0.6+0.35)
    c = np.log(np.array([[0.2, 0.35, 0.45, 1e-6]], np.float32))  # votes 2
    got = assert_same({"type": "vote", "mode": "hard"}, [a, b, c])
    assert got["class_index"][0, 0] == 1
    np.testing.assert_allclose(got["probabilities"][0, :3], [1 / 3] * 3, rtol=1e-6)
    # two members each for classes 2 and 0, the same summed probability (exact in binary): the lower class
    votes_0 = np.array([[0.5, 0.125, 0.375]], np.float32)
    votes_2 = np.array([[0.375, 0.125, 0.5]], np.float32)
    got = assert_same({"type": "vote", "mode": "hard", "activation": "none"}, [votes_0, votes_2, votes_0, votes_2])
    assert got["class_index"][0, 0] == 0
    np.testing.assert_array_equal(got["probabilities"], [[0.5, 0.0, 0.5]])
    # weights 0.2 + 0.3 against 0.5: a tie in float64 (1e-9 slack), decided by the summed probability
    w = {"type": "vote", "mode": "hard", "weights": [0.2, 0.3, 0.5], "activation": "none"}
    x = np.array([[0.6, 0.4, 0.0]], np.float32)
    y = np.array([[0.1, 0.9, 0.0]], np.float32)
    got = assert_same(w, [x, x, y])
    assert got["class_index"][0, 0] == 1  # 0.6+0.6+0.1 = 1.3 < 0.4+0.4+0.9 = 1.7


def test_rescore_takes_equal_candidates_in_class_order():
    primary = np.array([[0.3, 0.1, 0.3, 0.3, 0.0]], np.float32)  # top-2 of three equal scores: classes 0 and 2
    rescorer = np.array([[0.1, 0.1, 0.1, 0.7, 0.0]], np.float32)
    got = assert_same({"type": "rescore", "top_k": 2, "alpha": 0.5, "activation": "none"}, [primary, rescorer])
    assert got["probabilities"][0, 3] == 0.0 and got["probabilities"][0, 0] > 0 and got["probabilities"][0, 2] > 0


@pytest.mark.parametrize("kind", ["mean", "geometric_mean", "vote_hard", "stacking", "rescore"])
def test_the_float32_fusion_for_tensorrt_stays_within_1e_6(kind):
    rng = np.random.default_rng(11)
    members = 2 if kind == "rescore" else 3
    scores = [(rng.normal(size=(200, 10)) * 3).astype(np.float32) for _ in range(members)]
    params = _params(kind, members, 10, rng)
    model = fusion_in_float32(fusion_model(params, members, 10))
    assert not [i for i in model.graph.initializer if i.data_type == 11]  # no float64 left
    got, expected = run_fusion(model, scores), ops.fuse(params, scores)
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], atol=1e-6)
    assert np.mean(got["class_index"] == expected["class_index"]) >= 0.99


# --------------------------------------------------------------------------- through the real server
@pytest.fixture(scope="module")
def client(triton):
    with triton.client("grpc") as c:
        yield c


@pytest.fixture(scope="module")
def x_test(digits_data):
    return digits_data["x_test"]


def _torch_reference(spec, result, x):
    """What the pipeline computes with the members in PyTorch: their outputs fused by ops.py with the
    served fusion step's parameters (fitted ones included), or the chosen member's outputs."""
    from tritonfleet.builder.stages.load_torch import load_torch_model
    from tritonfleet.builder.stages.parity import run_torch

    outputs = {}
    for m in spec.members:
        inputs = [outputs[src][out] for src, out in (spec.sources_of(m)[t.name] for t in m.inputs)] \
            if m.inputs_from else [x]
        outputs[m.name] = run_torch(load_torch_model(m.model), inputs, [t.name for t in m.outputs])
    config = parse_pbtxt((result.repository / spec.fusion_model_name / "config.pbtxt").read_text())
    params = json.loads(config.parameters["fusion"].string_value)
    extra = result.repository / spec.fusion_model_name / "1" / "params.json"
    if extra.is_file():
        params.update(json.loads(extra.read_text()))
    return ops.fuse(params, [outputs[m.name][spec.fused_output(m).name] for m in spec.fused_members])


@pytest.mark.parametrize("pipeline", COMPILED)
def test_compiled_model_equals_its_ensemble_and_pytorch_through_the_server(repository, client, x_test, pipeline):
    spec, result = repository[pipeline]
    name = f"{pipeline}_compiled"
    ensemble = client.infer_batched(pipeline, x_test)
    compiled = client.infer_batched(name, x_test)
    assert compiled["probabilities"].shape == (len(x_test), 10) and compiled["class_index"].shape == (len(x_test), 1)
    np.testing.assert_allclose(compiled["probabilities"], ensemble["probabilities"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(compiled["class_index"], ensemble["class_index"])
    torch = _torch_reference(spec, result, x_test)
    np.testing.assert_allclose(compiled["probabilities"], torch["probabilities"], atol=spec.parity.fp32.atol, rtol=0)
    assert np.mean(compiled["class_index"] == torch["class_index"]) >= spec.parity.fp32.min_top1_agreement


def test_chaining_without_fusion_compiles_to_the_chosen_members_outputs(repository, client, x_test):
    """``fusion: none``: the backbone's features feed the head inside the graph; the head's logits out."""
    from tritonfleet.builder.stages.load_torch import load_torch_model
    from tritonfleet.builder.stages.parity import run_torch

    spec, _ = repository["digits_chain_head"]
    ensemble = client.infer_batched("digits_chain_head", x_test)
    compiled = client.infer_batched("digits_chain_head_compiled", x_test)
    assert list(compiled) == ["logits"] and compiled["logits"].shape == (len(x_test), 10)
    np.testing.assert_allclose(compiled["logits"], ensemble["logits"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(compiled["logits"].argmax(1), ensemble["logits"].argmax(1))
    backbone, head = (load_torch_model(m.model) for m in spec.members)
    features = run_torch(backbone, [x_test], ["features"])["features"]
    torch = run_torch(head, [features], ["logits"])["logits"]
    np.testing.assert_allclose(compiled["logits"], torch, atol=spec.parity.fp32.atol, rtol=spec.parity.fp32.rtol)


def test_compiled_configs_take_and_give_exactly_what_the_ensemble_does(repository):
    for pipeline in [*COMPILED, "digits_chain_head"]:
        _, result = repository[pipeline]
        ensemble = parse_pbtxt((result.repository / pipeline / "config.pbtxt").read_text())
        compiled = parse_pbtxt((result.repository / f"{pipeline}_compiled" / "config.pbtxt").read_text())
        assert tensors_of(compiled, "input") == tensors_of(ensemble, "input"), pipeline
        assert tensors_of(compiled, "output") == tensors_of(ensemble, "output"), pipeline
        assert compiled.backend == "python" and compiled.max_batch_size == ensemble.max_batch_size
        assert compiled.parameters["onnx_file"].string_value == "model.onnx"


def test_compiled_variants_and_their_records(repository, client, x_test):
    """digits builds fp16 and int8 compiled variants from the compiled fp32 graph, each checked against
    PyTorch with its precision's tolerance; the fp32 one is the one that serves."""
    spec, result = repository["digits"]
    manifest = json.loads((result.repository / "manifest.json").read_text())["models"]
    ensemble = client.infer_batched("digits", x_test)
    for precision, suffix in (("fp32", ""), ("fp16", "_fp16"), ("int8", "_int8")):
        record = manifest[f"digits_compiled{suffix}"]
        assert record["kind"] == "compiled" and record["precision"] == precision
        assert record["compiled"] == {"pipeline": "digits", "fusion": "mean", "serves": precision == "fp32",
                                      "members": ["cnn_small_a", "cnn_small_b", "cnn_small_c"]}
        (parity,) = record["parity"]
        tol = spec.parity.for_precision(precision)
        assert parity["passed"] and parity["samples"] == spec.parity.samples
        assert parity["top1_agreement"] >= tol.min_top1_agreement
        assert tol.atol is None or parity["max_abs_error"] <= tol.atol
        assert record["variant"]["test_accuracy"] > 0.9
        served = client.infer_batched(f"digits_compiled{suffix}", x_test)
        agreement = np.mean(served["class_index"] == ensemble["class_index"])
        assert agreement >= tol.min_top1_agreement, (precision, agreement)


def test_the_merged_graph_is_reproducible_and_holds_no_build_paths(repository, tmp_path):
    """Merging the repository's member files again gives the committed file, byte for byte."""
    from tritonfleet.builder.repository.plan import fusion_params
    from tritonfleet.builder.stages.pipeline2onnx import CompilePipeline

    for pipeline in ("digits", "digits_chain"):
        spec, result = repository[pipeline]
        repo = result.repository
        members = json.loads((repo / "manifest.json").read_text())["models"][f"{pipeline}_compiled"]["compiled"]
        paths = {m: repo / m / "1" / "model.onnx" for m in members["members"]}
        again = CompilePipeline(spec, paths, fusion_params(spec), tmp_path / pipeline / "model.onnx")()
        committed = (repo / f"{pipeline}_compiled" / "1" / "model.onnx").read_bytes()
        assert again.read_bytes() == committed
        assert str(repo).encode() not in committed and b"/tmp/" not in committed and b".py" not in committed


def test_an_unchanged_compiled_model_is_reused(repository, example_specs):
    from tritonfleet.builder.build import build
    from tritonfleet.builder.spec import load_spec

    path = example_specs / "digits_geometric.yaml"
    again = build(load_spec(path), spec_path=path, progress=False)
    steps = [s.name for s in again.steps]
    assert "reuse digits_geometric_compiled (unchanged)" in steps and not [s for s in steps if s.startswith("compile")]
    assert again.actions["digits_geometric_compiled"] == ("unchanged", 1)


# --------------------------------------------------------------------------- what cannot be one graph
@pytest.mark.parametrize("pipeline", sorted(REFUSED))
def test_patterns_with_no_one_graph_form_say_so_in_one_line(repository, pipeline):
    spec, result = repository[pipeline]
    assert spec.serving.compile  # inherited from digits.yaml
    (step,) = [s for s in result.steps if s.name == "compile"]
    assert step.status.value == "skipped" and "\n" not in step.message
    assert step.message.startswith(f"{pipeline}: {REFUSED[pipeline]}")
    assert step.message.endswith("; serving the Triton pipeline only")
    assert not [p for p in result.models if "compiled" in p.config.name]
    assert not result.missing_required


def test_the_refusal_is_printed_by_the_build_command(repository, capsys):
    from tritonfleet.builder.cli.build import print_build

    print_build(repository["digits_cascade"][1])
    out = " ".join(capsys.readouterr().out.split())
    assert ("skipped compile: digits_cascade: cascade cannot be compiled into one graph (it calls stages "
            "conditionally); serving the Triton pipeline only") in out


def test_detection_fusion_is_refused_too(example_specs):
    from tritonfleet.builder.spec import load_spec, with_overrides
    from tritonfleet.builder.stages.pipeline2onnx import compile_refusal

    spec = with_overrides(load_spec(example_specs / "detection_wbf.yaml"), {"serving": {"compile": True}})
    assert spec.compiled_model_name is None
    assert compile_refusal(spec) == ("detection_wbf: detection fusion cannot be compiled into one graph (weighted "
                                     "boxes fusion clusters each image's boxes in a data-dependent loop); serving "
                                     "the Triton pipeline only")


# --------------------------------------------------------------------------- the ngc target
def test_ngc_compiled_models_are_onnxruntime_models(ngc_build):
    _, result = ngc_build
    repo = result.repository
    ensemble = parse_pbtxt((repo / "digits" / "config.pbtxt").read_text())
    for suffix in ("", "_fp16", "_int8"):
        cfg = parse_pbtxt((repo / f"digits_compiled{suffix}" / "config.pbtxt").read_text())
        assert cfg.platform == "onnxruntime_onnx" and cfg.backend == "" and cfg.default_model_filename == "model.onnx"
        assert cfg.instance_group[0].kind == cfg.instance_group[0].KIND_GPU
        assert tensors_of(cfg, "input") == tensors_of(ensemble, "input")
        assert tensors_of(cfg, "output") == tensors_of(ensemble, "output")
        files = sorted(p.name for p in (repo / f"digits_compiled{suffix}" / "1").iterdir())
        assert files == ["model.onnx"]


def test_the_build_command_flag_asks_for_it(example_specs):
    from tritonfleet.builder.cli import make_parser
    from tritonfleet.builder.cli.build import apply_overrides
    from tritonfleet.builder.spec import load_spec, with_overrides

    plain = with_overrides(load_spec(example_specs / "digits_vote.yaml"), {"serving": {"compile": False}})
    assert plain.compiled_model_name is None
    args = make_parser().parse_args(["build", str(example_specs / "digits_vote.yaml"), "--compile"])
    assert apply_overrides(plain, args).compiled_model_name == "digits_vote_compiled"
    args = make_parser().parse_args(["build", str(example_specs / "digits_vote.yaml")])
    assert apply_overrides(plain, args).compiled_model_name is None
