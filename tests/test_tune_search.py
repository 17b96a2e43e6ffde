"""tune's search space, hill climb and winner choice: pure functions, no server."""

from __future__ import annotations

import math

import pytest

from tritonfleet.builder.lifecycle.tune.search import Goal, Measurement, better, quick_search
from tritonfleet.builder.lifecycle.tune.space import (
    ModelInfo,
    Settings,
    apply_settings,
    build_space,
    knob_values,
    read_settings,
)

MEMBER = Settings(instances=1, max_batch_size=64, delay_us=200, preferred=(), threads=1)
FUSION = Settings(instances=1, max_batch_size=64, delay_us=200, preferred=(), threads=None)


def ok(throughput: float, p99: float = 10.0) -> Measurement:
    return Measurement(throughput, p99, stable=True)


# --------------------------------------------------------------------------- settings <-> config
def test_settings_round_trip_through_a_config():
    from tritonfleet.clients.model_config import parse_pbtxt, to_pbtxt

    text = """name: "m" backend: "python" max_batch_size: 64
      instance_group { count: 1 kind: KIND_CPU }
      dynamic_batching { max_queue_delay_microseconds: 200 }
      parameters { key: "intra_op_threads" value { string_value: "1" } }
      parameters { key: "onnx_file" value { string_value: "model.onnx" } }"""
    proto = parse_pbtxt(text)
    assert read_settings(proto) == MEMBER
    tuned = Settings(instances=3, max_batch_size=128, delay_us=1000, preferred=(8,), threads=2)
    out = apply_settings(proto, tuned)
    assert read_settings(parse_pbtxt(to_pbtxt(out))) == tuned
    assert out.parameters["onnx_file"].string_value == "model.onnx"       # nothing else changes
    assert read_settings(proto) == MEMBER                                 # the input is not modified
    off = apply_settings(proto, Settings(1, 64, None, (), 1))
    assert not off.HasField("dynamic_batching")


# --------------------------------------------------------------------------- the space
def test_values_keep_the_contract_and_say_why_a_knob_is_skipped():
    info = ModelInfo("m", MEMBER)
    assert knob_values("instances", info, load=8, max_instances=4, cpus=2) == ((1, 2, 3, 4), None)
    assert knob_values("threads", info, load=8, max_instances=4, cpus=2) == ((1, 2), None)
    assert knob_values("preferred", info, load=8, max_instances=4, cpus=2) == (((), (2,), (4,), (8,)), None)
    values, why = knob_values("max_batch_size", info, load=8, max_instances=4, cpus=2)
    assert values == () and "not more than the default 64" in why          # never below the default
    assert knob_values("max_batch_size", info, load=200, max_instances=4, cpus=2) == ((64, 128, 256), None)
    values, why = knob_values("max_batch_size", ModelInfo("p", MEMBER, fixed_max_batch=True), 200, 4, 2)
    assert values == () and "TensorRT" in why
    assert knob_values("threads", ModelInfo("f", FUSION), 8, 4, 2) == ((), "no runner thread parameter")
    assert knob_values("delay_us", ModelInfo("n", Settings(1, 0, None, (), 1)), 8, 4, 2)[0] == ()
    assert knob_values("delay_us", ModelInfo("o", Settings(1, 8, None, (), 1)), 8, 4, 2)[0][0] is None  # off first


def test_an_ensemble_space_moves_its_steps_jointly_first():
    space = build_space("ens", [ModelInfo("a", MEMBER), ModelInfo("b", replace_(MEMBER, instances=2)),
                                ModelInfo("fusion", FUSION)], load=8)
    joint = [d for d in space.dimensions if len(d.models) > 1]
    assert [d.knob for d in joint] == ["instances", "delay_us", "preferred", "threads"]
    assert space.dimensions[: len(joint)] == tuple(joint)
    assert space.settings_at(space.origin) == {"a": MEMBER, "b": replace_(MEMBER, instances=2), "fusion": FUSION}
    up = space.settings_at((1,) + (0,) * (len(space.dimensions) - 1))
    assert (up["a"].instances, up["b"].instances, up["fusion"].instances) == (2, 3, 2)  # each along its own list
    threads = next(i for i, d in enumerate(joint) if d.knob == "threads")
    assert joint[threads].models == ("a", "b")                               # the fusion step has no threads
    # clipped at the ends: b reaches 4 first, a step on still moves a, then no step changes anything
    def at(offset):
        return tuple(offset if i == 0 else 0 for i in range(len(space.dimensions)))

    assert (space.settings_at(at(2))["a"].instances, space.settings_at(at(2))["b"].instances) == (3, 4)
    assert space.step(at(2), 0, +1) == at(3) and space.settings_at(at(3))["a"].instances == 4
    assert space.step(at(3), 0, +1) is None
    assert "a: instances 1->2" in space.describe((1,) + (0,) * (len(space.dimensions) - 1))
    assert space.describe(space.origin) == "default"
    assert any("fusion: runner threads not searched" in s for s in space.skipped)


def replace_(settings: Settings, **changes) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)


# --------------------------------------------------------------------------- better / decisions
def test_better_under_budget_objective_and_margin():
    goal = Goal("throughput", latency_budget_ms=20.0, min_gain=0.05)
    assert better(ok(110), ok(100), goal) and not better(ok(104), ok(100), goal)   # a tie keeps the current
    assert not better(ok(200, p99=25), ok(100), goal)                              # over budget
    assert better(ok(50, p99=15), ok(300, p99=30), goal)                           # feasible beats infeasible
    assert better(ok(50, p99=22), ok(300, p99=30), goal)                           # both over: lower p99
    unstable = Measurement(500, 5.0, stable=False)
    assert not better(unstable, ok(100), goal) and better(ok(1), unstable, goal)   # never chosen
    assert not better(Measurement(500, 5.0, True, errors=3), ok(100), goal)
    assert not better(Measurement.failed("failed to load: x"), ok(100), goal)
    latency = Goal("latency", None, 0.05)
    assert better(ok(10, p99=9), ok(100, p99=10), latency) and not better(ok(500, p99=9.8), ok(100, 10), latency)
    assert Goal().resolved(ok(100, p99=12.5)).latency_budget_ms == 12.5          # default budget: default's p99
    assert Goal(latency_budget_ms=3.0).resolved(ok(100, p99=12.5)).latency_budget_ms == 3.0


def surface(space, best: dict[str, Settings], peak: float = 200.0):
    """A synthetic measure: throughput falls with the distance to ``best`` (in list steps)."""
    calls = []

    def measure(coordinate):
        calls.append(coordinate)
        settings = space.settings_at(coordinate)
        distance = sum(abs(_index(space, name, knob, getattr(s, knob)) - _index(space, name, knob,
                                                                                   getattr(best[name], knob)))
                       for name, s in settings.items() for knob in ("instances", "delay_us", "preferred", "threads")
                       if _has(space, name, knob))
        return ok(peak / (1 + distance), p99=8.0 * (1 + distance) / 4)

    return measure, calls


def _has(space, name, knob):
    return any(d.knob == knob and name in d.models for d in space.dimensions)


def _index(space, name, knob, value):
    dim = next(d for d in space.dimensions if d.knob == knob and name in d.models)
    return dim.values[name].index(value)


def test_quick_search_climbs_to_the_optimum_within_its_budget():
    space = build_space("m", [ModelInfo("m", MEMBER)], load=8)
    target = {"m": Settings(3, 64, 500, (), 1)}
    measure, calls = surface(space, target)
    result = quick_search(space, measure, budget=30, goal=Goal(min_gain=0.05))
    assert result.winner.settings == target and result.improved
    assert len(calls) == len(set(calls)) == len(result.trials) <= 30                # nothing measured twice
    assert result.trials[0].label == "default" and result.trials[0].settings == {"m": MEMBER}
    assert result.stopped.startswith("local optimum")
    commit, why = result.decision()
    assert commit and why.startswith(f"winner #{result.winner.index}")

    small = quick_search(space, surface(space, target)[0], budget=3, goal=Goal())
    assert len(small.trials) == 3 and small.stopped == "budget of 3 candidates used"


def test_ties_keep_the_default_and_it_says_so():
    space = build_space("m", [ModelInfo("m", MEMBER)], load=8)
    result = quick_search(space, lambda c: ok(100.0 + 2 * sum(c), p99=10.0), budget=6, goal=Goal(min_gain=0.05))
    assert not result.improved and result.winner.index == 0
    commit, why = result.decision()
    assert not commit and why.startswith("the default is already best on this machine")


def test_unstable_or_failed_candidates_are_never_chosen():
    space = build_space("m", [ModelInfo("m", MEMBER)], load=8)

    def measure(coordinate):
        if coordinate == space.origin:
            return ok(100)
        if coordinate[0] == 1:
            return Measurement(900, 2.0, stable=False)   # looks great, but unstable
        return Measurement.failed("failed to load: preferred batch size above max_batch_size")

    result = quick_search(space, measure, budget=5, goal=Goal())
    assert result.winner.index == 0
    assert [result.verdict(t) for t in result.trials[1:3]] == ["unstable",
                                                              "failed to load: preferred batch size above max_batch_size"]


def test_no_commit_without_a_sound_default_or_within_no_budget():
    space = build_space("m", [ModelInfo("m", MEMBER)], load=8)
    shaky = quick_search(space, lambda c: ok(300) if any(c) else Measurement(100, 10, stable=False), 3, Goal())
    assert shaky.improved and shaky.decision()[0] is False
    assert "default's measurement is not usable (unstable)" in shaky.decision()[1]
    tight = quick_search(space, lambda c: ok(100 + 50 * sum(c), p99=40 - sum(c)), 4, Goal(latency_budget_ms=5.0))
    commit, why = tight.decision()
    assert not commit and "no candidate met the p99 latency budget (5.00 ms)" in why
    assert math.isclose(tight.goal.latency_budget_ms, 5.0)


def test_a_model_with_nothing_to_tune_measures_only_the_default():
    space = build_space("m", [ModelInfo("m", Settings(None, 0, None, (), None))], load=8)
    result = quick_search(space, lambda c: ok(100), budget=8, goal=Goal())
    assert len(result.trials) == 1 and result.stopped.startswith("nothing to search")
    with pytest.raises(ValueError):
        quick_search(space, lambda c: ok(1), budget=0, goal=Goal())
