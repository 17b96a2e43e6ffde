"""The promotion decision: every criterion of the policy with its value, threshold and outcome.

Pure functions over measured numbers (no Triton): :func:`summarize_rounds` turns the load runs
of one version into a median with its spread, :func:`decide` applies a
:class:`~tritonfleet.builder.spec.promotion.PromotionPolicy`. A criterion whose threshold is
``null`` is *reported only*; one that was not measured (``--skip-load``) is *skipped*; the
candidate is promoted when every criterion that was checked passes.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tritonfleet.builder.spec.promotion import PromotionPolicy
from tritonfleet.clients.evaluation.stats import AccuracyComparison

EPS = 1e-9  # gains are differences of means: 0.5 points may come out as 0.49999999999


@dataclass(frozen=True)
class LoadSummary:
    """One version over its load rounds: the median of the rounds, with their min and max."""

    rounds: int
    p50_ms: float
    p99_ms: float
    p99_range_ms: tuple[float, float]
    infer_per_s: float
    infer_per_s_range: tuple[float, float]
    errors: int
    stable_rounds: int  # rounds that met perf_analyzer's stability rule

    def to_dict(self) -> dict:
        return {**asdict(self), "p99_range_ms": list(self.p99_range_ms),
                "infer_per_s_range": list(self.infer_per_s_range)}


def summarize_rounds(p50_ms: Sequence[float], p99_ms: Sequence[float], infer_per_s: Sequence[float],
                     errors: Sequence[int], stable: Sequence[bool]) -> LoadSummary:
    if not p99_ms:
        raise ValueError("no load rounds to summarize")
    return LoadSummary(len(p99_ms), statistics.median(p50_ms), statistics.median(p99_ms),
                       (min(p99_ms), max(p99_ms)), statistics.median(infer_per_s),
                       (min(infer_per_s), max(infer_per_s)), int(sum(errors)), int(sum(stable)))


@dataclass(frozen=True)
class LoadComparison:
    current: LoadSummary
    candidate: LoadSummary
    order: tuple[str, ...]  # the versions in the order they ran: current, candidate, candidate, current, ...

    @property
    def latency_regression(self) -> float:
        """candidate p99 / current p99 - 1 (> 0: the candidate is slower)."""
        return self.candidate.p99_ms / self.current.p99_ms - 1.0

    @property
    def throughput_drop(self) -> float:
        """1 - candidate infer/s / current infer/s (> 0: the candidate serves less)."""
        return 1.0 - self.candidate.infer_per_s / self.current.infer_per_s

    def to_dict(self) -> dict:
        return {"current": self.current.to_dict(), "candidate": self.candidate.to_dict(), "order": list(self.order),
                "latency_regression": self.latency_regression, "throughput_drop": self.throughput_drop}


def abba_order(rounds: int) -> list[str]:
    """``current``/``candidate`` in alternating rounds: AB, BA, AB, ..."""
    order = []
    for i in range(rounds):
        pair = ["current", "candidate"]
        order += pair if i % 2 == 0 else pair[::-1]
    return order


@dataclass(frozen=True)
class Criterion:
    name: str
    value: float | int | None
    rule: str            # the threshold as text, e.g. ">= 0.00 pt"
    passed: bool | None  # None: skipped (not measured) or reported only
    note: str = ""

    @property
    def outcome(self) -> str:
        if self.passed is None:
            return self.note or "skipped"
        return "pass" if self.passed else "FAIL"


@dataclass(frozen=True)
class Verdict:
    promote: bool
    criteria: tuple[Criterion, ...]

    @property
    def failed(self) -> list[Criterion]:
        return [c for c in self.criteria if c.passed is False]

    def to_dict(self) -> dict:
        return {"promote": self.promote,
                "criteria": [{**asdict(c), "outcome": c.outcome} for c in self.criteria]}


def _limit(name: str, value: float | None, limit: float | None, rule: str, measured_note: str) -> Criterion:
    if value is None:
        return Criterion(name, None, rule if limit is not None else "reported only", None, measured_note)
    if limit is None:
        return Criterion(name, value, "reported only", None, "reported only")
    return Criterion(name, value, rule, value <= limit + EPS)


def decide(accuracy: AccuracyComparison, load: LoadComparison | None, policy: PromotionPolicy,
           skipped_load_note: str = "skipped (--skip-load)") -> Verdict:
    """Promote only when every checked criterion passes."""
    criteria = [Criterion("accuracy gain (pt)", accuracy.gain_pt, f">= {policy.min_gain_pt:+.2f}",
                          accuracy.gain_pt >= policy.min_gain_pt - EPS,
                          note=f"{accuracy.current_accuracy:.4f} -> {accuracy.candidate_accuracy:.4f}")]
    if policy.max_p_value is None:
        criteria.append(Criterion("McNemar p-value (exact)", accuracy.p_value, "reported only", None, "reported only"))
    else:
        criteria.append(Criterion("McNemar p-value (exact)", accuracy.p_value, f"<= {policy.max_p_value:g}",
                                  accuracy.p_value <= policy.max_p_value))
    low, high = accuracy.ci_pt
    criteria.append(Criterion(f"gain {accuracy.confidence:.0%} CI low (pt)", low, "reported only", None,
                              f"[{low:+.2f}, {high:+.2f}]"))
    regression = load.latency_regression if load else None
    drop = load.throughput_drop if load else None
    criteria.append(_limit("p99 latency regression", regression, policy.max_latency_regression,
                           f"<= {policy.max_latency_regression:+.2%}" if policy.max_latency_regression is not None
                           else "", skipped_load_note))
    criteria.append(_limit("throughput drop", drop, policy.max_throughput_drop,
                           f"<= {policy.max_throughput_drop:.2%}" if policy.max_throughput_drop is not None else "",
                           skipped_load_note))
    if load is None:
        criteria.append(Criterion("candidate errors under load", None, "== 0", None, skipped_load_note))
    else:
        criteria.append(Criterion("candidate errors under load", load.candidate.errors, "== 0",
                                  load.candidate.errors == 0))
    checked = [c for c in criteria if c.passed is not None]
    return Verdict(bool(checked) and all(c.passed for c in checked), tuple(criteria))
