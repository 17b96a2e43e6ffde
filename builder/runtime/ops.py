"""Fusion math: pure numpy (optionally torch), no Triton or tritonfleet imports.

This file is copied verbatim into every fusion model's version folder (as ``ops.py``) so a
repository is self-contained; the Python-backend adapters beside it only move tensors in and
out. Every classification function works on whole batches (``[batch, classes]``) with no
Python loop over samples. The same functions accept torch tensors, so a fusion step whose
inputs arrive on a GPU (DLPack) computes there instead of copying to the host.

Conventions: member scores are logits (``activation="softmax"``) or probabilities
(``activation="none"``); outputs are float32 probabilities and an int64 ``[batch, 1]`` class
index; ties between classes go to the lowest class index.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class FusionError(ValueError):
    """Inputs a fusion function cannot combine (shape mismatch, NaN, bad parameters)."""


# --------------------------------------------------------------------------- array backends
class _Numpy:
    @staticmethod
    def asarray(x):
        return np.asarray(x)

    @staticmethod
    def f64(x):
        return np.asarray(x, dtype=np.float64)

    @staticmethod
    def f32(x):
        return np.asarray(x, dtype=np.float32)

    @staticmethod
    def i64(x):
        return np.asarray(x, dtype=np.int64)

    # ndarray methods, not np.max/np.sum: the wrappers cost microseconds per call at batch 1
    stack = staticmethod(np.array)
    exp = staticmethod(np.exp)
    log = staticmethod(np.log)
    isfinite_all = staticmethod(lambda x: bool(np.isfinite(x).all()))

    @staticmethod
    def amax(x, axis, keepdims=False):
        return x.max(axis=axis, keepdims=keepdims)

    @staticmethod
    def sum(x, axis, keepdims=False):
        return x.sum(axis=axis, keepdims=keepdims)

    @staticmethod
    def argmax(x, axis):
        return x.argmax(axis=axis)

    @staticmethod
    def where(cond, x, y):
        return np.where(cond, x, y)

    @staticmethod
    def tensor(values, like):
        return np.asarray(values, dtype=np.float64)

    @staticmethod
    def one_hot(index, classes, like):
        return np.eye(classes, dtype=np.float64)[index]

    @staticmethod
    def topk_mask(x, k):
        idx = np.argsort(-x, axis=1, kind="stable")[:, :k]
        mask = np.zeros(x.shape, dtype=bool)
        np.put_along_axis(mask, idx, True, axis=1)
        return mask


class _Torch:
    """The same primitives for torch tensors (CPU or CUDA): math stays on the device."""

    def __init__(self):
        import torch

        self.t = torch

    def asarray(self, x):
        return x

    def f64(self, x):
        return x.to(self.t.float64)

    def f32(self, x):
        return x.to(self.t.float32)

    def i64(self, x):
        return x.to(self.t.int64)

    def stack(self, xs):
        return self.t.stack(list(xs))

    def exp(self, x):
        return self.t.exp(x)

    def log(self, x):
        return self.t.log(x)

    def isfinite_all(self, x):
        return bool(self.t.isfinite(x).all())

    def amax(self, x, axis, keepdims=False):
        return self.t.amax(x, dim=axis, keepdim=keepdims)

    def sum(self, x, axis, keepdims=False):
        return self.t.sum(x, dim=axis, keepdim=keepdims)

    def argmax(self, x, axis):
        # torch.argmax does not promise the first maximum; this does (lowest index wins).
        top = self.t.amax(x, dim=axis, keepdim=True)
        n = x.shape[axis]
        shape = [1] * x.dim()
        shape[axis] = n
        ids = self.t.arange(n, device=x.device).reshape(shape)
        return self.t.where(x == top, ids, n).amin(dim=axis)

    def where(self, cond, x, y):
        return self.t.where(cond, x, self.t.as_tensor(y, dtype=x.dtype, device=x.device))

    def tensor(self, values, like):
        return self.t.as_tensor(np.asarray(values, dtype=np.float64), device=like.device)

    def one_hot(self, index, classes, like):
        return self.t.nn.functional.one_hot(index, classes).to(self.t.float64)

    def topk_mask(self, x, k):
        # stable: among equal scores the lower class index is taken first
        n = x.shape[1]
        order = self.t.argsort(-x + self.t.arange(n, device=x.device) * 1e-12, dim=1)[:, :k]
        mask = self.t.zeros(x.shape, dtype=self.t.bool, device=x.device)
        return mask.scatter(1, order, True)


def _xp(x):
    return _Numpy if isinstance(x, np.ndarray) or not type(x).__module__.startswith("torch") else _Torch()


# --------------------------------------------------------------------------- classification
def _softmax64(xp, z, axis: int = -1):
    z = z - xp.amax(z, axis, keepdims=True)
    e = xp.exp(z)
    return e / xp.sum(e, axis, keepdims=True)


def softmax(x, axis: int = -1):
    """Numerically stable softmax computed in float64, returned as float32."""
    xp = _xp(x)
    return xp.f32(_softmax64(xp, xp.f64(xp.asarray(x)), axis))


def to_probabilities(scores, activation: str):
    xp = _xp(scores)
    if activation == "softmax":
        return softmax(scores)
    if activation == "none":
        return xp.f32(scores)
    raise FusionError(f"unknown activation '{activation}' (use 'softmax' or 'none')")


def _stacked(scores: Sequence[Any]):
    """``(xp, [members, batch, classes] float64)``; one shape and finiteness check for all."""
    if len(scores) == 0:
        raise FusionError("fusion needs at least one member output")
    xp = _xp(scores[0])
    arrays = [xp.asarray(s) for s in scores]
    first = tuple(arrays[0].shape)
    if len(first) != 2 or any(tuple(a.shape) != first for a in arrays):
        for i, a in enumerate(arrays):  # slow path: name the culprit
            if a.ndim != 2:
                raise FusionError(f"member {i} scores have shape {list(a.shape)}; expected [batch, classes]")
            if tuple(a.shape) != first:
                raise FusionError(f"member {i} scores have shape {list(a.shape)}, member 0 {list(first)}")
    stacked = xp.f64(xp.stack(arrays))
    if not xp.isfinite_all(stacked):
        bad = next(i for i, a in enumerate(arrays) if not xp.isfinite_all(a))
        raise FusionError(f"member {bad} scores hold NaN or inf values")
    return xp, stacked


def _probs(scores, activation: str):
    """``(xp, [members, batch, classes] float64 probabilities)``."""
    xp, stacked = _stacked(scores)
    if activation == "softmax":
        return xp, _softmax64(xp, stacked)
    if activation == "none":
        return xp, stacked
    raise FusionError(f"unknown activation '{activation}' (use 'softmax' or 'none')")


def check_weights(weights: Sequence[float], members: int) -> np.ndarray:
    """Non-negative, finite weights, one per member, not all zero; returned summing to 1.

    The spec validates weights with this function too, so what the spec accepts is exactly
    what the served fusion can compute.
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) != members:
        raise FusionError(f"{len(w) if w.ndim == 1 else w.shape} weights for {members} members")
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise FusionError(f"weights must be finite, >= 0 and not all zero (got {w.tolist()})")
    return w / w.sum()


def mean_probabilities(scores: Sequence[Any], activation: str = "softmax"):
    """Arithmetic mean over members of per-member class probabilities (= soft vote)."""
    xp, p = _probs(scores, activation)
    return xp.f32(xp.sum(p, 0) / p.shape[0])


def weighted_mean_probabilities(scores: Sequence[Any], weights: Sequence[float], activation: str = "softmax"):
    """Weighted mean of member probabilities; weights are normalised to sum to 1."""
    xp, p = _probs(scores, activation)
    w = xp.tensor(check_weights(weights, p.shape[0]), p)
    return xp.f32(xp.sum(p * w[:, None, None], 0))


def geometric_mean_probabilities(scores: Sequence[Any], activation: str = "softmax", eps: float = 1e-12):
    """Normalised geometric mean: ``exp(mean(log p))`` over members, rows summing to 1."""
    xp, p = _probs(scores, activation)
    logp = xp.log(p + eps)
    g = xp.exp(xp.sum(logp, 0) / p.shape[0])
    return xp.f32(g / xp.sum(g, 1, keepdims=True))


def hard_vote(scores: Sequence[Any], activation: str = "softmax", weights: Sequence[float] | None = None):
    """Each member votes for its top class (weighted); returns ``(vote shares, class index)``.

    Vote shares are ``[batch, classes]`` summing to 1. The winner is the class with the most
    votes; ties go to the tied class with the highest summed probability, then to the lowest
    class index — deterministic for any input.
    """
    xp, p = _probs(scores, activation)
    members, _, classes = p.shape
    w = xp.tensor(check_weights([1.0] * members if weights is None else weights, members), p)
    votes = xp.sum(xp.one_hot(xp.argmax(p, 2), classes, p) * w[:, None, None], 0)
    top = xp.amax(votes, 1, keepdims=True)
    support = xp.where(votes >= top - 1e-9, xp.sum(p, 0), -1.0)
    return xp.f32(votes), xp.i64(xp.argmax(support, 1))[:, None]


def stacking_probabilities(scores: Sequence[Any], coef: Sequence[Sequence[float]], intercept: Sequence[float],
                           activation: str = "softmax"):
    """Multinomial logistic regression on the concatenated member probabilities.

    ``coef`` is ``[members * classes, classes]`` and ``intercept`` ``[classes]``, fitted at
    build time on the validation split and stored as JSON.
    """
    xp, p = _probs(scores, activation)
    members, batch, classes = p.shape
    features = p.transpose(1, 0, 2).reshape(batch, members * classes) if xp is _Numpy else \
        p.permute(1, 0, 2).reshape(batch, members * classes)
    W, b = xp.tensor(coef, p), xp.tensor(intercept, p)
    if tuple(W.shape) != (members * classes, classes) or tuple(b.shape) != (classes,):
        raise FusionError(
            f"stacking coefficients have shape {list(W.shape)} / {list(b.shape)}; "
            f"expected [{members * classes}, {classes}] / [{classes}]"
        )
    return softmax(features @ W + b)


def rescore(primary, rescorer, top_k: int, alpha: float, activation: str = "softmax"):
    """Re-rank the primary model's ``top_k`` candidate classes with a second model.

    Candidates score ``alpha * p_primary + (1 - alpha) * p_rescorer``; other classes get 0;
    rows are renormalised. ``top_k=1`` keeps the primary's answer, ``alpha=1`` its order.
    """
    xp, p = _probs([primary, rescorer], activation)
    classes = p.shape[2]
    if not 1 <= top_k <= classes or not 0.0 <= alpha <= 1.0:
        raise FusionError(f"rescore needs 1 <= top_k <= {classes} and 0 <= alpha <= 1 (got {top_k}, {alpha})")
    combined = (alpha * p[0] + (1.0 - alpha) * p[1]) * xp.topk_mask(p[0], top_k)
    return xp.f32(combined / xp.sum(combined, 1, keepdims=True))


def class_index(probabilities):
    """Arg-max class as int64 ``[batch, 1]``; ties go to the lowest class index."""
    xp = _xp(probabilities)
    return xp.i64(xp.argmax(probabilities, 1))[:, None]


def max_confidence(probabilities):
    xp = _xp(probabilities)
    return xp.amax(xp.f32(probabilities), 1)


# --------------------------------------------------------------------------- dispatch
def _classification(params: Mapping[str, Any], scores: Sequence[Any]):
    kind = params.get("type")
    act = params.get("activation", "softmax")
    if kind == "mean":
        return mean_probabilities(scores, act)
    if kind == "geometric_mean":
        return geometric_mean_probabilities(scores, act)
    if kind == "weighted_mean":
        return weighted_mean_probabilities(scores, params["weights"], act)
    if kind == "vote":  # soft; hard votes are handled in fuse()
        weights = params.get("weights")
        return weighted_mean_probabilities(scores, [1.0] * len(scores) if weights is None else weights, act)
    if kind == "stacking":
        return stacking_probabilities(scores, params["coef"], params["intercept"], act)
    if kind == "rescore":
        return rescore(scores[0], scores[1], int(params["top_k"]), float(params["alpha"]), act)
    raise FusionError(f"unknown fusion type '{kind}'; known: {', '.join(CLASSIFICATION_TYPES)}")


CLASSIFICATION_TYPES = ("mean", "geometric_mean", "weighted_mean", "vote", "stacking", "rescore")


def fuse(params: Mapping[str, Any], scores: Sequence[Any]) -> dict[str, Any]:
    """Dispatch on ``params["type"]``; return ``{"probabilities": ..., "class_index": ...}``."""
    if params.get("type") == "vote" and params.get("mode", "hard") == "hard":
        shares, index = hard_vote(scores, params.get("activation", "softmax"), params.get("weights"))
        return {"probabilities": shares, "class_index": index}
    probs = _classification(params, scores)
    return {"probabilities": probs, "class_index": class_index(probs)}


# --------------------------------------------------------------------------- detection
def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a`` ``[K, 4]`` with every box in ``b`` ``[L, 4]`` (x1, y1, x2, y2)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def fuse_boxes(boxes: Sequence[np.ndarray], scores: Sequence[np.ndarray], labels: Sequence[np.ndarray],
               weights: Sequence[float] | None = None, iou_threshold: float = 0.55, skip_threshold: float = 0.0,
               method: str = "wbf") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuse one image's detections from several members.

    ``boxes[m]`` is ``[K_m, 4]`` (x1, y1, x2, y2), ``scores[m]`` and ``labels[m]`` ``[K_m]``.
    Boxes scoring below ``skip_threshold`` are dropped; scores are multiplied by the member's
    weight. Per label, boxes are visited by descending score and join the cluster whose
    fused box overlaps them most with IoU > ``iou_threshold``, else start a new one. A
    cluster's box is the score-weighted mean of its boxes (``wbf``, Solovyev et al.) or
    their plain mean (``average``); its score is the mean score of its boxes times
    ``min(size, members) / sum(weights)``, so boxes found by fewer members score lower.
    Returns boxes ``[N, 4]``, scores ``[N]``, labels ``[N]`` sorted by descending score.
    """
    members = len(boxes)
    if not (len(scores) == len(labels) == members) or members == 0:
        raise FusionError("boxes, scores and labels need one entry per member")
    w = np.ones(members) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(w) != members or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise FusionError(f"detection weights must be {members} finite values >= 0, not all zero")
    if method not in ("wbf", "average"):
        raise FusionError(f"unknown box fusion method '{method}' (use 'wbf' or 'average')")
    all_boxes, all_scores, all_labels = [], [], []
    for m in range(members):
        b = np.asarray(boxes[m], dtype=np.float64).reshape(-1, 4)
        s = np.asarray(scores[m], dtype=np.float64).reshape(-1)
        lab = np.asarray(labels[m]).reshape(-1).astype(np.int64)
        if not (len(b) == len(s) == len(lab)):
            raise FusionError(f"member {m}: {len(b)} boxes, {len(s)} scores, {len(lab)} labels")
        if not (np.all(np.isfinite(b)) and np.all(np.isfinite(s))):
            raise FusionError(f"member {m}: boxes or scores hold NaN or inf values")
        keep = s >= skip_threshold
        all_boxes.append(b[keep])
        all_scores.append(s[keep] * w[m])
        all_labels.append(lab[keep])
    b = np.concatenate(all_boxes) if all_boxes else np.zeros((0, 4))
    s = np.concatenate(all_scores) if all_scores else np.zeros(0)
    lab = np.concatenate(all_labels) if all_labels else np.zeros(0, np.int64)

    out_boxes, out_scores, out_labels = [], [], []
    for label in np.unique(lab):
        idx = np.flatnonzero(lab == label)
        idx = idx[np.argsort(-s[idx], kind="stable")]
        clusters: list[list[int]] = []
        fused: list[np.ndarray] = []
        for i in idx:
            if fused:
                ious = iou_matrix(b[i], np.stack(fused))[0]
                best = int(np.argmax(ious))
                if ious[best] > iou_threshold:
                    clusters[best].append(i)
                    members_b, members_s = b[clusters[best]], s[clusters[best]]
                    fused[best] = (members_s @ members_b / members_s.sum() if method == "wbf"
                                   else members_b.mean(axis=0))
                    continue
            clusters.append([i])
            fused.append(b[i].copy())
        for cluster, box in zip(clusters, fused):
            out_boxes.append(box)
            out_scores.append(s[cluster].mean() * min(len(cluster), members) / w.sum())
            out_labels.append(label)
    if not out_boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    order = np.argsort(-np.asarray(out_scores), kind="stable")
    return (np.asarray(out_boxes, np.float32)[order], np.asarray(out_scores, np.float32)[order],
            np.asarray(out_labels, np.int64)[order])


def fuse_detections(params: Mapping[str, Any], boxes: Sequence[np.ndarray], scores: Sequence[np.ndarray],
                    labels: Sequence[np.ndarray], counts: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
    """Batched, padded detection fusion.

    Member ``m`` gives ``boxes[m]`` ``[batch, K, 4]``, ``scores[m]``/``labels[m]`` ``[batch, K]``
    and ``counts[m]`` ``[batch]`` or ``[batch, 1]`` (valid rows per image; the rest is
    padding). Returns the same layout with ``max_detections`` rows per image (zero padded)
    and the fused counts. WBF is sequential by nature, so this loops over images.
    """
    members = len(boxes)
    batch = len(np.asarray(counts[0]).reshape(-1)) if members else 0
    k_out = int(params.get("max_detections", 100))
    out_b = np.zeros((batch, k_out, 4), np.float32)
    out_s = np.zeros((batch, k_out), np.float32)
    out_l = np.zeros((batch, k_out), np.int64)
    out_n = np.zeros((batch, 1), np.int64)
    n = [np.asarray(c).reshape(-1).astype(np.int64) for c in counts]
    for m in range(members):
        k = np.asarray(boxes[m]).shape[1]
        if len(n[m]) != batch or np.any(n[m] < 0) or np.any(n[m] > k):
            raise FusionError(f"member {m}: counts must be in [0, {k}] for each of {batch} images")
    for i in range(batch):
        fb, fs, fl = fuse_boxes(
            [np.asarray(boxes[m])[i, : n[m][i]] for m in range(members)],
            [np.asarray(scores[m])[i, : n[m][i]] for m in range(members)],
            [np.asarray(labels[m])[i, : n[m][i]] for m in range(members)],
            params.get("weights"), float(params.get("iou_threshold", 0.55)),
            float(params.get("skip_threshold", 0.0)), params.get("method", "wbf"),
        )
        keep = min(len(fb), k_out)
        out_b[i, :keep], out_s[i, :keep], out_l[i, :keep] = fb[:keep], fs[:keep], fl[:keep]
        out_n[i, 0] = keep
    return {"boxes": out_b, "scores": out_s, "labels": out_l, "count": out_n}


# --------------------------------------------------------------------------- routing helpers
def escalate_mask(probabilities, threshold: float) -> np.ndarray:
    """Samples whose top probability is below ``threshold`` (they go to the next stage)."""
    return np.asarray(max_confidence(probabilities)) < threshold


def routes_to_candidate(counter: int, fraction: float) -> bool:
    """Deterministic split: request ``counter`` (0, 1, 2, ...) goes to the candidate when the
    running share would otherwise fall behind ``fraction``; over any ``n`` consecutive
    requests the candidate gets ``floor`` or ``ceil`` of ``n * fraction``."""
    if not 0.0 <= fraction <= 1.0:
        raise FusionError(f"candidate fraction must be in [0, 1], got {fraction}")
    return int((counter + 1) * fraction + 1e-9) > int(counter * fraction + 1e-9)
