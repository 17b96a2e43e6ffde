"""Fusion parameters fitted at build time on the validation split (never at serving time).

Results are plain numbers stored as JSON (config parameters or ``params.json``), never
pickled estimators: the serving side only evaluates them with ``ops.py``.

* :func:`fit_weights` — weights for ``weighted_mean``/``vote``:
  ``accuracy``: w_i = acc_i / sum(acc); ``log_loss``: w_i = (1 / L_i) / sum(1 / L).
* :func:`fit_stacking` — multinomial logistic regression (scikit-learn, lbfgs, L2) on the
  concatenated member probabilities, returned as ``coef [members*classes, classes]`` and
  ``intercept [classes]`` in the layout ``ops.stacking_probabilities`` reads.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tritonfleet.builder.errors import SpecError

ABSENT_CLASS_LOGIT = -30.0  # intercept of a class the validation split never shows


def log_loss(probabilities: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(probabilities[np.arange(len(labels)), labels], eps, 1.0)
    return float(-np.mean(np.log(p)))


def accuracy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def fit_weights(probabilities: Sequence[np.ndarray], labels: np.ndarray, metric: str) -> dict:
    """``{"weights": [...], "scores": [...]}``; weights sum to 1."""
    labels = np.asarray(labels)
    if metric == "accuracy":
        scores = [accuracy(p, labels) for p in probabilities]
        raw = np.asarray(scores)
    elif metric == "log_loss":
        scores = [log_loss(p, labels) for p in probabilities]
        raw = 1.0 / np.maximum(np.asarray(scores), 1e-12)
    else:
        raise SpecError(f"unknown weight metric '{metric}' (use accuracy or log_loss)")
    if raw.sum() <= 0:  # every member always wrong: nothing to prefer
        raw = np.ones_like(raw)
    return {"weights": (raw / raw.sum()).tolist(), "metric": metric, "scores": scores}


def fit_stacking(probabilities: Sequence[np.ndarray], labels: np.ndarray, classes: int,
                 regularization: float = 1.0, max_iter: int = 1000) -> dict:
    """``{"coef": ..., "intercept": ..., "train_accuracy": ...}`` (JSON-ready lists)."""
    from sklearn.linear_model import LogisticRegression

    features = np.concatenate([np.asarray(p, np.float64) for p in probabilities], axis=1)
    labels = np.asarray(labels).astype(np.int64)
    seen = np.unique(labels)
    if len(seen) < 2:
        raise SpecError("stacking needs data.validation labels of at least two classes")
    model = LogisticRegression(C=regularization, max_iter=max_iter)
    model.fit(features, labels)
    coef = np.zeros((features.shape[1], classes))
    intercept = np.full(classes, ABSENT_CLASS_LOGIT)
    if len(model.classes_) == 2:  # sklearn stores one row for binary problems
        coef[:, model.classes_[1]] = model.coef_[0]
        intercept[model.classes_[1]] = model.intercept_[0]
        intercept[model.classes_[0]] = 0.0
        coef[:, model.classes_[0]] = 0.0
    else:
        coef[:, model.classes_] = model.coef_.T
        intercept[model.classes_] = model.intercept_
    train_acc = float(np.mean(np.argmax(features @ coef + intercept, axis=1) == labels))
    return {"coef": coef.tolist(), "intercept": intercept.tolist(), "train_accuracy": train_acc}
