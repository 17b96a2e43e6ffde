"""The rules every bench script follows, as pure functions (issue 12 items 2, 5, 6, 7):
ABBA order, one rule for unstable rounds on both sides, ratios with their spread, verdicts that
need the numbers to support them, headline rows written from recorded JSON, and accuracy
intervals that count both the test samples and the training seeds."""

from __future__ import annotations

import json
import math
import sys
import time

import numpy as np
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import headlines  # noqa: E402

from tritonfleet.clients.errors import UsageError  # noqa: E402
from tritonfleet.clients.evaluation.replicates import (  # noqa: E402
    accuracy_interval,
    choose_best,
    difference_interval,
    interval_verdict,
)

import common  # noqa: E402


def test_abba_order_alternates_every_round():
    assert [s for _, s in common.abba_rounds(["A", "B"], 4)] == list("ABBAABBA")
    assert list(common.abba_rounds(["A", "B", "C"], 2)) == [(0, "A"), (0, "B"), (0, "C"), (1, "C"), (1, "B"), (1, "A")]
    with pytest.raises(ValueError):
        list(common.abba_rounds(["A", "B"], 0))


def test_an_unstable_round_is_excluded_for_both_sides():
    calls = []
    values = {("A", 0): 100.0, ("B", 0): 50.0, ("A", 1): 90.0, ("B", 1): 60.0, ("A", 2): 120.0, ("B", 2): 40.0,
              ("A", 3): 100.0, ("B", 3): 45.0}

    def measure(side, r):
        calls.append((r, side))
        return common.Sample(values[side, r], stable=not (side == "B" and r == 1))

    run = common.run_abba(measure, ["A", "B"], 4)
    assert calls == [(0, "A"), (0, "B"), (1, "B"), (1, "A"), (2, "A"), (2, "B"), (3, "B"), (3, "A")]
    assert run.kept() == [0, 2, 3] and run.excluded == 1
    assert run.values("A") == [100.0, 120.0, 100.0]  # A's round 1 was stable, but B's was not: both go
    assert run.ratio("A", "B") == {"median": 100 / 45, "min": 2.0, "max": 3.0, "n": 3}
    assert run.kept_text() == "3 of 4 (unstable: B 1)"
    data = json.loads(json.dumps(run.to_dict()))
    assert data["excluded"] == 1 and data["rounds"][1]["B"] == {"value": 60.0, "stable": False}


def test_ratio_summary_and_its_text():
    s = common.ratio_summary([1.2, 0.9, 1.0, math.nan])
    assert s == {"median": 1.0, "min": 0.9, "max": 1.2, "n": 3}
    assert common.fmt_ratio(s) == "1.00 [0.90–1.20], n=3"
    assert common.ratio_summary([])["n"] == 0 and common.fmt_ratio(common.ratio_summary([])) == "- (no round kept)"
    assert common.self_spread([100.0, 123.0, 110.0]) == pytest.approx(1.23)
    assert math.isnan(common.self_spread([1.0]))


def test_goal_verdict_needs_every_round_on_the_goals_side():
    assert common.goal_verdict({"median": 0.9, "min": 0.86, "max": 0.95, "n": 4}, 0.85) == "met"
    assert common.goal_verdict({"median": 0.7, "min": 0.6, "max": 0.8, "n": 4}, 0.85) == "missed"
    assert (common.goal_verdict({"median": 0.9, "min": 0.80, "max": 0.95, "n": 4}, 0.85)
            == "missed: rounds straddle the goal (0.80–0.95)")
    assert common.goal_verdict({"median": 2.0, "min": 1.0, "max": 4.0, "n": 3}, 5.0, higher=False) == "met"
    assert common.goal_verdict({"n": 0}, 1.5).startswith("no verdict")


def test_no_verdict_while_perf_analyzers_own_spread_exceeds_the_goal():
    from loadgen_vs_perf_analyzer import verdict

    on_goal = {"median": 1.0, "min": 0.99, "max": 1.01, "n": 6}
    assert verdict(on_goal, 1.14, 0.05) == "no verdict: perf_analyzer's own spread 1.14 exceeds the goal (1 ± 0.05)"
    assert verdict(on_goal, 1.04, 0.05) == "met"
    assert verdict({"median": 0.86, "min": 0.8, "max": 0.9, "n": 6}, 1.03, 0.05) == "missed"
    assert verdict({"median": 1.0, "min": 1.0, "max": 1.0, "n": 1}, 1.0, 0.05).startswith("no verdict: fewer than 2")
    assert verdict(on_goal, math.nan, 0.05).startswith("no verdict")


def test_timed_windows_uses_the_stability_rule():
    sample = common.timed_windows(lambda: time.sleep(0.002), 4, 0.05, 4, warmup_s=0.01)
    assert 3 <= sample.extra["windows"] <= 4 and 0 < sample.value < 4 / 0.002
    assert sample.stable == (max(sample.extra["spread"]) <= 1.1)


def test_headlines_are_written_from_the_recorded_json(tmp_path):
    results = tmp_path / "bench"
    common.write_results("ensemble_vs_client", "Server-side ensemble vs client-side fusion", "python bench/x.py",
                         {"n": 1}, [common.headline("ensemble ÷ client", "1.20 [1.10–1.30], n=6", ">= 1.5×", "missed")],
                         folder=results)
    common.write_results("soak", "Soak", "python bench/soak.py", {}, None, folder=results)
    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# B\n\nintro\n\n<!-- headlines:begin -->\nold numbers\n<!-- headlines:end -->\n\n## rest\nkept\n")
    headlines.record_headlines(doc, results)
    text = doc.read_text()
    assert "old numbers" not in text and text.startswith("# B\n\nintro\n") and text.endswith("## rest\nkept\n")
    rows = [line for line in text.splitlines() if line.startswith("| ")][2:]
    assert rows[0].startswith("| fp16 / int8 accuracy cost through the server | not recorded yet |")
    assert any(r.startswith("| ensemble ÷ client | 1.20 [1.10–1.30], n=6 | >= 1.5× | missed |") for r in rows)
    assert any("recorded; no headline declared" in r for r in rows if r.startswith("| soak:"))
    order = [r.split(" | ")[0] for r in rows]
    assert order.index("| ensemble ÷ client") < order.index("| soak: failures and memory over a long run")


def test_accuracy_interval_counts_samples_and_seeds():
    perfect = accuracy_interval(np.ones((3, 100), bool), resamples=200)
    assert (perfect.estimate, perfect.low, perfect.high) == (100.0, 100.0, 100.0)
    rng = np.random.default_rng(1)
    one = accuracy_interval(rng.random(360) < 0.7, resamples=2000)
    assert one.replicates == 1 and 3.5 < (one.high - one.low) / 2 < 6  # ~1.96 x 2.4 pt at 70 % of 360
    # the same mean (70 %) from two seeds that disagree (90 % and 50 %): the seeds widen the interval
    seeds = np.stack([rng.random(2000) < 0.9, rng.random(2000) < 0.5])
    wide = accuracy_interval(seeds, resamples=2000)
    assert wide.high - wide.low > 20


def test_difference_interval_gives_a_verdict_only_when_it_excludes_zero():
    rng = np.random.default_rng(2)
    truth = rng.random((1, 2000))
    better, worse = truth < 0.9, truth < 0.6  # same samples: better is right wherever worse is
    d = difference_interval(better, worse, resamples=1000)
    assert d.estimate == pytest.approx(100 * (better.mean() - worse.mean())) and interval_verdict(d) == "higher"
    assert interval_verdict(difference_interval(worse, better, resamples=1000)) == "lower"
    # a one-point edge from two seeds that disagree by 40 points: no verdict
    a = np.stack([rng.random(2000) < 0.91, rng.random(2000) < 0.51])
    b = np.stack([rng.random(2000) < 0.70, rng.random(2000) < 0.70])
    assert interval_verdict(difference_interval(a, b, resamples=1000)) == "no verdict"
    with pytest.raises(UsageError, match="same samples"):
        difference_interval(np.ones((1, 5), bool), np.ones((1, 6), bool))


def test_ensemble_size_is_chosen_on_validation_ties_to_fewer_members():
    assert choose_best({2: [0.80, 0.82], 3: [0.84, 0.80], 4: [0.83, 0.81]}) == 3  # means 0.81, 0.82, 0.82: tie -> 3
    assert choose_best({2: [0.80], 3: [0.85], 4: [0.85]}) == 3
    with pytest.raises(UsageError):
        choose_best({})


def test_small_vs_large_claim_needs_both_accuracy_and_speed():
    from small_vs_large import claim

    assert claim("higher", "higher") == "met"
    assert claim("higher", "lower") == "missed: slower"
    assert claim("no verdict", "higher") == "missed: accuracy not shown higher (CI includes 0)"
    assert claim("lower", "no verdict") == "missed: less accurate, throughput not shown higher"


def test_precision_goal_verdict_from_the_interval():
    from precision_served import verdict

    assert verdict(0.0, 0.0, 0.1) == "met"
    assert verdict(-0.3, 0.8, 1.0) == "met"
    assert verdict(0.2, 1.4, 1.0) == "no verdict: CI straddles the goal"
    assert verdict(1.1, 2.0, 1.0) == "missed"


def test_every_number_in_the_benchmarks_doc_is_in_a_section_a_script_writes():
    import re

    text = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    blocks = re.findall(r"<!-- (\w+):begin -->\n(.*?)\n<!-- \1:end -->", text, re.S)
    assert {"headlines", "precision_served", "loadgen_vs_pa", "small_vs_large"} <= {k for k, _ in blocks}
    for key, body in blocks:
        if key == "headlines":
            assert body.startswith("Written by `python bench/headlines.py --record`"), body[:80]
        else:  # recorded (the command that wrote it) or a placeholder without measured numbers
            assert body.startswith(("Command: `python bench/", "Not recorded yet")), (key, body[:80])
    outside = re.sub(r"<!-- (\w+):begin -->.*?<!-- \1:end -->", "", text, flags=re.S)
    outside = re.sub(r"```.*?```", "", outside, flags=re.S)
    outside = re.sub(r"`[^`]*`", "", outside)
    assert re.findall(r".{0,30}\d.{0,30}", outside) == []  # no number typed by hand around the sections
