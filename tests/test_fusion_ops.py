"""Fusion math, tested as plain numpy (no Triton)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from tritonfleet.builder.runtime import ops


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_softmax_rows_sum_to_one_and_survive_large_logits(rng):
    x = rng.normal(size=(5, 10)).astype(np.float32) * 50 + 1000
    p = ops.softmax(x)
    assert p.dtype == np.float32
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(p.argmax(1), x.argmax(1))


def test_mean_of_softmaxes_matches_a_direct_computation(rng):
    scores = [rng.normal(size=(4, 6)).astype(np.float32) for _ in range(3)]
    expected = np.mean([np.exp(s) / np.exp(s).sum(1, keepdims=True) for s in scores], axis=0)
    np.testing.assert_allclose(ops.mean_probabilities(scores), expected, rtol=1e-6)


def test_mean_with_one_member_is_its_softmax(rng):
    s = rng.normal(size=(3, 4))
    np.testing.assert_allclose(ops.mean_probabilities([s]), ops.softmax(s))


def test_activation_none_averages_given_probabilities():
    a = np.array([[0.2, 0.8]], np.float32)
    b = np.array([[0.6, 0.4]], np.float32)
    np.testing.assert_allclose(ops.mean_probabilities([a, b], activation="none"), [[0.4, 0.6]])


def test_class_index_breaks_ties_towards_the_lowest_class():
    probs = np.array([[0.5, 0.5, 0.0], [0.1, 0.45, 0.45], [0.2, 0.3, 0.5]], np.float32)
    out = ops.class_index(probs)
    assert out.dtype == np.int64 and out.shape == (3, 1)
    assert out.ravel().tolist() == [0, 1, 2]


def test_fuse_returns_both_outputs(rng):
    scores = [rng.normal(size=(2, 3)) for _ in range(2)]
    out = ops.fuse({"type": "mean", "activation": "softmax"}, scores)
    assert set(out) == {"probabilities", "class_index"}
    assert out["probabilities"].shape == (2, 3)
    np.testing.assert_array_equal(out["class_index"][:, 0], out["probabilities"].argmax(1))


@pytest.mark.parametrize(
    "scores, message",
    [
        ([], "at least one member"),
        ([np.zeros((2, 3)), np.zeros((2, 4))], r"member 1 scores have shape \[2, 4\], member 0 \[2, 3\]"),
        ([np.zeros(3)], r"shape \[3\]; expected \[batch, classes\]"),
        ([np.array([[0.0, np.nan]])], "NaN or inf"),
        ([np.array([[np.inf, 0.0]])], "NaN or inf"),
    ],
)
def test_bad_inputs_raise_fusion_error(scores, message):
    with pytest.raises(ops.FusionError, match=message):
        ops.mean_probabilities(scores)


def test_unknown_type_and_activation_are_errors():
    with pytest.raises(ops.FusionError, match="unknown fusion type 'median'"):
        ops.fuse({"type": "median"}, [np.zeros((1, 2))])
    with pytest.raises(ops.FusionError, match="unknown activation 'relu'"):
        ops.mean_probabilities([np.zeros((1, 2))], activation="relu")


def test_ops_module_is_self_contained():
    # ops.py is copied into the repository: it may import numpy and the stdlib only.
    import ast
    from pathlib import Path

    tree = ast.parse(Path(ops.__file__).read_text())
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported <= {"__future__", "collections", "numpy", "typing", "math", "torch"}, imported  # torch: lazily, on GPU


# --------------------------------------------------------------------------- more fusions
def test_geometric_mean_known_value():
    a = np.array([[0.5, 0.5]], np.float32)
    b = np.array([[0.9, 0.1]], np.float32)
    np.testing.assert_allclose(ops.geometric_mean_probabilities([a, b], "none"), [[0.75, 0.25]], rtol=1e-5)


def test_weighted_mean_normalises_and_ignores_zero_weights():
    a = np.array([[0.2, 0.8]], np.float32)
    b = np.array([[0.6, 0.4]], np.float32)
    np.testing.assert_allclose(ops.weighted_mean_probabilities([a, b], [3, 1], "none"), [[0.3, 0.7]], rtol=1e-6)
    np.testing.assert_allclose(ops.weighted_mean_probabilities([a, b], [0, 5], "none"), b, rtol=1e-6)


@pytest.mark.parametrize("weights, message", [
    ([1, -1], "weights must be finite, >= 0 and not all zero (got [1.0, -1.0])"),
    ([1, float("nan")], "weights must be finite, >= 0 and not all zero (got [1.0, nan])"),
    ([0, 0], "weights must be finite, >= 0 and not all zero (got [0.0, 0.0])"),
    ([1, 2, 3], "3 weights for 2 members"),
])
def test_bad_weights(weights, message):
    with pytest.raises(ops.FusionError, match=re.escape(message)):
        ops.weighted_mean_probabilities([np.zeros((1, 2)), np.zeros((1, 2))], weights)


def test_hard_vote_majority_and_tie_breaking():
    # three members, classes 0..2 (probabilities, activation none)
    m1 = np.array([[0.6, 0.3, 0.1], [0.1, 0.5, 0.4], [0.5, 0.25, 0.25]])
    m2 = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.25, 0.5, 0.25]])
    m3 = np.array([[0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.25, 0.25, 0.5]])
    shares, index = ops.hard_vote([m1, m2, m3], "none")
    np.testing.assert_allclose(shares, [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
    # row 0: majority class 0; row 1: majority class 2;
    # row 2: three-way tie, summed probabilities tie too (exactly 1.0 each) -> lowest index 0
    assert index.ravel().tolist() == [0, 2, 0]
    # a two-way vote tie goes to the higher summed probability: class 0 = 0.9, class 1 = 1.1
    a = np.array([[0.6, 0.4]])
    b = np.array([[0.3, 0.7]])
    assert ops.hard_vote([a, b], "none")[1].item() == 1
    assert ops.fuse({"type": "vote", "activation": "none"}, [a, b])["class_index"].item() == 1


def test_hard_vote_weights_and_single_member():
    a, b, c = (np.array([[0.9, 0.1]]), np.array([[0.2, 0.8]]), np.array([[0.3, 0.7]]))
    assert ops.hard_vote([a, b, c], "none", weights=[5, 1, 1])[1].item() == 0
    assert ops.hard_vote([a, b, c], "none")[1].item() == 1
    assert ops.hard_vote([b], "none")[1].item() == 1


def test_soft_vote_is_the_weighted_mean(rng):
    s = [rng.normal(size=(4, 5)) for _ in range(3)]
    soft = ops.fuse({"type": "vote", "mode": "soft", "weights": [1, 2, 3]}, s)["probabilities"]
    np.testing.assert_allclose(soft, ops.weighted_mean_probabilities(s, [1, 2, 3]), rtol=1e-6)


def test_stacking_is_softmax_of_an_affine_map(rng):
    s = [rng.normal(size=(4, 3)) for _ in range(2)]
    W, b = rng.normal(size=(6, 3)), rng.normal(size=3)
    feats = np.concatenate([ops.softmax(x).astype(np.float64) for x in s], axis=1)
    logits = feats @ W + b
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(ops.stacking_probabilities(s, W, b), expected, rtol=1e-5)
    with pytest.raises(ops.FusionError, match=r"expected \[6, 3\] / \[3\]"):
        ops.stacking_probabilities(s, W[:5], b)


def test_rescore():
    first = np.array([[0.5, 0.3, 0.15, 0.05]])
    second = np.array([[0.1, 0.2, 0.6, 0.1]])
    # top-2 of the first model: classes 0 and 1; 0.3*p1 + 0.7*p2 gives 0.22 and 0.23
    out = ops.rescore(first, second, top_k=2, alpha=0.3, activation="none")
    np.testing.assert_allclose(out, [[0.22 / 0.45, 0.23 / 0.45, 0, 0]], rtol=1e-5)
    assert ops.rescore(first, second, top_k=1, alpha=0.0, activation="none").argmax() == 0  # top-1 kept
    assert ops.rescore(first, second, top_k=4, alpha=0.0, activation="none").argmax() == 2  # second decides
    with pytest.raises(ops.FusionError, match="top_k"):
        ops.rescore(first, second, top_k=5, alpha=0.5, activation="none")


@pytest.mark.parametrize("params", [
    {"type": "mean"}, {"type": "geometric_mean"}, {"type": "weighted_mean", "weights": [1, 0, 2]},
    {"type": "vote"}, {"type": "vote", "mode": "soft"},
    {"type": "stacking", "coef": np.linspace(-1, 1, 300).reshape(30, 10).tolist(), "intercept": [0.1] * 10},
])
def test_torch_tensors_give_the_numpy_result(rng, params):
    torch = pytest.importorskip("torch")
    s = [rng.normal(size=(7, 10)).astype(np.float32) for _ in range(3)]
    s[1][0, :2] = 5.0  # a tie inside one member
    ref = ops.fuse(params, s)
    got = ops.fuse(params, [torch.from_numpy(x) for x in s])
    np.testing.assert_allclose(got["probabilities"].numpy(), ref["probabilities"], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got["class_index"].numpy(), ref["class_index"])


def test_torch_rescore_matches_numpy(rng):
    torch = pytest.importorskip("torch")
    a, b = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    ref = ops.rescore(a, b, 3, 0.4)
    np.testing.assert_allclose(ops.rescore(torch.from_numpy(a), torch.from_numpy(b), 3, 0.4).numpy(), ref, rtol=1e-5)


# --------------------------------------------------------------------------- detection
def test_iou_matrix_hand_computed():
    a = np.array([[0, 0, 10, 10], [0, 0, 2, 2]])
    b = np.array([[5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 10]])
    np.testing.assert_allclose(ops.iou_matrix(a, b), [[25 / 175, 0, 1], [0, 0, 0.04]])


def test_wbf_merges_overlaps_weighted_by_score():
    boxes, scores, _ = ops.fuse_boxes([np.array([[0, 0, 10, 10.]]), np.array([[1, 1, 11, 11.]])],
                                      [np.array([0.9]), np.array([0.6])], [np.array([1]), np.array([1])])
    np.testing.assert_allclose(boxes, [[0.4, 0.4, 10.4, 10.4]], rtol=1e-6)  # (0.9*b1 + 0.6*b2) / 1.5
    np.testing.assert_allclose(scores, [0.75])  # mean 0.75 * min(2, 2) / 2


def test_box_average_and_single_member_penalty():
    boxes, scores, labels = ops.fuse_boxes(
        [np.array([[0, 0, 10, 10.], [50, 50, 60, 60.]]), np.array([[2, 2, 12, 12.]])],
        [np.array([0.9, 0.8]), np.array([0.3])], [np.array([0, 0]), np.array([0])], method="average",
        iou_threshold=0.4)  # the two boxes overlap with IoU 64/136 = 0.47
    np.testing.assert_allclose(boxes[0], [1, 1, 11, 11])  # plain mean
    np.testing.assert_allclose(scores, [0.6, 0.4])  # 0.6*2/2; the lone box: 0.8*1/2
    assert labels.tolist() == [0, 0]


def test_wbf_keeps_labels_apart_and_skips_low_scores():
    same_box = np.array([[0, 0, 10, 10.]])
    boxes, scores, labels = ops.fuse_boxes([same_box, same_box], [np.array([0.9]), np.array([0.8])],
                                           [np.array([1]), np.array([2])])
    assert len(boxes) == 2 and sorted(labels.tolist()) == [1, 2]
    boxes, _, _ = ops.fuse_boxes([same_box, same_box], [np.array([0.9]), np.array([0.1])],
                                 [np.array([1]), np.array([1])], skip_threshold=0.2)
    assert len(boxes) == 1


def test_wbf_weights_and_empty_members():
    b = np.array([[0, 0, 10, 10.]])
    _, scores, _ = ops.fuse_boxes([b, b], [np.array([0.9]), np.array([0.3])], [np.array([0]), np.array([0])],
                                  weights=[3, 1])
    np.testing.assert_allclose(scores, [(2.7 + 0.3) / 2 * 2 / 4])
    empty = np.zeros((0, 4))
    boxes, scores, labels = ops.fuse_boxes([empty, empty], [np.zeros(0), np.zeros(0)],
                                           [np.zeros(0, int), np.zeros(0, int)])
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.dtype == np.int64
    with pytest.raises(ops.FusionError, match="NaN"):
        ops.fuse_boxes([np.array([[0, 0, np.nan, 1.]])], [np.array([0.5])], [np.array([0])])


def test_fuse_detections_padded_batch():
    k = 3
    boxes = np.zeros((2, 2, k, 4), np.float32)
    scores = np.zeros((2, 2, k), np.float32)
    labels = np.zeros((2, 2, k), np.int64)
    counts = np.array([[[2], [0]], [[1], [0]]])  # member, image
    boxes[0, 0, :2] = [[0, 0, 10, 10], [20, 20, 30, 30]]
    scores[0, 0, :2] = [0.9, 0.8]
    boxes[1, 0, :1] = [[1, 1, 11, 11]]
    scores[1, 0, :1] = [0.7]
    boxes[0, 0, 2] = [5, 5, 6, 6]  # padding beyond count must be ignored
    scores[0, 0, 2] = 0.99
    out = ops.fuse_detections({"max_detections": 4, "iou_threshold": 0.5}, list(boxes), list(scores), list(labels),
                              list(counts))
    assert out["boxes"].shape == (2, 4, 4) and out["count"].ravel().tolist() == [2, 0]
    np.testing.assert_allclose(out["scores"][0, :2], [0.8, 0.4])  # merged (0.9+0.7)/2, lone 0.8*1/2
    assert not out["boxes"][1].any()  # an image without detections stays zero
    out = ops.fuse_detections({"max_detections": 1}, list(boxes), list(scores), list(labels), list(counts))
    assert out["count"].ravel().tolist() == [1, 0]
    with pytest.raises(ops.FusionError, match=r"counts must be in \[0, 3\]"):
        ops.fuse_detections({}, list(boxes), list(scores), list(labels), [np.array([[4], [0]])] * 2)


# --------------------------------------------------------------------------- routing helpers
def test_escalate_mask():
    p = np.array([[0.95, 0.05], [0.6, 0.4]])
    assert ops.escalate_mask(p, 0.9).tolist() == [False, True]
    assert not ops.escalate_mask(p, 0.0).any()


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 1 / 3, 0.5, 0.9, 1.0])
def test_routing_split_is_exact_over_any_window(fraction):
    decisions = np.array([ops.routes_to_candidate(i, fraction) for i in range(400)])
    assert decisions.sum() == round(400 * fraction)
    for start in (0, 7, 123):
        for n in (10, 37):
            got = decisions[start:start + n].sum()
            assert np.floor(n * fraction) - 1e-9 <= got <= np.ceil(n * fraction) + 1e-9
    with pytest.raises(ops.FusionError):
        ops.routes_to_candidate(0, 1.5)
