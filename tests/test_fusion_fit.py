"""Build-time fitting of fusion parameters (weights, stacking)."""

from __future__ import annotations

import numpy as np
import pytest

from tritonfleet.builder.runtime import ops
from tritonfleet.builder.stages.fit import ABSENT_CLASS_LOGIT, fit_stacking, fit_weights, log_loss


def _onehot(labels, classes, confidence):
    p = np.full((len(labels), classes), (1 - confidence) / (classes - 1))
    p[np.arange(len(labels)), labels] = confidence
    return p


def test_weights_from_accuracy_and_log_loss():
    labels = np.array([0, 1, 2, 0])
    good = _onehot(labels, 3, 0.8)
    half = good.copy()
    half[:2] = _onehot(np.array([1, 2]), 3, 0.8)  # wrong on half the samples
    fitted = fit_weights([good, half], labels, "accuracy")
    assert fitted["scores"] == [1.0, 0.5]
    np.testing.assert_allclose(fitted["weights"], [2 / 3, 1 / 3])
    fitted = fit_weights([good, half], labels, "log_loss")
    l1, l2 = log_loss(good, labels), log_loss(half, labels)
    np.testing.assert_allclose(fitted["weights"], [(1 / l1) / (1 / l1 + 1 / l2), (1 / l2) / (1 / l1 + 1 / l2)])
    assert fitted["weights"][0] > fitted["weights"][1]


def test_weights_when_every_member_is_always_wrong():
    labels = np.array([0, 0])
    wrong = _onehot(np.array([1, 1]), 2, 0.9)
    np.testing.assert_allclose(fit_weights([wrong, wrong], labels, "accuracy")["weights"], [0.5, 0.5])


def test_stacking_coefficients_reproduce_sklearn():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 200)
    probs = [np.clip(_onehot(labels, 4, 0.6) + rng.normal(0, 0.1, (200, 4)), 0.01, None) for _ in range(3)]
    probs = [p / p.sum(1, keepdims=True) for p in probs]
    fitted = fit_stacking(probs, labels, classes=4)
    served = ops.stacking_probabilities(probs, fitted["coef"], fitted["intercept"], activation="none")
    reference = LogisticRegression(C=1.0, max_iter=1000).fit(np.concatenate(probs, 1), labels)
    np.testing.assert_allclose(served, reference.predict_proba(np.concatenate(probs, 1)), atol=1e-5)
    assert 0.9 < fitted["train_accuracy"] <= 1.0


def test_stacking_with_a_class_missing_from_validation():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 100)  # class 3 never appears
    probs = [_onehot(labels, 4, 0.7) + rng.normal(0, 0.05, (100, 4)) for _ in range(2)]
    fitted = fit_stacking(probs, labels, classes=4)
    assert np.asarray(fitted["coef"]).shape == (8, 4)
    assert fitted["intercept"][3] == ABSENT_CLASS_LOGIT
    assert (ops.stacking_probabilities(probs, fitted["coef"], fitted["intercept"], "none").argmax(1) != 3).all()


def test_stacking_needs_two_classes():
    from tritonfleet.builder.errors import SpecError

    with pytest.raises(SpecError, match="at least two classes"):
        fit_stacking([np.ones((5, 3)) / 3], np.zeros(5, int), classes=3)
