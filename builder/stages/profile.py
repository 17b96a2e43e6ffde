"""The reference profile of a pipeline's traffic: what it answers on ``data.validation``.

Computed at build time from what Triton will compute (the served variants' outputs, fused by
the same ``ops.py``; a cascade's early exits and a route's split replayed as the BLS model
does them) and binned by ``runtime/tritonfleet_monitoring.py``, the file the served pipeline
model bins its traffic with. ``tritonfleet monitor`` and the alert rules compare live bin
counts with it (PSI per input summary, KS on confidence).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tritonfleet.builder.runtime import ops
from tritonfleet.builder.runtime.tritonfleet_monitoring import member_argmax, reference_profile
from tritonfleet.builder.spec import MemberSpec, PipelineSpec
from tritonfleet.builder.spec.monitoring import publishes_metrics

# member -> its output arrays on data.validation, as the served variant computes them
OutputsOf = Callable[[MemberSpec], Mapping[str, np.ndarray]]


def pipeline_profile(spec: PipelineSpec, inputs: Sequence[np.ndarray], outputs_of: OutputsOf,
                     fusion: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """The profile of ``spec``'s pipeline model on the validation ``inputs`` (None when the
    pipeline publishes no metrics); ``fusion``: the fusion step's parameters (with fitted ones)."""
    if not publishes_metrics(spec):
        return None
    probs, argmaxes = served_answers(spec, outputs_of, fusion)
    watched = {t.name: x for t, x in zip(spec.inputs, inputs)} if spec.monitoring.inputs else {}
    return reference_profile(probs, watched, argmaxes, spec.monitoring.bins)


def served_answers(spec: PipelineSpec, outputs_of: OutputsOf,
                   fusion: Mapping[str, Any] | None = None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(fused probabilities ``[n, classes]``, members' arg-max ``[members, n]`` with ``-1`` where
    a stage did not run) of the pipeline model; ``(None, None)`` when a stage is not a model of
    this spec (another pipeline's model: its answers are known only to the server)."""
    f = spec.fusion
    if spec.fusion_kind == "classification":
        scores = [outputs_of(m)[spec.fused_output(m).name] for m in spec.fused_members]
        fused = ops.fuse(fusion or {}, scores)
        return np.asarray(fused["probabilities"]), member_argmax(scores)
    if any(spec.stage_output(ref) is None for ref in f.refs):
        return None, None
    stage_probs = [ops.to_probabilities(outputs_of(spec.model(ref.model))[spec.stage_output(ref).name], ref.activation)
                   for ref in (f.stages if f.type == "cascade" else (f.current, f.candidate))]
    if f.type == "cascade":
        return cascade_answers(stage_probs, f.thresholds)
    return route_answers(stage_probs[0], stage_probs[1], f.candidate_fraction, f.shadow)


def cascade_answers(stage_probs: Sequence[np.ndarray], thresholds: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """What ``cascade_model.py`` answers: stage ``s`` keeps the samples whose top probability
    reaches ``thresholds[s]``, the last stage the rest."""
    n = len(stage_probs[0])
    probs = np.zeros_like(np.asarray(stage_probs[0], dtype=np.float32))
    argmaxes = np.full((len(stage_probs), n), -1, np.int64)
    pending = np.arange(n)
    for s, p in enumerate(stage_probs):
        p = np.asarray(p)[pending]
        argmaxes[s, pending] = p.argmax(axis=1)
        done = np.ones(len(pending), bool) if s == len(stage_probs) - 1 else ~ops.escalate_mask(p, thresholds[s])
        probs[pending[done]] = p[done]
        pending = pending[~done]
        if len(pending) == 0:
            break
    return probs, argmaxes


def route_answers(current: np.ndarray, candidate: np.ndarray, fraction: float,
                  shadow: bool) -> tuple[np.ndarray, np.ndarray]:
    """What ``route_model.py`` answers when each sample is one request, in order: the
    candidate's answer for the requests its exact split sends there, the current model's for
    the rest; shadowed requests (current-routed, with ``shadow``) compare both."""
    to_candidate = np.array([ops.routes_to_candidate(i, fraction) for i in range(len(current))], bool)
    probs = np.where(to_candidate[:, None], candidate, current)
    argmaxes = np.stack([np.asarray(current).argmax(axis=1), np.asarray(candidate).argmax(axis=1)])
    argmaxes[1, to_candidate | (not shadow)] = -1  # compared only where the candidate shadowed
    return probs, argmaxes
