"""Prometheus alerting rules for a repository's pipelines (``tritonfleet monitor --alert-rules``).

Three groups, all computed by Prometheus from series the server exports (nothing is computed
in the models over time; they only count):

* ``tritonfleet-triton`` — Triton's own counters per model: average queue time per request in
  seconds (``nv_inference_queue_duration_us`` / 1e6 / ``nv_inference_request_success``) and the share of
  failed requests (``nv_inference_request_failure``, every reason);
* ``tritonfleet-pipelines`` — the share of requests a tritonfleet pipeline answered with an
  error (``tritonfleet_request_errors_total`` against ``tritonfleet_requests_total``: Triton
  2.51 counts a Python model's error response as a success);
* ``tritonfleet-drift`` — over a sliding window: the live share of each bin of every per-input
  summary and of confidence (``increase`` of the bin counters), PSI per input summary against
  the reference shares the pipeline model exports as gauges
  (``tritonfleet_reference_input_fraction``), and KS on confidence as the largest gap between
  the cumulative live and reference shares at the bin edges (one term per edge, joined with
  ``label_replace``/``or``). Both are the functions of ``clients/evaluation/drift.py``, with
  the same floor :data:`EPS` for empty bins; drift is judged only on ``min_samples`` samples.

The file loads in Prometheus as is and can be wrapped into a PrometheusRule by
``tritonfleet deploy --alert-rules``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tritonfleet.clients.evaluation.drift import EPS
from tritonfleet.clients.evaluation.monitor import Thresholds

INPUT_SHARE = "tritonfleet:input_bin_share"
INPUT_SAMPLES = "tritonfleet:input_samples"
INPUT_PSI = "tritonfleet:input_psi"
CONFIDENCE_SAMPLES = "tritonfleet:confidence_samples"
CONFIDENCE_KS = "tritonfleet:confidence_ks"


@dataclass(frozen=True)
class RuleOptions:
    thresholds: Thresholds = Thresholds()
    bins: int = 10               # the most bins any quantity of the repository has
    window: str = "5m"           # rate window of the queue and failure rules
    drift_window: str = "10m"    # window of the live distributions
    hold: str = "5m"             # how long a condition holds before the alert fires


def duration(seconds: float) -> str:
    """A Prometheus duration for ``seconds`` (whole seconds, at least 1s)."""
    seconds = max(int(round(seconds)), 1)
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _alert(name: str, expr: str, hold: str, severity: str, summary: str) -> dict[str, Any]:
    return {"alert": name, "expr": expr, "for": hold, "labels": {"severity": severity},
            "annotations": {"summary": summary}}


def triton_rules(o: RuleOptions) -> list[dict[str, Any]]:
    w, t = o.window, o.thresholds
    success = f"sum by (model) (rate(nv_inference_request_success[{w}]))"
    failure = f"sum by (model) (rate(nv_inference_request_failure[{w}]))"
    return [
        _alert("TritonQueueTimeHigh",  # seconds per request
               f"sum by (model) (rate(nv_inference_queue_duration_us[{w}])) / 1e6 / clamp_min({success}, 1e-9) "
               f"> {t.queue_ms / 1000:g}",
               o.hold, "warning", "{{ $labels.model }}: requests wait {{ $value | humanizeDuration }} in the queue "
                                  "on average"),
        _alert("TritonFailureRateHigh", f"{failure} / clamp_min({success} + {failure}, 1e-9) > {t.failure_rate:g}",
               o.hold, "critical", "{{ $labels.model }}: {{ $value | humanizePercentage }} of requests fail"),
    ]


def pipeline_rules(o: RuleOptions) -> list[dict[str, Any]]:
    w = o.window
    errors = f"sum by (pipeline) (rate(tritonfleet_request_errors_total[{w}]))"
    answered = f"sum by (pipeline) (rate(tritonfleet_requests_total[{w}]))"
    return [_alert("TritonfleetPipelineErrors", f"{errors} / clamp_min({errors} + {answered}, 1e-9) "
                                                f"> {o.thresholds.failure_rate:g}",
                   o.hold, "critical", "pipeline {{ $labels.pipeline }}: {{ $value | humanizePercentage }} of "
                                       "requests answered with an error")]


def drift_rules(o: RuleOptions) -> list[dict[str, Any]]:
    w, t = o.drift_window, o.thresholds
    by_input = "pipeline, input, stat"
    live = f"increase(tritonfleet_input_bin_total[{w}])"
    reference = f"clamp_min(max by ({by_input}, bin) (tritonfleet_reference_input_fraction), {EPS:g})"
    share = f"clamp_min({INPUT_SHARE}, {EPS:g})"
    psi = (f"sum by ({by_input}) (({share} - on ({by_input}, bin) {reference}) "
           f"* ln({share} / on ({by_input}, bin) {reference}))")

    def cdf_gap(k: int) -> str:
        first = "|".join(str(b) for b in range(k + 1))
        live_k = f'sum by (pipeline) (increase(tritonfleet_confidence_bin_total{{bin=~"{first}"}}[{w}]))'
        ref_k = f'sum by (pipeline) (max by (pipeline, bin) (tritonfleet_reference_confidence_fraction{{bin=~"{first}"}}))'
        gap = f"abs({live_k} / on (pipeline) {CONFIDENCE_SAMPLES} - on (pipeline) {ref_k})"
        return f'label_replace({gap}, "edge", "{k}", "", "")'

    ks = "max by (pipeline) (" + " or ".join(cdf_gap(k) for k in range(max(o.bins - 1, 1))) + ")"
    return [
        {"record": INPUT_SAMPLES, "expr": f"sum by ({by_input}) ({live})"},
        {"record": INPUT_SHARE, "expr": f"sum by ({by_input}, bin) ({live}) / on ({by_input}) group_left {INPUT_SAMPLES}"},
        {"record": INPUT_PSI, "expr": psi},
        {"record": CONFIDENCE_SAMPLES, "expr": f"sum by (pipeline) (increase(tritonfleet_confidence_bin_total[{w}]))"},
        {"record": CONFIDENCE_KS, "expr": ks},
        _alert("TritonfleetInputDrift",
               f"{INPUT_PSI} > {t.psi:g} and on ({by_input}) {INPUT_SAMPLES} >= {t.min_samples}", o.hold, "warning",
               "pipeline {{ $labels.pipeline }}: input {{ $labels.input }} ({{ $labels.stat }}) drifted, "
               f"PSI {{{{ $value | humanize }}}} > {t.psi:g} over {w}"),
        _alert("TritonfleetConfidenceDrift",
               f"{CONFIDENCE_KS} > {t.ks:g} and on (pipeline) {CONFIDENCE_SAMPLES} >= {t.min_samples}", o.hold,
               "warning", "pipeline {{ $labels.pipeline }}: confidence drifted, "
                          f"KS {{{{ $value | humanize }}}} > {t.ks:g} over {w}"),
    ]


def alert_rules(options: RuleOptions = RuleOptions()) -> dict[str, Any]:
    """The rules file (``{"groups": [...]}``)."""
    return {"groups": [
        {"name": "tritonfleet-triton", "rules": triton_rules(options)},
        {"name": "tritonfleet-pipelines", "rules": pipeline_rules(options)},
        {"name": "tritonfleet-drift", "rules": drift_rules(options)},
    ]}
