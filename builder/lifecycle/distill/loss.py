"""The distillation objective (Hinton et al., 2015), in numpy (the definition) and torch (training).

The teacher is an ensemble that answers **probabilities** ``p`` (a mean of softmaxes, a weighted
mean, stacking, ...), not logits. Its soft targets at temperature ``T`` are

    q_T = softmax(log p / T)          (= p^(1/T), renormalised per sample)

which is the usual ``softmax(z / T)`` for any logits ``z`` with ``p = softmax(z)``, since ``log p``
equals ``z`` up to a per-sample constant. Probabilities of exactly 0 (hard-vote shares) are
clipped to ``1e-12`` first. ``T > 1`` flattens the targets (the teacher's ranking of the wrong
classes becomes visible), ``T = 1`` keeps them, ``T < 1`` sharpens them.

The student's loss on a batch of logits ``s`` with labels ``y``:

    loss = alpha * T^2 * KL(q_T || softmax(s / T)) + (1 - alpha) * CE(softmax(s), y)

averaged over the batch; ``T^2`` keeps the soft term's gradients on the scale of the hard term's
as ``T`` changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

EPS = 1e-12


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def soft_targets(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """The teacher's probabilities ``[samples, classes]`` at ``temperature``: ``softmax(log p / T)``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"teacher probabilities must be finite, >= 0 and shaped [samples, classes] "
                         f"(got shape {list(p.shape)})")
    return np.exp(_log_softmax(np.log(np.clip(p, EPS, None)) / temperature)).astype(np.float32)


def distillation_loss_np(student_logits: np.ndarray, targets: np.ndarray, labels: np.ndarray,
                         temperature: float, alpha: float) -> float:
    """The loss in float64 numpy (the reference the torch version is tested against)."""
    s = np.asarray(student_logits, dtype=np.float64)
    q = np.asarray(targets, dtype=np.float64)
    log_student_t = _log_softmax(s / temperature)
    kl = np.where(q > 0, q * (np.log(np.where(q > 0, q, 1.0)) - log_student_t), 0.0).sum(axis=1).mean()
    ce = -_log_softmax(s)[np.arange(len(s)), np.asarray(labels, dtype=np.int64)].mean()
    return float(alpha * temperature ** 2 * kl + (1 - alpha) * ce)


def distillation_loss(student_logits: Any, targets: Any, labels: Any, temperature: float, alpha: float) -> Any:
    """The same loss on torch tensors (differentiable): logits ``[B, C]``, soft targets ``[B, C]``
    from :func:`soft_targets`, labels ``[B]`` int64."""
    import torch.nn.functional as F

    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1), targets, reduction="batchmean")
    hard = F.cross_entropy(student_logits, labels)
    return alpha * temperature ** 2 * soft + (1 - alpha) * hard
