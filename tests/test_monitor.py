"""Monitoring and drift: the pipeline models' metrics, the reference profile, PSI/KS, the alert
rules (promtool) and ``tritonfleet monitor`` against a real tritonserver.

The pure parts (bins, increments, PSI, KS, the build's replay of a cascade and a route) are
checked with known values. A small digits ensemble (two members, an input guard) is built and
served by a fresh server of this module: a known traffic pattern (clean test digits in requests
of known sizes, some bad requests) must show up exactly in ``monitor --once --json``; noisy
digits (σ=0.5, as bench/small_vs_large.py makes them) must raise the drift alerts on the
dashboard and in Prometheus' own evaluation of the generated rules (``promtool test rules``
fed with the counters the server exported), clean digits must not. The cascade and route
pipelines of the session server are checked on counter differences (tests run one at a time).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from tritonfleet.builder.lifecycle.alert_rules import RuleOptions, alert_rules
from tritonfleet.builder.lifecycle.deploy.promql import promtool, promtool_check
from tritonfleet.builder.runtime import tritonfleet_monitoring as mon
from tritonfleet.builder.stages.profile import cascade_answers, route_answers
from tritonfleet.clients.evaluation.drift import EPS, ks_binned, ks_samples, psi
from tritonfleet.clients.evaluation.monitor import Thresholds, dashboard, live_accuracy, read_labels
from tritonfleet.clients.manifest import Manifest
from tritonfleet.clients.metrics import Snapshot, scrape

from conftest import digits_spec_dict, settled_metrics, write_spec


# ---------------------------------------------------------------------------- drift math
def test_psi_of_known_distributions():
    assert psi([0.5, 0.5], [50, 50]) == pytest.approx(0.0, abs=1e-12)
    expected = (0.9 - 0.5) * np.log(0.9 / 0.5) + (0.1 - 0.5) * np.log(0.1 / 0.5)
    assert psi([0.5, 0.5], [90, 10]) == pytest.approx(expected, rel=1e-12)
    # an empty live bin counts as EPS, not as log(0)
    assert psi([0.5, 0.5], [100, 0]) == pytest.approx((1 - 0.5) * np.log(1 / 0.5) + (EPS - 0.5) * np.log(EPS / 0.5))
    assert psi([0.25, 0.25, 0.5], [1, 1, 2]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="3 live bins for 2 reference bins"):
        psi([0.5, 0.5], [1, 2, 3])


def test_binned_ks_is_scipys_when_samples_sit_on_edges_and_never_more():
    edges = [0.2, 0.5, 0.8]
    rng = np.random.default_rng(0)
    a = rng.choice(edges + [1.0], size=400, p=[0.1, 0.4, 0.3, 0.2])
    b = rng.choice(edges + [1.0], size=300, p=[0.3, 0.3, 0.2, 0.2])
    ref = mon.bin_counts(a, edges) / len(a)
    assert ks_binned(ref, mon.bin_counts(b, edges)) == pytest.approx(ks_samples(a, b), abs=1e-12)
    x, y = rng.normal(0, 1, 500), rng.normal(0.3, 1, 500)
    edges = mon.quantile_edges(x, 10)
    binned = ks_binned(mon.bin_counts(x, edges) / len(x), mon.bin_counts(y, edges))
    assert 0 < binned <= ks_samples(x, y) + 1e-12
    assert ks_binned([0.3, 0.7], [3, 7]) == pytest.approx(0.0, abs=1e-12)
    assert ks_binned([0.3, 0.7], [7, 3]) == pytest.approx(0.4)


# ---------------------------------------------------------------------------- what a batch adds
def test_bins_hold_the_upper_edge_and_nan_goes_last():
    edges = [0.2, 0.5]
    assert mon.bin_index([0.1, 0.2, 0.3, 0.5, 0.6, np.nan], edges).tolist() == [0, 0, 1, 1, 2, 2]
    assert mon.bin_counts([0.1, 0.2, 0.3, 0.5, 0.6, np.nan], edges).tolist() == [2, 2, 2]
    assert mon.quantile_edges(np.arange(1, 11), 5) == [2.8, 4.6, 6.4, 8.2]
    assert mon.quantile_edges(np.ones(20), 10) == [1.0]                   # ties collapse
    x = np.array([[[0.0, 1.0], [1.0, 0.0]], [[2.0, 2.0], [2.0, 2.0]]])      # two samples [2, 2]
    s = mon.summaries(x)
    assert s["mean"].tolist() == [0.5, 2.0] and s["std"].tolist() == [0.5, 0.0]


def _config(profile=None, classes=3, flush_s=mon.DEFAULT_FLUSH_S):
    return mon.runtime_config("p", classes, {"x": "monitor_x"}, profile, flush_s=flush_s)


def test_increments_of_a_known_batch():
    x = np.array([[0.0, 0.0], [1.0, 3.0], [5.0, 5.0], [2.0, 2.0]], np.float32)  # means 0, 2, 5, 2; stds 0, 1, 0, 0
    profile = {"bins": 3, "samples": 4, "classes": [0.5, 0.25, 0.25], "disagreement": 0.0,
               "confidence": {"edges": [0.5, 0.9], "fractions": [0.25, 0.5, 0.25]},
               "inputs": {"x": {"mean": {"edges": [1.0, 2.0], "fractions": [0.25, 0.5, 0.25]},
                                "std": {"edges": [0.5], "fractions": [0.75, 0.25]}}}}
    probs = np.array([[0.95, 0.05, 0.0], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1], [0.1, 0.1, 0.8]])
    argmaxes = np.array([[0, 1, 1, 2], [0, 1, 0, 2], [0, 2, 1, 2]])  # samples 1 and 2 disagree
    inc = mon.increments(_config(profile), probs, {"x": x}, argmaxes)
    assert inc["predictions"].tolist() == [1, 2, 1]
    assert inc["confidence"].tolist() == [1, 2, 1]                # 0.5 -> bin 0 (upper edge); 0.7, 0.8; 0.95
    assert inc["inputs"][("x", "mean")].tolist() == [1, 2, 1]     # 0 | 2, 2 | 5
    assert inc["inputs"][("x", "std")].tolist() == [3, 1]
    assert (inc["compared"], inc["disagreed"]) == (4, 2)
    # a cascade: -1 where a stage did not run; only samples two stages answered are compared
    assert mon.disagreement(np.array([[3, 1, 4, 1], [-1, 1, 5, -1]])) == (2, 1)
    assert mon.disagreement(np.array([[3, 1]])) == (0, 0)
    # no reference: default confidence bins, no input bins
    plain = mon.increments(_config(None), probs, {"x": x})
    assert len(plain["confidence"]) == len(mon.DEFAULT_CONFIDENCE_EDGES) + 1 and plain["inputs"] == {}
    assert (plain["compared"], plain["disagreed"]) == (0, 0)


def test_reference_profile_is_deterministic_and_bins_its_own_data():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (300, 4))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    x = rng.normal(0.5, 0.2, (300, 1, 3, 3)).astype(np.float32)
    argmaxes = np.stack([probs.argmax(1), np.where(np.arange(300) % 10 == 0, 0, probs.argmax(1))])
    a = mon.reference_profile(probs, {"x": x}, argmaxes, bins=10)
    assert json.dumps(a, sort_keys=True) == json.dumps(mon.reference_profile(probs.copy(), {"x": x.copy()}, argmaxes,
                                                                             bins=10), sort_keys=True)
    assert a["samples"] == 300 and a["bins"] == 10 and len(a["classes"]) == 4
    assert a["classes"] == pytest.approx(np.bincount(probs.argmax(1), minlength=4) / 300, abs=1e-6)
    for binned in (a["confidence"], a["inputs"]["x"]["mean"], a["inputs"]["x"]["std"]):
        assert len(binned["edges"]) == 9 and len(binned["fractions"]) == 10
        assert sum(binned["fractions"]) == pytest.approx(1.0, abs=1e-5)
        assert all(0.05 < f < 0.15 for f in binned["fractions"])           # deciles: about a tenth each
    expected = np.mean(argmaxes[0] != argmaxes[1])
    assert a["disagreement"] == pytest.approx(expected, abs=1e-6)


class FakeMetricsAPI:
    """Records what a model does with the Python backend's metrics API (pure-function test)."""

    class MetricFamily:
        COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
        created: dict = {}
        calls: list = []

        def __init__(self, name, description, kind):
            self.name, self.kind = name, kind

        def Metric(self, labels):  # noqa: N802 - the backend's name
            family = self

            class _Metric:
                def increment(self, value):
                    FakeMetricsAPI.MetricFamily.calls.append((family.name, tuple(sorted(labels.items())), value))
                    key = (family.name, tuple(sorted(labels.items())))
                    FakeMetricsAPI.MetricFamily.created[key] += value

                def set(self, value):
                    FakeMetricsAPI.MetricFamily.created[(family.name, tuple(sorted(labels.items())))] = value

            FakeMetricsAPI.MetricFamily.created[(self.name, tuple(sorted(labels.items())))] = 0
            return _Metric()


def test_pipeline_metrics_create_every_series_and_count_a_batch_with_few_calls(tmp_path, monkeypatch):
    FakeMetricsAPI.MetricFamily.created, FakeMetricsAPI.MetricFamily.calls = {}, []
    monkeypatch.setenv(mon.PREDICTION_LOG_ENV, str(tmp_path))
    profile = {"bins": 3, "samples": 4, "classes": [0.5, 0.5], "disagreement": 0.0,
               "confidence": {"edges": [0.6, 0.9], "fractions": [0.2, 0.3, 0.5]},
               "inputs": {"x": {"mean": {"edges": [1.0], "fractions": [0.4, 0.6]},
                                "std": {"edges": [1.0], "fractions": [1.0, 0.0]}}}}
    metrics = mon.PipelineMetrics(FakeMetricsAPI, _config(profile, classes=2, flush_s=0), reasons=("fusion", "member"))
    created = FakeMetricsAPI.MetricFamily.created
    names = {name for name, _ in created}
    assert names == set(mon.FAMILIES)
    assert len([k for k in created if k[0] == "tritonfleet_confidence_bin_total"]) == 3
    assert len([k for k in created if k[0] == "tritonfleet_input_bin_total"]) == 4
    assert created[("tritonfleet_reference_confidence_fraction", (("bin", "2"), ("pipeline", "p")))] == 0.5
    assert all(v == 0 for k, v in created.items() if k[0].endswith("_total"))

    probs = np.array([[0.95, 0.05]] * 6 + [[0.3, 0.7]] * 2)
    x = np.full((8, 2), 2.0)
    metrics.answered(probs, lambda: {"x": x}, lambda: np.stack([probs.argmax(1), probs.argmax(1)]), requests=3,
                     ids=lambda: ["a", "b", ""], sizes=[1, 5, 2])
    metrics.error("member", 2)
    metrics.error("unknown")  # not a reason of this model: ignored
    calls = FakeMetricsAPI.MetricFamily.calls
    # one call per distinct label set, never per sample: requests, 2 classes, 2 confidence bins, 2 input bins,
    # compared (no disagreement), errors
    assert len(calls) == 1 + 2 + 2 + 2 + 1 + 1
    assert created[("tritonfleet_requests_total", (("pipeline", "p"),))] == 3
    assert created[("tritonfleet_predictions_total", (("class", "0"), ("pipeline", "p")))] == 6
    assert created[("tritonfleet_confidence_bin_total", (("bin", "1"), ("pipeline", "p")))] == 2
    assert created[("tritonfleet_confidence_bin_total", (("bin", "2"), ("pipeline", "p")))] == 6
    assert created[("tritonfleet_input_bin_total", (("bin", "1"), ("input", "x"), ("pipeline", "p"),
                                                    ("stat", "mean")))] == 8
    assert created[("tritonfleet_compared_total", (("pipeline", "p"),))] == 8
    assert created[("tritonfleet_disagreement_total", (("pipeline", "p"),))] == 0
    assert created[("tritonfleet_request_errors_total", (("pipeline", "p"), ("reason", "member")))] == 2
    log = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert log == [{"id": "a", "classes": [0]}, {"id": "b", "classes": [0] * 5}, {"id": "", "classes": [1, 1]}]


def test_counts_wait_in_the_model_and_reach_triton_in_one_call_per_series():
    """flush_s > 0: no metric call while requests are answered (each is a stub-to-server round trip);
    a flush hands over the sums, one call per changed series, the requests counter last."""
    FakeMetricsAPI.MetricFamily.created, FakeMetricsAPI.MetricFamily.calls = {}, []
    metrics = mon.PipelineMetrics(FakeMetricsAPI, _config(None, classes=2, flush_s=3600), reasons=("member",))
    calls, created = FakeMetricsAPI.MetricFamily.calls, FakeMetricsAPI.MetricFamily.created
    probs = np.array([[0.95, 0.05], [0.3, 0.7]])
    for _ in range(5):
        metrics.answered(probs, {}, requests=2)
    metrics.error("member", 3)
    assert calls == [] and created[("tritonfleet_requests_total", (("pipeline", "p"),))] == 0
    metrics.flush()
    assert calls[-1] == ("tritonfleet_requests_total", (("pipeline", "p"),), 10)   # last: a scrape showing N
    assert len(calls) == 1 + 2 + 2 + 1                    # requests, 2 classes, 2 confidence bins, the error
    assert created[("tritonfleet_predictions_total", (("class", "1"), ("pipeline", "p")))] == 5
    assert created[("tritonfleet_request_errors_total", (("pipeline", "p"), ("reason", "member")))] == 3
    metrics.flush()
    assert len(calls) == 6                                # nothing new, nothing sent
    metrics.close()


def test_the_background_thread_hands_counts_over_and_close_hands_over_the_rest():
    FakeMetricsAPI.MetricFamily.created, FakeMetricsAPI.MetricFamily.calls = {}, []
    metrics = mon.PipelineMetrics(FakeMetricsAPI, _config(None, classes=2, flush_s=0.05))
    created = FakeMetricsAPI.MetricFamily.created
    requests = ("tritonfleet_requests_total", (("pipeline", "p"),))
    metrics.answered(np.array([[0.9, 0.1]]), {})
    deadline = time.monotonic() + 10
    while created[requests] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert created[requests] == 1
    metrics._stop.set()
    metrics._thread.join()                                # the thread stopped: only close() can hand counts over
    metrics.answered(np.array([[0.9, 0.1]]), {}, requests=4)
    assert created[requests] == 1
    metrics.close()
    assert created[requests] == 5 and not metrics._thread.is_alive()


def test_live_accuracy_by_id_and_by_order(tmp_path):
    log = [("r1", [3]), ("r2", [1, 2]), ("", [7])]
    assert live_accuracy(log, {"r1": [3], "r2": [1, 0]}) == {
        "matched_by": "id", "samples": 3, "correct": 2, "accuracy": round(2 / 3, 6), "unmatched": 1}
    assert live_accuracy(log, [3, 1, 2, 0, 9]) == {
        "matched_by": "order", "samples": 4, "correct": 3, "accuracy": 0.75, "unmatched": 0}
    (tmp_path / "l.json").write_text('{"r1": 3, "r2": [1, 0]}')
    (tmp_path / "l.txt").write_text("3\n1\n2\n")
    assert read_labels(tmp_path / "l.json") == {"r1": [3], "r2": [1, 0]}
    assert read_labels(tmp_path / "l.txt") == [3, 1, 2]


def test_the_build_replays_a_cascade_and_a_route_as_served():
    small = np.array([[0.95, 0.05], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    large = np.array([[0.2, 0.8], [0.1, 0.9], [0.9, 0.1], [0.5, 0.5]])
    probs, argmaxes = cascade_answers([small, large], [0.9])
    np.testing.assert_allclose(probs, [small[0], large[1], large[2], small[3]], rtol=1e-6)
    assert argmaxes.tolist() == [[0, 0, 1, 1], [-1, 1, 0, -1]]
    assert mon.disagreement(argmaxes) == (2, 2)
    probs, argmaxes = route_answers(small, large, 0.25, shadow=True)   # request 3 of 4 goes to the candidate
    np.testing.assert_allclose(probs, [small[0], small[1], small[2], large[3]])
    assert argmaxes.tolist() == [[0, 0, 1, 1], [1, 1, 0, -1]]
    assert route_answers(small, large, 0.25, shadow=False)[1][1].tolist() == [-1] * 4


# ---------------------------------------------------------------------------- alert rules
def require_promtool() -> str:
    binary = promtool()
    assert binary, "promtool not found: apt-get install -y prometheus (.ci/setup installs it; these tests need it)"
    return binary


def _series(name: str, labels: dict, values: list[float]) -> dict:
    text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{text}}}", "values": " ".join(format(float(v), ".17g") for v in values)}


def promtool_test(tmp_path: Path, rules: dict, tests: list[dict]) -> subprocess.CompletedProcess:
    binary = require_promtool()
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                                         "tests": tests}, sort_keys=False))
    return subprocess.run([binary, "test", "rules", str(tmp_path / "test.yaml")], capture_output=True, text=True,
                          timeout=120)


def drift_series(pipeline: str, reference: dict, before: dict, after: dict, minutes: int = 20) -> list[dict]:
    """Input series for promtool: the reference gauges, and the bin counters at ``before`` until
    minute 5 and at ``after`` from minute 6 on (what a server exports before and after traffic)."""
    out = []
    for key, fractions in reference.items():
        for b, f in enumerate(fractions):
            if key == "confidence":
                out.append(_series("tritonfleet_reference_confidence_fraction", {"pipeline": pipeline, "bin": b},
                                   [f] * (minutes + 1)))
            else:
                name, stat = key
                out.append(_series("tritonfleet_reference_input_fraction",
                                   {"pipeline": pipeline, "input": name, "stat": stat, "bin": b}, [f] * (minutes + 1)))
    for key in reference:
        for b in range(len(reference[key])):
            values = [before[key][b]] * 6 + [after[key][b]] * (minutes - 5)
            if key == "confidence":
                out.append(_series("tritonfleet_confidence_bin_total", {"pipeline": pipeline, "bin": b}, values))
            else:
                name, stat = key
                out.append(_series("tritonfleet_input_bin_total",
                                   {"pipeline": pipeline, "input": name, "stat": stat, "bin": b}, values))
    return out


def humanize(value: float) -> str:
    """Prometheus' ``humanize`` template function for values in [0.001, 1000)."""
    return f"{value * 1000:.4g}m" if value < 1 else f"{value:.4g}"


def _alerts(pipeline: str, expected: dict, firing) -> list[dict]:
    """Alert tests for every key of ``expected`` (key -> its PSI/KS value); ``firing``: the keys
    whose alert fires (True: all)."""
    tests, firing = [], set(expected) if firing is True else set(firing or ())
    for key, value in expected.items():
        if key == "confidence":
            exp = [{"exp_labels": {"severity": "warning", "pipeline": pipeline},
                    "exp_annotations": {"summary": f"pipeline {pipeline}: confidence drifted, KS {humanize(value)} > 0.2 "
                                                   "over 10m"}}]
            tests.append({"eval_time": "14m", "alertname": "TritonfleetConfidenceDrift",
                          "exp_alerts": exp if key in firing else []})
    inputs = [{"exp_labels": {"severity": "warning", "pipeline": pipeline, "input": key[0], "stat": key[1]},
               "exp_annotations": {"summary": f"pipeline {pipeline}: input {key[0]} ({key[1]}) drifted, PSI "
                                              f"{humanize(value)} > 0.2 over 10m"}}
              for key, value in sorted(expected.items(), key=str) if key != "confidence" and key in firing]
    tests.append({"eval_time": "14m", "alertname": "TritonfleetInputDrift", "exp_alerts": inputs})
    return tests


def test_generated_rules_pass_promtool_and_fire_only_on_drift(tmp_path):
    rules = alert_rules(RuleOptions(bins=3))
    assert promtool_check(rules["groups"]) == []
    ref = {"confidence": [0.2, 0.3, 0.5], ("image", "std"): [0.3, 0.7]}
    zero = {"confidence": [0, 0, 0], ("image", "std"): [0, 0]}
    same = {"confidence": [40, 60, 100], ("image", "std"): [60, 140]}          # the reference's shares
    moved = {"confidence": [150, 40, 10], ("image", "std"): [10, 190]}
    few = {"confidence": [30, 10, 0], ("image", "std"): [0, 40]}                # drifted, but only 40 samples
    psi_moved = psi(ref["image", "std"], moved["image", "std"])
    ks_moved = ks_binned(ref["confidence"], moved["confidence"])
    drifted = {"confidence": ks_moved, ("image", "std"): psi_moved}
    tests = [
        {"interval": "1m", "input_series": drift_series("p", ref, zero, same),
         "alert_rule_test": _alerts("p", drifted, firing=False),
         "promql_expr_test": [{"expr": "tritonfleet:input_psi", "eval_time": "14m",
                               "exp_samples": [{"labels": 'tritonfleet:input_psi{input="image",pipeline="p",stat="std"}',
                                                "value": psi(ref["image", "std"], same["image", "std"])}]}]},
        {"interval": "1m", "input_series": drift_series("p", ref, zero, moved),
         "alert_rule_test": _alerts("p", drifted, firing=True),
         "promql_expr_test": [
             {"expr": "tritonfleet:input_psi", "eval_time": "14m",
              "exp_samples": [{"labels": 'tritonfleet:input_psi{input="image",pipeline="p",stat="std"}',
                               "value": psi_moved}]},
             {"expr": "tritonfleet:confidence_ks", "eval_time": "14m",
              "exp_samples": [{"labels": 'tritonfleet:confidence_ks{pipeline="p"}', "value": ks_moved}]}]},
        {"interval": "1m", "input_series": drift_series("p", ref, zero, few),
         "alert_rule_test": _alerts("p", drifted, False)},
    ]
    done = promtool_test(tmp_path, rules, tests)
    assert done.returncode == 0, done.stdout + done.stderr


def test_queue_and_failure_rules_fire_on_their_thresholds(tmp_path):
    rules = alert_rules(RuleOptions(thresholds=Thresholds(queue_ms=10, failure_rate=0.05)))
    labels = {"model": "m", "version": "1"}
    slow = [_series("nv_inference_request_success", labels, [60 * i for i in range(16)]),       # 1 request/s
            _series("nv_inference_queue_duration_us", labels, [60 * 20_000 * i for i in range(16)]),  # 20 ms each
            _series("nv_inference_request_failure", {**labels, "reason": "BACKEND"}, [6 * i for i in range(16)]),
            _series("tritonfleet_requests_total", {"pipeline": "p"}, [60 * i for i in range(16)]),
            _series("tritonfleet_request_errors_total", {"pipeline": "p", "reason": "input"}, [0] * 16)]
    tests = [{"interval": "1m", "input_series": slow, "alert_rule_test": [
        {"eval_time": "12m", "alertname": "TritonQueueTimeHigh",
         "exp_alerts": [{"exp_labels": {"severity": "warning", "model": "m"},
                         "exp_annotations": {"summary": "m: requests wait 20ms in the queue on average"}}]},
        {"eval_time": "12m", "alertname": "TritonFailureRateHigh",                    # 6 of 66 fail: 9% > 5%
         "exp_alerts": [{"exp_labels": {"severity": "critical", "model": "m"},
                         "exp_annotations": {"summary": "m: 9.091% of requests fail"}}]},
        {"eval_time": "12m", "alertname": "TritonfleetPipelineErrors", "exp_alerts": []}]}]
    done = promtool_test(tmp_path, rules, tests)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------------- against the real server
MONITORED = "digits_watch"


@pytest.fixture(scope="module")
def watched(artifacts, tmp_path_factory):
    """A two-member digits ensemble with an input guard (finite inputs), built and served fresh
    (this module's counters start at zero), answers logged to a prediction log."""
    from tritonfleet.builder.build import build
    from tritonfleet.builder.spec import load_spec
    from tritonfleet.clients.server import TritonServer

    root = tmp_path_factory.mktemp("monitor")
    raw = digits_spec_dict(artifacts, root / "model_repository")
    raw.update(name=MONITORED, baselines=[], precision={"variants": ["fp32"], "serve": "fp32"},
               parity={"samples": 32}, members=raw["members"][:2])
    for m in raw["members"]:
        m["inputs"][0]["finite"] = True
    spec_path = write_spec(root / "watch.yaml", raw)
    result = build(load_spec(spec_path), spec_path=spec_path, progress=False)
    log = root / "predictions"
    log.mkdir()
    with TritonServer(result.repository, log_path=root / "tritonserver.log",
                      env={mon.PREDICTION_LOG_ENV: str(log)}) as server:
        yield server, result.repository, log


def _infer(client, x: np.ndarray, request_id: str = ""):
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x.astype(np.float32))
    return client.infer(MONITORED, [tensor], request_id=request_id,
                        outputs=[grpcclient.InferRequestedOutput("class_index")]).as_numpy("class_index")[:, 0]


def _monitor_json(repository: Path, server, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "tritonfleet.builder.cli", "monitor", str(repository),
                           "--metrics-url", server.url("metrics"), "--once", "--interval", "0.5", "--json", "-", *extra],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_dashboard_numbers_match_a_known_traffic_pattern(watched, digits_data, tmp_path):
    import tritonclient.grpc as grpcclient

    server, repository, log = watched
    x, y = digits_data["x_test"], digits_data["y_test"]
    sizes = [1, 2, 3, 4, 5, 7, 8] * 6                     # 42 requests, 180 samples
    predicted, labels, start = [], {}, 0
    latencies = []
    client = grpcclient.InferenceServerClient(server.url("grpc"))
    try:
        for i, size in enumerate(sizes):
            t = time.perf_counter()
            predicted.append(_infer(client, x[start:start + size], f"req-{i}"))
            latencies.append(time.perf_counter() - t)
            labels[f"req-{i}"] = y[start:start + size].tolist()
            start += size
        bad = x[:2].copy()
        bad[0, 0, 0, 0] = np.nan                            # refused by the input guard
        for _ in range(3):
            with pytest.raises(Exception, match="NaN/inf"):
                _infer(client, bad)
        stats = client.get_inference_statistics(MONITORED).model_stats[0].inference_stats
    finally:
        client.close()
    predicted = np.concatenate(predicted)
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    settled_metrics(server.url("metrics"))                 # every count handed to Triton (monitoring.flush_s)
    result = _monitor_json(repository, server, "--labels", str(tmp_path / "labels.json"), "--prediction-log", str(log))

    pipe = result["pipelines"][MONITORED]
    assert pipe["requests"] == len(sizes) and pipe["samples"] == start
    assert pipe["errors"] == {"input": 3, "fusion": 0, "member": 0}   # the guard refused them
    assert pipe["classes"]["counts"] == np.bincount(predicted, minlength=10).tolist()
    assert pipe["basis"] == {"samples": start, "since": "server start"}
    assert pipe["disagreement"]["compared"] == start
    assert 0 <= pipe["disagreement"]["disagreed"] <= start
    correct = int((predicted == y[:start]).sum())
    assert pipe["accuracy"] == {"matched_by": "id", "samples": start, "correct": correct,
                                "accuracy": round(correct / start, 6), "unmatched": 0}
    # Triton's counters of the ensemble, and the window: nothing was sent while the monitor watched
    model = result["models"][MONITORED]
    assert model["requests"] == len(sizes) == stats.success.count
    assert model["failures"]["OTHER"] >= 3                    # Triton 2.51 counts a failed ensemble request twice
    assert model["window"]["requests"] == 0 and model["window"]["rate"] == 0.0 and model["window"]["mean_ms"] is None
    assert 0 < model["p50_ms"] <= model["p99_ms"] <= max(latencies) * 1e3
    assert pipe["drift"]["judged"] and pipe["drift"]["alerts"] == [], pipe["drift"]      # clean digits: no drift
    assert not [a for a in result["alerts"] if "Drift" in a["alert"]]
    assert {a["alert"] for a in result["alerts"]} <= {"TritonFailureRateHigh", "TritonfleetPipelineErrors"}
    # the terminal dashboard renders the same numbers
    from rich.console import Console

    from tritonfleet.builder.cli.monitor import render

    screen = Console(record=True, width=200)
    screen.print(render(result))
    text = screen.export_text()
    rows = [line for line in text.splitlines() if line.lstrip("│ ").startswith(f"{MONITORED} ")]
    assert len(rows) == 2, text                               # its Triton model row and its pipeline row
    assert all(f" {len(sizes)} " in row for row in rows), text
    assert "input 3" in rows[1] and f"{pipe['accuracy']['accuracy']:.4f}" in rows[1], text


def test_noisy_digits_raise_the_drift_alerts_clean_ones_do_not(watched, digits_data, tmp_path):
    import tritonclient.grpc as grpcclient

    from tritonfleet.examples.digits.train import make_splits

    server, repository, _ = watched
    manifest = Manifest.read(repository)
    clean = digits_data["x_test"]
    noisy = make_splits(noise=0.5)["x_test"]                  # bench/small_vs_large.py's noisy digits (σ = 0.5)
    thresholds = Thresholds()
    client = grpcclient.InferenceServerClient(server.url("grpc"))
    snapshots = [settled_metrics(server.url("metrics"))]
    try:
        for x in (clean, noisy):
            for start in range(0, len(x), 8):
                _infer(client, x[start:start + 8])
            snapshots.append(settled_metrics(server.url("metrics")))
    finally:
        client.close()
    views = [dashboard(manifest, now, previous=before, base=before, thresholds=thresholds)
             for before, now in zip(snapshots, snapshots[1:])]
    clean_view, noisy_view = (v["pipelines"][MONITORED] for v in views)
    # the window holds exactly what was sent
    assert clean_view["window"]["requests"] == noisy_view["window"]["requests"] == -(-len(clean) // 8)
    assert clean_view["basis"]["samples"] == len(clean) and noisy_view["basis"]["samples"] == len(noisy)
    seconds = snapshots[1].time - snapshots[0].time
    assert clean_view["window"]["rate"] == pytest.approx(clean_view["window"]["requests"] / seconds, rel=1e-3)
    assert clean_view["drift"]["alerts"] == []
    fired = {(a["alert"], a.get("stat")) for a in noisy_view["drift"]["alerts"]}
    # noise clipped to [0, 1] brightens the black background: the per-sample mean moves, and the models grow unsure
    assert ("TritonfleetInputDrift", "mean") in fired and ("TritonfleetConfidenceDrift", None) in fired, noisy_view["drift"]
    assert max(clean_view["drift"]["psi"].values()) < 0.2 < noisy_view["drift"]["psi"]["image.mean"], clean_view["drift"]
    assert noisy_view["drift"]["ks_confidence"] > clean_view["drift"]["ks_confidence"]

    # Prometheus' own evaluation of the generated rules on the counters the server exported
    profile = manifest.pipelines[MONITORED].monitoring
    reference = {"confidence": profile.confidence.fractions,
                 **{(n, s): b.fractions for n, stats in profile.inputs.items() for s, b in stats.items()}}

    def exported(snapshot: Snapshot) -> dict:
        out = {"confidence": [snapshot.total("tritonfleet_confidence_bin_total", pipeline=MONITORED, bin=str(b))
                              for b in range(len(reference["confidence"]))]}
        for key in reference:
            if key != "confidence":
                out[key] = [snapshot.total("tritonfleet_input_bin_total", pipeline=MONITORED, input=key[0], stat=key[1],
                                           bin=str(b)) for b in range(len(reference[key]))]
        return out

    tests = []
    for (before, now), view in zip(zip(snapshots, snapshots[1:]), (clean_view, noisy_view)):
        old, new = exported(before), exported(now)
        live = {k: np.subtract(new[k], old[k]) for k in reference}
        values = {k: ks_binned(reference[k], live[k]) if k == "confidence" else psi(reference[k], live[k])
                  for k in reference}
        firing = {k for k, v in values.items() if v > (thresholds.ks if k == "confidence" else thresholds.psi)}
        # the dashboard flags exactly what Prometheus will
        assert firing == {"confidence" if a["alert"] == "TritonfleetConfidenceDrift" else (a["input"], a["stat"])
                          for a in view["drift"]["alerts"]}
        tests.append({"interval": "1m", "input_series": drift_series(MONITORED, reference, old, new),
                      "alert_rule_test": _alerts(MONITORED, values, firing)})
    rules = alert_rules(RuleOptions(bins=profile.bins))
    done = promtool_test(tmp_path, rules, tests)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_cli_writes_rules_that_deploy_accepts(watched, tmp_path):
    from tritonfleet.builder.cli import main
    from tritonfleet.builder.lifecycle.deploy.monitoring import load_alert_rules
    from tritonfleet.builder.lifecycle.deploy.promql import series

    _, repository, _ = watched
    out = tmp_path / "rules.yaml"
    assert main(["monitor", str(repository), "--alert-rules", str(out), "--psi-threshold", "0.3"]) == 0
    groups = load_alert_rules(out)
    exprs = {r.get("alert") or r["record"]: r["expr"] for g in groups for r in g["rules"]}
    assert "tritonfleet:input_psi > 0.3" in exprs["TritonfleetInputDrift"]
    read = set().union(*(series(e) for e in exprs.values()))
    exported = scrape(watched[0].url("metrics"))
    recorded = {r["record"] for g in groups for r in g["rules"] if "record" in r}
    assert recorded and {n for n in read - recorded if not exported.has(n)} == set()  # every series read exists
    # tritonfleet deploy wraps them into a PrometheusRule and checks it offline (promtool included)
    from tritonfleet.builder.lifecycle.deploy.check import check_folder

    deploy = tmp_path / "deploy"
    assert main(["deploy", "k8s", str(repository), "--out", str(deploy), "--alert-rules", str(out),
                 "--image", "registry.example/tritonserver-onnxruntime:24.10"]) == 0   # a local-target repository
    report = check_folder(deploy, require_promtool=True)
    assert report.ok, report.problems
    assert report.series >= read - recorded and not report.series & recorded


def test_bls_pipelines_count_their_answers(triton, digits_data):
    """Cascade and route on the session server: counter differences around a known pattern."""
    import tritonclient.grpc as grpcclient

    x = digits_data["x_test"][:24]
    before = settled_metrics(triton.url("metrics"))
    client = grpcclient.InferenceServerClient(triton.url("grpc"))
    answers = {}
    try:
        for name in ("digits_cascade", "digits_route"):
            got = []
            for start in range(0, len(x), 3):
                tensor = grpcclient.InferInput("image", [3, 1, 8, 8], "FP32")
                tensor.set_data_from_numpy(x[start:start + 3])
                got.append(client.infer(name, [tensor]).as_numpy("class_index")[:, 0])
            answers[name] = np.concatenate(got)
    finally:
        client.close()
    after = settled_metrics(triton.url("metrics"))
    from tritonfleet.clients.evaluation.monitor import Window

    window = Window(after, before)
    for name, predicted in answers.items():
        assert window.total("tritonfleet_requests_total", pipeline=name) == 8
        counts = window.by("class", "tritonfleet_predictions_total", pipeline=name)
        assert {int(k): int(v) for k, v in counts.items() if v} == \
            {int(c): int(n) for c, n in zip(*np.unique(predicted, return_counts=True))}
        assert window.total("tritonfleet_confidence_bin_total", pipeline=name) == len(x)
        assert window.total("tritonfleet_input_bin_total", pipeline=name, stat="std") == len(x)
    shadowed = window.total("tritonfleet_route_total", pipeline="digits_route", route="shadow")
    assert window.total("tritonfleet_compared_total", pipeline="digits_route") == 3 * shadowed
    assert window.total("tritonfleet_disagreement_total", pipeline="digits_route") <= 3 * shadowed
