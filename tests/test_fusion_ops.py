"""Fusion math, tested as plain numpy (no Triton)."""

from __future__ import annotations

import numpy as np
import pytest

from builder.fusion import ops


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
    assert imported <= {"__future__", "numpy", "typing", "math"}, imported
