"""The quick search and the choice of a winner (pure: a measure function goes in).

In the spirit of Model Analyzer's quick search (a hill climb over a coordinate space from a
starting configuration, instead of the full grid), but starting from the model's *current*
configuration and taking the first improvement: from the best configuration so far, step
along each dimension in turn (up, then down), keep going while each step is better, and
start another pass over the dimensions after any move. It stops at a local optimum (a pass
without a move) or when ``budget`` configurations have been measured, whichever is first;
coordinates that give every model the same settings are measured once.

"Better" (:func:`better`) is decided under a :class:`Goal`:

* a measurement is **valid** when it met the stability rule, had no errors, and the candidate
  loaded and answered like the default; invalid ones are flagged and never chosen;
* it is **feasible** when it is valid and its p99 latency is within the budget
  (``--latency-budget-ms``; without one, the default's own p99: a winner is never slower at p99);
* among feasible ones the objective decides (throughput up, or p99 down) by more than
  ``min_gain`` (a relative margin: measurements are noisy, and a tie keeps the default).
  An infeasible configuration beats another infeasible one by a lower p99, so the search
  walks toward the budget when the default misses it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tritonfleet.builder.lifecycle.tune.space import SearchSpace, Settings

Objective = Literal["throughput", "latency"]


@dataclass(frozen=True)
class Measurement:
    throughput: float          # inferences (samples) per second
    p99_ms: float
    stable: bool
    errors: int = 0
    p50_ms: float = math.nan
    problem: str | None = None  # failed to load, or answered differently from the default

    @property
    def valid(self) -> bool:
        return (self.problem is None and self.stable and self.errors == 0 and self.throughput > 0
                and math.isfinite(self.p99_ms))

    def flag(self) -> str:
        """Why the measurement cannot be chosen ('' when it can)."""
        if self.problem:
            return self.problem
        if self.errors:
            return f"{self.errors} errors"
        if not self.stable:
            return "unstable"
        return "" if self.valid else "no successful requests"

    def to_dict(self) -> dict[str, Any]:
        def finite(x: float) -> float | None:
            return x if math.isfinite(x) else None

        return {"throughput": self.throughput, "p99_ms": finite(self.p99_ms), "p50_ms": finite(self.p50_ms),
                "stable": self.stable, "errors": self.errors, "problem": self.problem}

    @classmethod
    def failed(cls, problem: str) -> Measurement:
        return cls(0.0, math.nan, False, 0, math.nan, problem)


@dataclass(frozen=True)
class Goal:
    objective: Objective = "throughput"
    latency_budget_ms: float | None = None  # None until resolved: the default's p99
    min_gain: float = 0.05

    def resolved(self, default: Measurement) -> Goal:
        """The budget made concrete: the given one, else the default's measured p99."""
        if self.latency_budget_ms is not None or not math.isfinite(default.p99_ms):
            return self
        return replace(self, latency_budget_ms=default.p99_ms)

    def feasible(self, m: Measurement) -> bool:
        return m.valid and (self.latency_budget_ms is None or m.p99_ms <= self.latency_budget_ms)


def better(a: Measurement, b: Measurement, goal: Goal) -> bool:
    """Whether ``a`` is clearly better than ``b`` under ``goal``."""
    if not a.valid:
        return False
    if not b.valid:
        return True
    fa, fb = goal.feasible(a), goal.feasible(b)
    if fa != fb:
        return fa
    if not fa or goal.objective == "latency":
        return a.p99_ms < b.p99_ms * (1 - goal.min_gain)
    return a.throughput > b.throughput * (1 + goal.min_gain)


@dataclass(frozen=True)
class Trial:
    index: int                        # order of measurement; 0 is the default
    coordinate: tuple[int, ...]
    settings: dict[str, Settings]     # model -> settings
    label: str                        # what it changes against the default
    measurement: Measurement


@dataclass
class SearchResult:
    trials: list[Trial]
    goal: Goal                        # resolved: its budget is concrete when the default had a p99
    winner: Trial                     # the default when nothing beat it
    budget: int
    stopped: str                      # why the search ended
    skipped: Sequence[str] = field(default_factory=tuple)

    @property
    def default(self) -> Trial:
        return self.trials[0]

    @property
    def improved(self) -> bool:
        return self.winner.index != 0

    def decision(self) -> tuple[bool, str]:
        """(commit the winner?, why), in words for the report."""
        default, winner, goal = self.default.measurement, self.winner.measurement, self.goal
        budget = f"{goal.latency_budget_ms:.2f} ms" if goal.latency_budget_ms is not None else "none"
        if not default.valid:
            return False, (f"the default's measurement is not usable ({default.flag()}): without a sound baseline "
                           "nothing is committed; measure longer (--window, --max-windows) on a quieter machine")
        if not goal.feasible(winner):
            return False, (f"no candidate met the p99 latency budget ({budget}); the best p99 measured was "
                           f"{min(t.measurement.p99_ms for t in self.trials if t.measurement.valid):.2f} ms")
        if not self.improved:
            what = "throughput" if goal.objective == "throughput" else "p99 latency"
            return False, (f"the default is already best on this machine: no candidate improved {what} by more than "
                           f"{goal.min_gain:.0%} within the p99 budget ({budget})")
        if goal.objective == "throughput":
            gain = f"{winner.throughput / default.throughput:.2f}x the default's throughput"
        else:
            gain = f"p99 {winner.p99_ms:.2f} ms vs the default's {default.p99_ms:.2f} ms"
        return True, f"winner #{self.winner.index} ({self.winner.label}): {gain}"

    def verdict(self, trial: Trial) -> str:
        m = trial.measurement
        if trial.index == self.winner.index:
            return "winner (default)" if trial.index == 0 else "winner"
        if not m.valid:
            return m.flag()
        if not self.goal.feasible(m):
            return "over latency budget"
        return "default" if trial.index == 0 else ""


def quick_search(space: SearchSpace, measure: Callable[[tuple[int, ...]], Measurement], budget: int,
                 goal: Goal, on_trial: Callable[[Trial], None] = lambda trial: None) -> SearchResult:
    """Measure the default, then hill-climb (first improvement) within ``budget`` measurements."""
    if budget < 1:
        raise ValueError("budget must be >= 1")
    trials: list[Trial] = []
    seen: dict[tuple, Trial] = {}

    def evaluate(coordinate: tuple[int, ...]) -> Trial:
        trial = Trial(len(trials), coordinate, space.settings_at(coordinate), space.describe(coordinate),
                      measure(coordinate))
        trials.append(trial)
        seen[space.key(coordinate)] = trial
        on_trial(trial)
        return trial

    best = evaluate(space.origin)
    goal = goal.resolved(best.measurement)
    stopped = "local optimum: no step along any dimension was better"
    if not space.dimensions:
        stopped = "nothing to search (every knob is fixed for this model)"
    moved = bool(space.dimensions)
    while moved:
        moved = False
        for d in range(len(space.dimensions)):
            for direction in (1, -1):
                went = False
                while len(trials) < budget:
                    coordinate = space.step(best.coordinate, d, direction)
                    if coordinate is None or space.key(coordinate) in seen:
                        break
                    trial = evaluate(coordinate)
                    if not better(trial.measurement, best.measurement, goal):
                        break
                    best, went, moved = trial, True, True
                if went:
                    break  # the other direction leads back where it came from
            if len(trials) >= budget:
                break
        if len(trials) >= budget:
            stopped = f"budget of {budget} candidates used"
            break
    return SearchResult(trials, goal, best, budget, stopped, space.skipped)
