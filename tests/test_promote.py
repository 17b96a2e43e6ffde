"""tritonfleet promote: the statistics and the decision (pure, no Triton), then the whole gate on
a real tritonserver — a worse candidate refused, an equally accurate one refused at
min_gain_pt > 0, a better one promoted through the journaled commit, a restarted server serving
it, and a rollback restoring the version served before.

The scenario tests below share one repository and run in file order: each builds a candidate
version of the same member (``tritonfleet build --candidate``), then judges it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tritonfleet.builder.cli import main as cli_main
from tritonfleet.builder.lifecycle.promote_gate import (
    LoadComparison,
    abba_order,
    decide,
    summarize_rounds,
)
from tritonfleet.builder.lifecycle.promote_shadow import ShadowRoute, evidence, parse_counters
from tritonfleet.builder.spec.promotion import PromotionPolicy
from tritonfleet.clients.evaluation.stats import (
    accuracy_gain,
    binomial_two_sided,
    mcnemar_exact,
    paired_bootstrap_ci,
)

from conftest import digits_spec_dict, settled_metrics


# --------------------------------------------------------------------------- statistics
def outcomes(both: int, first_only: int, second_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired correctness with the given counts of each (first, second) outcome."""
    first = [True] * both + [True] * first_only + [False] * second_only + [False] * neither
    second = [True] * both + [False] * first_only + [True] * second_only + [False] * neither
    return np.array(first), np.array(second)


@pytest.mark.parametrize("b, c, expected", [
    (0, 0, 1.0),                   # no discordant pair: no evidence
    (1, 0, 1.0),                   # 2 * 1/2 = 1
    (0, 5, 2 / 32),                # 2 * (1/2)^5
    (1, 4, 2 * 6 / 32),            # 2 * (C(5,0) + C(5,1)) / 2^5 = 12/32
    (3, 3, 1.0),                   # symmetric: capped at 1
    (2, 8, 2 * 56 / 1024),         # C(10,0)+C(10,1)+C(10,2) = 1 + 10 + 45 = 56
])
def test_mcnemar_exact_matches_hand_computed_binomial_tails(b, c, expected):
    first, second = outcomes(50, b, c, 7)
    test = mcnemar_exact(first, second)
    assert (test.b, test.c) == (b, c)
    assert test.p_value == pytest.approx(expected, rel=1e-12)


def test_large_discordant_counts_match_the_exact_tail_and_are_symmetric():
    # above 2000 discordant pairs the tail is summed in log space; check it against exact integers
    for k, n in [(900, 2500), (1240, 2500), (3, 17), (0, 1)]:
        exact = min(1.0, 2 * sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / (1 << n))
        assert binomial_two_sided(k, n) == pytest.approx(exact, rel=1e-9), (k, n)
        assert binomial_two_sided(k, n) == binomial_two_sided(n - k, n)


def test_paired_bootstrap_interval_is_seeded_and_covers_the_difference():
    first, second = outcomes(300, 5, 25, 30)   # candidate right on 20 more of 360: +5.56 points
    low, high = paired_bootstrap_ci(first, second, confidence=0.95, resamples=4000, seed=3)
    assert (low, high) == paired_bootstrap_ci(first, second, confidence=0.95, resamples=4000, seed=3)
    assert low < 100 * 20 / 360 < high and low > 0   # significant here: the interval excludes 0
    # the normal approximation of the paired difference's standard error, for scale
    d = second.astype(float) - first.astype(float)
    se = 100 * d.std() / math.sqrt(len(d))
    assert (high - low) == pytest.approx(2 * 1.96 * se, rel=0.2)
    same = paired_bootstrap_ci(first, first)
    assert same == (0.0, 0.0)


def test_accuracy_gain_and_bad_input():
    first, second = outcomes(10, 1, 3, 6)
    gain = accuracy_gain(first, second, resamples=200)
    assert gain.samples == 20 and gain.gain_pt == pytest.approx(10.0)
    assert (gain.current_accuracy, gain.candidate_accuracy) == (0.55, 0.65)
    assert (gain.only_current_right, gain.only_candidate_right) == (1, 3)
    from tritonfleet.clients.errors import UsageError

    with pytest.raises(UsageError, match="one outcome per sample"):
        mcnemar_exact([True, False], [True])
    with pytest.raises(UsageError, match="confidence"):
        paired_bootstrap_ci([True], [True], confidence=1.0)


# --------------------------------------------------------------------------- the decision
def load(current_p99: float, candidate_p99: float, candidate_errors: int = 0,
         current_rate: float = 1000.0, candidate_rate: float = 1000.0) -> LoadComparison:
    def one(p99, rate, errors):
        return summarize_rounds([p99 / 2, p99 / 2], [p99 * 0.9, p99 * 1.1], [rate, rate], [errors, 0], [True, True])

    return LoadComparison(one(current_p99, current_rate, 0), one(candidate_p99, candidate_rate, candidate_errors),
                          tuple(abba_order(2)))


def criteria(verdict) -> dict[str, str]:
    return {c.name: c.outcome for c in verdict.criteria}


def test_abba_order_and_round_summary():
    assert abba_order(3) == ["current", "candidate", "candidate", "current", "current", "candidate"]
    s = summarize_rounds([1, 2, 3], [5.0, 9.0, 6.0], [100, 300, 200], [0, 1, 0], [True, False, True])
    assert (s.p99_ms, s.p99_range_ms, s.infer_per_s, s.infer_per_s_range, s.errors, s.stable_rounds) == \
        (6.0, (5.0, 9.0), 200, (100, 300), 1, 2)


def test_decision_names_every_criterion_with_value_and_threshold():
    better = accuracy_gain(*outcomes(300, 2, 30, 28), resamples=500)
    policy = PromotionPolicy()
    verdict = decide(better, load(10.0, 10.5), policy)
    assert verdict.promote, criteria(verdict)
    rows = {c.name: c for c in verdict.criteria}
    assert rows["accuracy gain (pt)"].value == pytest.approx(100 * 28 / 360) and rows["accuracy gain (pt)"].rule \
        == ">= +0.00"
    assert rows["McNemar p-value (exact)"].value == pytest.approx(binomial_two_sided(2, 32))
    assert rows["McNemar p-value (exact)"].rule == "<= 0.05"
    assert rows["p99 latency regression"].value == pytest.approx(0.05) and rows["p99 latency regression"].passed
    assert rows["throughput drop"].outcome == "reported only"
    assert rows["candidate errors under load"].value == 0

    slower = decide(better, load(10.0, 12.0), policy)       # +20% p99 > 10%
    assert not slower.promote and [c.name for c in slower.failed] == ["p99 latency regression"]
    broken = decide(better, load(10.0, 10.0, candidate_errors=3), policy)
    assert not broken.promote and [c.name for c in broken.failed] == ["candidate errors under load"]
    fewer = decide(better, load(10.0, 10.0, candidate_rate=800.0), PromotionPolicy(max_throughput_drop=0.1))
    assert not fewer.promote and [c.name for c in fewer.failed] == ["throughput drop"]
    skipped = decide(better, None, policy)
    assert skipped.promote and criteria(skipped)["p99 latency regression"] == "skipped (--skip-load)"


def test_worse_equal_and_insignificant_candidates_are_refused():
    policy = PromotionPolicy()
    worse = decide(accuracy_gain(*outcomes(300, 30, 2, 28), resamples=200), None, policy)
    assert not worse.promote and {c.name for c in worse.failed} == {"accuracy gain (pt)"}
    same = accuracy_gain(*outcomes(300, 0, 0, 60), resamples=200)
    assert same.gain_pt == 0.0 and same.p_value == 1.0
    assert not decide(same, None, policy).promote                           # p = 1 > 0.05
    tie = decide(same, None, PromotionPolicy(min_gain_pt=0.5, max_p_value=None))
    assert not tie.promote and [c.name for c in tie.failed] == ["accuracy gain (pt)"]
    assert decide(same, None, PromotionPolicy(min_gain_pt=0.0, max_p_value=None)).promote  # a tie may pass at 0
    small = accuracy_gain(*outcomes(300, 3, 6, 51), resamples=200)           # +0.83 pt, p = 0.51
    verdict = decide(small, None, policy)
    assert not verdict.promote and [c.name for c in verdict.failed] == ["McNemar p-value (exact)"]


def test_spec_promotion_block_is_validated(artifacts, tmp_path):
    from tritonfleet.builder.errors import SpecError
    from tritonfleet.builder.spec import load_spec

    raw = digits_spec_dict(artifacts, tmp_path / "repo")
    raw["promotion"] = {"min_gain_pt": 0.5, "max_p_value": 0.01, "load": {"rounds": 3}}
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(raw))
    spec = load_spec(tmp_path / "ok.yaml")
    assert (spec.promotion.min_gain_pt, spec.promotion.max_p_value, spec.promotion.max_latency_regression,
            spec.promotion.load.rounds) == (0.5, 0.01, 0.10, 3)
    raw["promotion"] = {"max_p_value": 2, "max_latency_regresion": 0.1}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as err:
        load_spec(tmp_path / "bad.yaml")
    assert "promotion.max_p_value" in str(err.value) and "max_latency_regression" in str(err.value)
    raw["promotion"] = {"min_gain_pt": 1.0}
    raw["data"].pop("test")
    (tmp_path / "notest.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match="promotion: compares versions on data.test"):
        load_spec(tmp_path / "notest.yaml")


def test_shadow_counters_are_read_from_a_prometheus_exposition():
    text = "\n".join([
        "# HELP tritonfleet_compared_total samples compared", "# TYPE tritonfleet_compared_total counter",
        'tritonfleet_compared_total{pipeline="r"} 120', 'tritonfleet_compared_total{pipeline="other"} 5',
        "# HELP tritonfleet_disagreement_total disagreed", "# TYPE tritonfleet_disagreement_total counter",
        'tritonfleet_disagreement_total{pipeline="r"} 6',
        "# HELP tritonfleet_route_total decisions", "# TYPE tritonfleet_route_total counter",
        'tritonfleet_route_total{pipeline="r",route="shadow"} 30',
        'tritonfleet_route_total{pipeline="r",route="shadow_error"} 1', ""])
    assert parse_counters(text)[("tritonfleet_compared_total", frozenset({("pipeline", "r")}))] == 120
    route = ShadowRoute("r", {"model": "m", "version": 1}, {"model": "m", "version": 2}, "current")
    (found,) = evidence([route], "m", 1, 2, text)
    assert found.matches and (found.compared, found.disagreed, found.shadow_requests, found.shadow_errors) == \
        (120, 6, 30, 1)
    assert found.agreement == pytest.approx(0.95) and "agreement 0.9500 over 120" in found.describe()
    (unread,) = evidence([route], "m", 1, 3, None)
    assert not unread.matches and unread.compared is None and "--metrics-url" in unread.describe()


# --------------------------------------------------------------------------- the gate on a real server
MODEL = "cnn_small_a"


def noisy(state: dict, sigma: float, seed: int = 0) -> dict:
    """Gaussian noise of ``sigma`` times each weight tensor's std: a model trained worse."""
    g = torch.Generator().manual_seed(seed)
    return {k: v + sigma * v.std() * torch.randn(v.shape, generator=g) if v.is_floating_point() and v.numel() > 1
            else v for k, v in state.items()}


@pytest.fixture(scope="module")
def scenario(artifacts, tmp_path_factory) -> dict:
    """One member served from a repository, and the checkpoints of its candidates: the current
    one (noisy, ~0.90 top-1), a worse one (~0.36), an equal one (every class bias shifted by the
    same constant: the same predictions, another artifact) and a better one (the trained weights)."""
    folder = tmp_path_factory.mktemp("promote")
    clean = torch.load(artifacts / "cnn_small_a.pt", weights_only=True)
    current = noisy(clean, 0.8)
    equal = {**current, "head.4.bias": current["head.4.bias"] + 1e-3}
    checkpoints = {}
    for name, state in (("current", current), ("worse", noisy(clean, 1.5)), ("equal", equal), ("better", clean)):
        checkpoints[name] = folder / f"{name}.pt"
        torch.save(state, checkpoints[name])
    repo = folder / "model_repository"

    def spec(which: str) -> Path:
        raw = digits_spec_dict(artifacts, repo)
        member = raw["members"][0]
        member["model"]["checkpoint"] = str(checkpoints[which])
        raw.update(name="pm", members=[member], baselines=[], precision={"variants": ["fp32"], "serve": "fp32"},
                   parity={"samples": 64})
        path = folder / f"{which}.yaml"
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path

    assert cli_main(["build", str(spec("current")), "--no-progress"]) == 0
    return {"folder": folder, "repo": repo, "spec": spec, "checkpoints": checkpoints}


def served_now(repo: Path) -> list[int]:
    from tritonfleet.builder.repository.versions import served_versions

    return served_versions(repo, MODEL)[0]


def run_promote(scenario, *extra: str) -> tuple[int, dict]:
    out = scenario["folder"] / "report.json"
    out.unlink(missing_ok=True)
    code = cli_main(["promote", str(scenario["repo"]), MODEL, "--no-progress", "--json", str(out), *extra])
    return code, (json.loads(out.read_text()) if out.is_file() else {})


def build_candidate(scenario, which: str) -> None:
    from tritonfleet.builder.repository.verify import verify

    before = served_now(scenario["repo"])
    assert cli_main(["build", str(scenario["spec"](which)), "--candidate", "--no-progress"]) == 0
    assert served_now(scenario["repo"]) == before  # the new version waits on disk
    record = json.loads((scenario["repo"] / "manifest.json").read_text())["models"][MODEL]
    assert record["version_policy"] == {"specific": before}
    assert verify(scenario["repo"]).ok


def test_promote_errors_are_one_message(scenario, capsys):
    repo = str(scenario["repo"])
    cases = [([MODEL], "has no candidate version: it serves [1]"),
             (["nope"], "model 'nope' is not in"),
             ([MODEL, "--candidate-version", "1"], "version 1 of 'cnn_small_a' already serves"),
             ([MODEL, "--candidate-version", "7"], "has no version 7")]
    for args, message in cases:
        assert cli_main(["promote", repo, *args, "--no-progress"]) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_worse_candidate_is_refused(scenario):
    build_candidate(scenario, "worse")
    config = (scenario["repo"] / MODEL / "config.pbtxt").read_bytes()
    code, report = run_promote(scenario, "--skip-load")
    assert code == 1 and not report["promoted"]
    assert (report["current"], report["candidate"]) == (1, 2)
    acc = report["accuracy"]
    assert acc["samples"] == 360 and acc["candidate_accuracy"] < acc["current_accuracy"] - 0.3
    assert acc["gain_pt"] == pytest.approx(100 * (acc["candidate_accuracy"] - acc["current_accuracy"]))
    assert acc["ci_pt"][1] < 0 and acc["p_value"] < 1e-6
    outcome = {c["name"]: c for c in report["verdict"]["criteria"]}
    assert outcome["accuracy gain (pt)"]["outcome"] == "FAIL"
    assert outcome["p99 latency regression"]["outcome"] == "skipped (--skip-load)"
    assert report["load"] is None and report["served_after"] == [1]
    assert served_now(scenario["repo"]) == [1]
    assert (scenario["repo"] / MODEL / "config.pbtxt").read_bytes() == config  # untouched by a refusal


def test_equal_candidate_is_refused_when_a_gain_is_required(scenario):
    build_candidate(scenario, "equal")
    code, report = run_promote(scenario, "--skip-load", "--min-gain-pt", "0.5", "--max-p-value", "1")
    acc = report["accuracy"]
    assert code == 1 and report["candidate"] == 3
    assert (acc["only_current_right"], acc["only_candidate_right"], acc["gain_pt"]) == (0, 0, 0.0)
    assert acc["p_value"] == 1.0 and acc["ci_pt"] == [0.0, 0.0]
    failed = [c["name"] for c in report["verdict"]["criteria"] if c["outcome"] == "FAIL"]
    assert failed == ["accuracy gain (pt)"]
    assert served_now(scenario["repo"]) == [1]


def test_better_candidate_is_promoted_through_a_journaled_commit(scenario):
    from tritonfleet.builder.repository.journal import journal_path
    from tritonfleet.builder.repository.verify import verify
    from tritonfleet.builder.repository.versions import served_versions

    build_candidate(scenario, "better")
    assert served_versions(scenario["repo"], MODEL)[1] == [1, 3, 4]  # the oldest candidate went, never the served v1
    # speed is not judged here (benchmarks do that): a lenient latency limit, but the numbers must be real
    code, report = run_promote(scenario, "--load-rounds", "1", "--load-window", "0.5", "--load-concurrency", "2",
                               "--max-latency-regression", "100")
    assert code == 0 and report["promoted"], report["verdict"]
    assert (report["current"], report["candidate"], report["served_after"]) == (1, 4, [4])
    acc = report["accuracy"]
    assert acc["gain_pt"] > 5 and acc["ci_pt"][0] > 0 and acc["p_value"] < 0.001
    load = report["load"]
    assert load["order"] == ["current", "candidate"]
    for side in ("current", "candidate"):
        s = load[side]
        assert s["rounds"] == 1 and s["errors"] == 0
        assert 0 < s["p50_ms"] <= s["p99_ms"] and s["p99_range_ms"][0] <= s["p99_ms"] <= s["p99_range_ms"][1]
        assert s["infer_per_s"] > 0
    assert load["latency_regression"] == pytest.approx(load["candidate"]["p99_ms"] / load["current"]["p99_ms"] - 1)
    assert all(c["outcome"] != "FAIL" for c in report["verdict"]["criteria"])
    assert served_now(scenario["repo"]) == [4]
    record = json.loads((scenario["repo"] / "manifest.json").read_text())["models"][MODEL]
    assert record["version_policy"] == {"specific": [4]}
    assert record["promotion"]["version"] == 4 and record["promotion"]["previous"] == [1]
    assert record["promotion"]["gain_pt"] == pytest.approx(acc["gain_pt"], abs=1e-5)
    assert not journal_path(scenario["repo"]).exists() and verify(scenario["repo"]).ok


def test_restarted_server_serves_the_promoted_version_and_rollback_restores(scenario, digits_data):
    from tritonfleet.builder.repository.verify import verify
    from tritonfleet.builder.repository.versions import rollback
    from tritonfleet.clients.infer import TritonClient
    from tritonfleet.clients.server import TritonServer
    from tritonfleet.examples.digits.models import DigitsCNN

    def reference(which: str) -> np.ndarray:
        model = DigitsCNN(width=12)
        model.load_state_dict(torch.load(scenario["checkpoints"][which], weights_only=True))
        with torch.no_grad():
            return model.eval()(torch.from_numpy(x)).numpy()

    x = digits_data["x_test"][:16]
    assert served_now(scenario["repo"]) == [4]
    with TritonServer(scenario["repo"], model_control_mode="explicit") as server, \
            TritonClient(server.url("grpc")) as client:
        assert client.is_ready(MODEL, 4) and not client.is_ready(MODEL, 1) and not client.is_ready(MODEL, 3)
        np.testing.assert_allclose(client.infer(MODEL, x)["logits"], reference("better"), atol=1e-4)
        assert client.infer("pm", x)["probabilities"].shape == (16, 10)  # the ensemble calls the promoted one

        done = rollback(scenario["repo"], MODEL)  # the version served before the promotion, not candidate v3
        assert (done.served, done.previous) == (1, [4]) and verify(scenario["repo"]).ok
        client.load_model(MODEL)
        assert client.is_ready(MODEL, 1) and not client.is_ready(MODEL, 4)
        np.testing.assert_allclose(client.infer(MODEL, x)["logits"], reference("current"), atol=1e-4)


def test_shadow_evidence_from_a_live_route(repository, triton, digits_data):
    """The session server's digits_route shadows cnn_small_b (current) with cnn_small_c: the counters
    promote reports move by exactly the samples the route shadowed and the ones whose classes differ."""
    from tritonfleet.builder.lifecycle.promote_shadow import scrape, shadow_routes
    from tritonfleet.clients.infer import TritonClient
    from tritonfleet.clients.manifest import Manifest

    repo = repository["digits_route"][1].repository
    routes = shadow_routes(repo, Manifest.read(repo), "cnn_small_b")
    assert [(r.pipeline, r.role, r.candidate["model"]) for r in routes] == [("digits_route", "current", "cnn_small_c")]

    def read():
        settled_metrics(triton.url("metrics"))  # the route hands its counts to Triton every monitoring.flush_s
        (found,) = evidence(routes, "cnn_small_b", 1, 2, scrape(triton.url("metrics")))
        assert not found.matches  # the route compares two models, not two versions of cnn_small_b
        return found

    before = read()
    x = digits_data["x_test"][:96]
    with TritonClient(triton.url("grpc")) as client:
        batches = [x[i:i + 8] for i in range(0, len(x), 8)]
        shadowed = [b for b in batches if client.infer("digits_route", b)["route"][0, 0] == 0]
        assert 0 < len(shadowed) < len(batches)  # 25% go to the candidate, the rest are shadowed
        seen = np.concatenate(shadowed)
        differ = int((client.infer_batched("cnn_small_b", seen)["logits"].argmax(1)
                      != client.infer_batched("cnn_small_c", seen)["logits"].argmax(1)).sum())
    after = read()
    assert after.shadow_requests - before.shadow_requests == len(shadowed)
    assert after.compared - before.compared == len(seen)
    assert after.disagreed - before.disagreed == differ
    assert after.agreement is not None and "live samples" in after.describe()
