"""What ``tritonfleet monitor`` shows, computed from scrapes of Triton's metrics endpoint.

Everything is derived from counters (plus Triton's latency summary for quantiles), as
Prometheus would: a *window* is the difference between two scrapes, a *total* is what the
server counted since it started. Per model (Triton's ``nv_inference_*`` series): requests,
request rate, mean latency and queue time per request over the window, p50/p99 from Triton's
latency summary (its own sliding window; the server needs ``--metrics-config
summary_latencies=true``, which tritonfleet's server and deploy command line set), failures by
Triton's reason label. Per pipeline (tritonfleet's series, ``tritonfleet_monitoring.py``):
requests answered, errors by reason, the predicted-class distribution, member disagreement,
drift against the build's reference profile (PSI per input summary, KS on confidence; over
the *drift basis*: the samples since ``base``, or since the server started) and, with a
labels file and the servers' prediction log, live accuracy.

Notes on Triton 2.51's own counters (why the pipeline numbers come from tritonfleet's): a
Python-backend model that answers a request with an error counts it in
``nv_inference_request_success``, and an ensemble counts a failed request twice in
``nv_inference_request_failure{reason="OTHER"}``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tritonfleet.clients.errors import UsageError
from tritonfleet.clients.evaluation.drift import ks_binned, psi
from tritonfleet.clients.manifest import Manifest, MonitoringRecord
from tritonfleet.clients.metrics import Snapshot

REQUESTS = "tritonfleet_requests_total"
ERRORS = "tritonfleet_request_errors_total"
PREDICTIONS = "tritonfleet_predictions_total"
CONFIDENCE = "tritonfleet_confidence_bin_total"
INPUT_BINS = "tritonfleet_input_bin_total"
COMPARED = "tritonfleet_compared_total"
DISAGREED = "tritonfleet_disagreement_total"
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")  # Triton 2.51's reason label


@dataclass(frozen=True)
class Thresholds:
    """When the dashboard (and the alert rules) raise an alert."""

    psi: float = 0.2            # per input summary
    ks: float = 0.2             # on confidence
    min_samples: int = 100      # drift is not judged on fewer samples
    queue_ms: float = 50.0      # average queue time per request
    failure_rate: float = 0.01  # failed / all requests

    def __post_init__(self):
        if not 0 < self.ks <= 1:
            raise UsageError(f"the KS threshold is a distance between distributions, in (0, 1]; got {self.ks}")


def _delta(now: float, before: float) -> float:
    return now - before if now >= before else now  # a counter that went down: the server restarted


class Window:
    """Counter differences between two snapshots (``before`` None: totals since the server started)."""

    def __init__(self, now: Snapshot, before: Snapshot | None):
        self.now, self.before = now, before

    @property
    def seconds(self) -> float | None:
        return None if self.before is None else max(self.now.time - self.before.time, 1e-9)

    def total(self, name: str, **match: str) -> float:
        return _delta(self.now.total(name, **match), self.before.total(name, **match) if self.before else 0.0)

    def by(self, label: str, name: str, **match: str) -> dict[str, float]:
        now = self.now.by(label, name, **match)
        before = self.before.by(label, name, **match) if self.before else {}
        return {k: _delta(v, before.get(k, 0.0)) for k, v in now.items()}

    def bins(self, name: str, size: int, **match: str) -> np.ndarray:
        counts = np.zeros(size)
        for key, value in self.by("bin", name, **match).items():
            if key.isdigit() and int(key) < size:
                counts[int(key)] = value
        return counts


def _ratio(a: float, b: float, scale: float = 1.0) -> float | None:
    return a / b * scale if b > 0 else None


def _rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


# --------------------------------------------------------------------------- per model
def model_view(model: str, now: Snapshot, previous: Snapshot | None) -> dict[str, Any]:
    """Triton's numbers for one model: totals since the server started, the window since
    ``previous``, and latency quantiles from its summary."""
    total, window = Window(now, None), Window(now, previous)
    success = window.total("nv_inference_request_success", model=model)
    failures = {r: window.by("reason", "nv_inference_request_failure", model=model).get(r, 0.0) for r in FAILURE_REASONS}
    quantiles = {labels.get("quantile"): value for labels, value in now.series("nv_inference_request_summary_us",
                                                                                model=model)}
    seconds = window.seconds
    return {
        "requests": int(total.total("nv_inference_request_success", model=model)),
        "failures": {r: int(v) for r, v in total.by("reason", "nv_inference_request_failure", model=model).items()},
        "window": {
            "seconds": _rounded(seconds, 3), "requests": int(success),
            "rate": _rounded(success / seconds, 3) if seconds else None,
            "failures": {r: int(v) for r, v in failures.items()},
            "failure_rate": _rounded(_ratio(sum(failures.values()), success + sum(failures.values()))),
            "mean_ms": _rounded(_ratio(window.total("nv_inference_request_duration_us", model=model), success, 1e-3), 4),
            "queue_ms": _rounded(_ratio(window.total("nv_inference_queue_duration_us", model=model), success, 1e-3), 4),
        },
        # Triton's summary: quantiles over its own sliding window (absent unless summary_latencies=true)
        "p50_ms": _rounded(quantiles["0.5"] / 1e3, 4) if "0.5" in quantiles else None,
        "p99_ms": _rounded(quantiles["0.99"] / 1e3, 4) if "0.99" in quantiles else None,
        "pending": int(now.total("nv_inference_pending_request_count", model=model)),
    }


# --------------------------------------------------------------------------- per pipeline
def drift_view(record: MonitoringRecord, basis: Window, pipeline: str, thresholds: Thresholds) -> dict[str, Any]:
    """PSI per input summary and KS on confidence over ``basis``, against the reference."""
    samples = int(basis.total(PREDICTIONS, pipeline=pipeline))
    out: dict[str, Any] = {"samples": samples, "judged": bool(record.has_reference and samples >= thresholds.min_samples),
                           "psi": {}, "ks_confidence": None, "alerts": []}
    if not record.has_reference:
        return out
    for name, stats in sorted(record.inputs.items()):
        for stat, ref in sorted(stats.items()):
            counts = basis.bins(INPUT_BINS, len(ref.fractions), pipeline=pipeline, input=name, stat=stat)
            value = psi(ref.fractions, counts) if counts.sum() > 0 else None
            out["psi"][f"{name}.{stat}"] = _rounded(value)
            if out["judged"] and value is not None and value > thresholds.psi:
                out["alerts"].append({"alert": "TritonfleetInputDrift", "pipeline": pipeline, "input": name,
                                      "stat": stat, "value": _rounded(value), "threshold": thresholds.psi})
    if record.confidence is not None:
        counts = basis.bins(CONFIDENCE, len(record.confidence.fractions), pipeline=pipeline)
        value = ks_binned(record.confidence.fractions, counts) if counts.sum() > 0 else None
        out["ks_confidence"] = _rounded(value)
        if out["judged"] and value is not None and value > thresholds.ks:
            out["alerts"].append({"alert": "TritonfleetConfidenceDrift", "pipeline": pipeline, "value": _rounded(value),
                                  "threshold": thresholds.ks})
    return out


def pipeline_view(pipeline: str, record: MonitoringRecord, now: Snapshot, previous: Snapshot | None,
                  base: Snapshot | None, thresholds: Thresholds) -> dict[str, Any]:
    total, window, basis = Window(now, None), Window(now, previous), Window(now, base)
    seconds = window.seconds
    answered = window.total(REQUESTS, pipeline=pipeline)
    classes = {int(k): int(v) for k, v in basis.by("class", PREDICTIONS, pipeline=pipeline).items() if k.isdigit()}
    size = len(record.classes) if record.classes else (max(classes) + 1 if classes else 0)
    counts = [classes.get(c, 0) for c in range(size)]
    compared, disagreed = basis.total(COMPARED, pipeline=pipeline), basis.total(DISAGREED, pipeline=pipeline)
    errors_window = {r: int(v) for r, v in window.by("reason", ERRORS, pipeline=pipeline).items()}
    return {
        "requests": int(total.total(REQUESTS, pipeline=pipeline)),
        "errors": {r: int(v) for r, v in total.by("reason", ERRORS, pipeline=pipeline).items()},
        "samples": int(total.total(PREDICTIONS, pipeline=pipeline)),
        "window": {"seconds": _rounded(seconds, 3), "requests": int(answered),
                   "rate": _rounded(answered / seconds, 3) if seconds else None, "errors": errors_window,
                   "error_rate": _rounded(_ratio(sum(errors_window.values()), answered + sum(errors_window.values())))},
        "basis": {"samples": int(sum(counts)), "since": "server start" if base is None else round(base.time, 3)},
        "classes": {"counts": counts, "shares": [_rounded(c / sum(counts)) for c in counts] if sum(counts) else None,
                    "reference": list(record.classes) if record.classes else None},
        "disagreement": {"compared": int(compared), "disagreed": int(disagreed),
                         "rate": _rounded(_ratio(disagreed, compared)), "reference": record.disagreement},
        "drift": drift_view(record, basis, pipeline, thresholds),
    }


def dashboard(manifest: Manifest, now: Snapshot, previous: Snapshot | None = None, base: Snapshot | None = None,
              thresholds: Thresholds = Thresholds(), accuracy: Mapping[str, Mapping[str, Any]] | None = None,
              ) -> dict[str, Any]:
    """Every number of the dashboard as JSON-ready data (``tritonfleet monitor --json``).

    ``previous``: the scrape the window starts at (None: no window, totals only); ``base``: the
    scrape the drift basis starts at (None: since the server started); ``accuracy``: pipeline ->
    :func:`live_accuracy`.
    """
    served = sorted(set(now.label_values("model", "nv_inference_request_success")))
    models = {m: model_view(m, now, previous) for m in served}
    pipelines = {}
    for name, record in manifest.pipelines.items():
        monitoring = record.monitoring
        if monitoring is None or not now.has(REQUESTS) or name not in now.label_values("pipeline", REQUESTS):
            continue
        view = pipeline_view(name, monitoring, now, previous, base, thresholds)
        if accuracy and name in accuracy:
            view["accuracy"] = dict(accuracy[name])
        pipelines[name] = view
    alerts = [a for p in pipelines.values() for a in p["drift"]["alerts"]]
    for name, view in models.items():
        w = view["window"]
        if w["queue_ms"] is not None and w["queue_ms"] > thresholds.queue_ms:
            alerts.append({"alert": "TritonQueueTimeHigh", "model": name, "value": w["queue_ms"],
                           "threshold": thresholds.queue_ms})
        if w["failure_rate"] is not None and w["failure_rate"] > thresholds.failure_rate:
            alerts.append({"alert": "TritonFailureRateHigh", "model": name, "value": w["failure_rate"],
                           "threshold": thresholds.failure_rate})
    for name, view in pipelines.items():
        rate = view["window"]["error_rate"]
        if rate is not None and rate > thresholds.failure_rate:
            alerts.append({"alert": "TritonfleetPipelineErrors", "pipeline": name, "value": rate,
                           "threshold": thresholds.failure_rate})
    return {"time": round(now.time, 3), "window_s": None if previous is None else round(now.time - previous.time, 3),
            "thresholds": asdict(thresholds), "models": models, "pipelines": pipelines, "alerts": alerts}


# --------------------------------------------------------------------------- live accuracy
def read_labels(path: Path) -> dict[str, list[int]] | list[int]:
    """Labels of served requests: a JSON object ``{request id: label or [labels]}`` (matched by
    id), or a JSON list / a text file with one integer per line (matched by order)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--labels {path}: cannot read it ({exc})") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
            if isinstance(data, dict):
                return {str(k): [int(v)] if not isinstance(v, list) else [int(x) for x in v] for k, v in data.items()}
            if isinstance(data, list):
                return [int(v) for v in data]
            raise ValueError("expected an object (id -> label) or a list (labels in order)")
        return [int(line) for line in text.split() if line.strip()]
    except (ValueError, TypeError) as exc:
        raise UsageError(f"--labels {path}: not labels ({str(exc).splitlines()[0]}); give a JSON object "
                         "{request id: label}, a JSON list or one integer label per line") from None


def read_prediction_log(path: Path) -> list[tuple[str, list[int]]]:
    """(request id, predicted classes) of every request a pipeline answered, in the order answered."""
    out = []
    if not Path(path).is_file():
        return out
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
            out.append((str(entry.get("id") or ""), [int(c) for c in entry["classes"]]))
        except (ValueError, KeyError, TypeError):
            continue  # a line being written
    return out


def live_accuracy(log: Sequence[tuple[str, list[int]]], labels: Mapping[str, list[int]] | Sequence[int]
                  ) -> dict[str, Any]:
    """Top-1 accuracy of the logged predictions against ``labels``.

    By id (a mapping): each logged request whose id has labels, with as many labels as samples,
    counts; others are unmatched. By order (a sequence): the logged samples, flattened in the
    order they were answered, against the labels in order, as far as both go.
    """
    if isinstance(labels, Mapping):
        matched = correct = unmatched = 0
        for request_id, classes in log:
            truth = labels.get(request_id)
            if truth is None or len(truth) != len(classes):
                unmatched += 1
                continue
            matched += len(classes)
            correct += sum(int(a == b) for a, b in zip(classes, truth))
        mode = "id"
    else:
        predicted = [c for _, classes in log for c in classes]
        n = min(len(predicted), len(labels))
        matched, unmatched = n, len(predicted) - n
        correct = int(np.sum(np.asarray(predicted[:n]) == np.asarray(labels[:n]))) if n else 0
        mode = "order"
    return {"matched_by": mode, "samples": matched, "correct": correct,
            "accuracy": _rounded(_ratio(correct, matched)), "unmatched": unmatched}
