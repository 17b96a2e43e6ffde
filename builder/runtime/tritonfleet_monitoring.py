"""What a served batch adds to a pipeline's metrics (copied beside the pipeline models' model.py).

Plain numpy (torch tensors are moved to the host first), no Triton or tritonfleet imports: the
math is unit-tested without a server, and the build computes the reference profile with the
same functions the served models bin their traffic with.

Per answered sample the pipeline model (fusion step, cascade, route) counts

* its predicted class;
* its confidence (the top fused probability), in the bins of the reference profile;
* per pipeline input, two summaries: the sample's mean and its standard deviation over all its
  elements (population std, float64), each in the bins of the reference profile;
* whether the members' (stages') arg-max classes were compared, and whether they differed.

Bins come from the reference profile (``data.validation`` at build time): edges at the
reference's deciles (``bins`` quantiles, rounded to 6 significant digits, duplicates dropped),
bin ``i`` holding values in ``(edges[i-1], edges[i]]`` (bin 0: ``<= edges[0]``, the last:
``> edges[-1]``; NaN goes to the last bin). Everything is counted with counters only: drift is
computed from bin counts over a window, by ``tritonfleet monitor`` or by Prometheus
(``--alert-rules``).

Each ``Metric.increment`` of the Python backend is a round trip from the stub to the server
(costlier than the fusion math of a request: ``bench/monitoring_cost.py``), so counts are
added up in the model's memory and handed to Triton by a background thread every ``flush_s``
seconds (config key, default 0.5 s; one call per series that changed), and once more when the
model unloads. The exported counters therefore trail the traffic by at most ``flush_s``;
``flush_s: 0`` increments at once (one call per distinct label set in a batch, never per sample).
"""

from __future__ import annotations

import json
import os
import threading

import numpy as np

STATS = ("mean", "std")
DEFAULT_CONFIDENCE_EDGES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # no reference profile
DEFAULT_FLUSH_S = 0.5  # how long counts wait in the model before they reach Triton's metrics
PREDICTION_LOG_ENV = "TRITONFLEET_PREDICTION_LOG"  # a folder: one JSON line per answered request

# name -> (kind, description); one description per name, whatever model creates the family
FAMILIES = {
    "tritonfleet_requests_total": ("COUNTER", "requests answered by a tritonfleet pipeline model"),
    "tritonfleet_request_errors_total": ("COUNTER", "requests a tritonfleet pipeline answered with an error, by reason"),
    "tritonfleet_predictions_total": ("COUNTER", "samples answered by a tritonfleet pipeline, by predicted class"),
    "tritonfleet_confidence_bin_total": ("COUNTER", "samples by bin of their top probability (reference bins)"),
    "tritonfleet_input_bin_total": ("COUNTER", "samples by bin of a per-sample input summary (reference bins)"),
    "tritonfleet_compared_total": ("COUNTER", "samples whose members' arg-max classes were compared"),
    "tritonfleet_disagreement_total": ("COUNTER", "compared samples whose members' arg-max classes differ"),
    "tritonfleet_reference_confidence_fraction": ("GAUGE", "reference share of each confidence bin"),
    "tritonfleet_reference_input_fraction": ("GAUGE", "reference share of each input-summary bin"),
}


# --------------------------------------------------------------------------- pure math
def host(array):
    """numpy view of a numpy array or a (possibly CUDA) torch tensor."""
    if isinstance(array, np.ndarray):
        return array
    if type(array).__module__.startswith("torch"):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def summaries(array):
    """``{"mean": [batch], "std": [batch]}``: each sample's mean and population standard deviation
    over all its elements, in float64."""
    x = np.asarray(host(array), dtype=np.float64)
    x = x.reshape(len(x), -1)
    if x.shape[1] == 0:
        zeros = np.zeros(len(x))
        return {"mean": zeros, "std": zeros}
    return {"mean": x.mean(axis=1), "std": x.std(axis=1)}


def bin_index(values, edges):
    """Bin of each value: ``i`` holds ``(edges[i-1], edges[i]]``; NaN goes to the last bin."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), np.asarray(values, dtype=np.float64), side="left")


def bin_counts(values, edges):
    """Counts per bin (``len(edges) + 1`` bins)."""
    return np.bincount(bin_index(values, edges), minlength=len(edges) + 1)


def _sig(value, digits=6):
    return float(f"{float(value):.{digits}g}")


def quantile_edges(values, bins):
    """The inner ``bins``-quantiles of ``values``, rounded to 6 significant digits, duplicates dropped."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return []
    qs = np.quantile(values, np.arange(1, bins) / bins)
    return sorted({_sig(q) for q in qs})


def binned(values, bins):
    """``{"edges": [...], "fractions": [...]}`` of ``values`` with quantile edges (the reference)."""
    edges = quantile_edges(values, bins)
    counts = bin_counts(values, edges)
    return {"edges": edges, "fractions": [round(float(c) / max(len(values), 1), 6) for c in counts]}


def member_argmax(scores):
    """``[members, batch]`` arg-max class of each member's scores (numpy or torch)."""
    return np.stack([np.asarray(host(s)).argmax(axis=1) for s in scores])


def disagreement(argmaxes):
    """``(compared, disagreed)`` for ``[members, batch]`` arg-max classes, ``-1`` where a member
    did not answer a sample (cascade stages): a sample is compared when at least two members
    answered it, and disagrees when their classes are not all equal."""
    a = np.asarray(argmaxes)
    if a.ndim != 2 or a.shape[0] < 2:
        return 0, 0
    valid = a >= 0
    compared = valid.sum(axis=0) >= 2
    low = np.where(valid, a, np.iinfo(np.int64).max).min(axis=0)
    high = np.where(valid, a, -1).max(axis=0)
    return int(compared.sum()), int((compared & (low != high)).sum())


def increments(config, probabilities, inputs, argmaxes=None):
    """What one batch adds: ``{"predictions": counts per class, "confidence": counts per bin,
    "inputs": {(input, stat): counts per bin}, "compared": n, "disagreed": n}``.

    ``config`` is the model's monitoring config (see :func:`runtime_config`), ``inputs`` maps a
    pipeline input's name to its batch, ``argmaxes`` is ``[members, batch]`` or None.
    """
    probs = np.asarray(host(probabilities), dtype=np.float64)
    classes = int(config.get("classes") or probs.shape[1])
    top = probs.argmax(axis=1)
    out = {"predictions": np.bincount(top, minlength=classes),
           "confidence": bin_counts(probs.max(axis=1), confidence_edges(config)), "inputs": {}}
    profile = config.get("profile") or {}
    for name, stats in (profile.get("inputs") or {}).items():
        if name not in inputs:
            continue
        values = summaries(inputs[name])
        for stat, ref in stats.items():
            out["inputs"][(name, stat)] = bin_counts(values[stat], ref["edges"])
    out["compared"], out["disagreed"] = (0, 0) if argmaxes is None else disagreement(argmaxes)
    return out


def confidence_edges(config):
    reference = (config.get("profile") or {}).get("confidence")
    return reference["edges"] if reference else list(DEFAULT_CONFIDENCE_EDGES)


def class_fractions(top, classes):
    counts = np.bincount(np.asarray(top), minlength=classes)
    return [round(float(c) / max(len(top), 1), 6) for c in counts]


def reference_profile(probabilities, inputs, argmaxes=None, bins=10):
    """The reference a pipeline's traffic is compared with: what it answers on ``data.validation``.

    ``probabilities`` ``[n, classes]`` (None when the build cannot compute them, e.g. a stage
    that is another pipeline), ``inputs`` pipeline input name -> ``[n, ...]``. Deterministic:
    quantiles of float64 values, rounded.
    """
    profile = {"bins": int(bins), "samples": int(len(next(iter(inputs.values())))) if inputs else 0,
               "confidence": None, "classes": None, "disagreement": None, "inputs": {}}
    if probabilities is not None:
        probs = np.asarray(probabilities, dtype=np.float64)
        profile["samples"] = int(len(probs))
        profile["confidence"] = binned(probs.max(axis=1), bins)
        profile["classes"] = class_fractions(probs.argmax(axis=1), probs.shape[1])
    if argmaxes is not None:
        compared, disagreed = disagreement(argmaxes)
        profile["disagreement"] = round(disagreed / compared, 6) if compared else None
    for name, array in inputs.items():
        values = summaries(array)
        profile["inputs"][name] = {stat: binned(values[stat], bins) for stat in STATS}
    return profile


def runtime_config(pipeline, classes, tensors, profile, flush_s=DEFAULT_FLUSH_S):
    """The JSON config parameter ``monitor`` of a pipeline model: its pipeline, class count, the
    tensor holding each monitored pipeline input, the reference profile (or None) and how often
    counts are handed to Triton."""
    return {"pipeline": pipeline, "classes": classes, "inputs": dict(tensors), "profile": profile,
            "flush_s": flush_s}


# --------------------------------------------------------------------------- the metrics
class PipelineMetrics:
    """The metrics one pipeline model publishes through the Python backend's metrics API.

    ``api`` is ``triton_python_backend_utils`` (anything with its ``MetricFamily``), ``config``
    the ``monitor`` parameter. Every series is created here, at load time, so each exists (at 0)
    before its first increment and Prometheus' ``increase()`` sees that one too. ``reasons``: the
    error reasons this model counts. ``answers=False`` (the input guard): errors only. Counts reach
    Triton every ``flush_s`` seconds from a background thread (see the module docstring);
    :meth:`close` (the model's ``finalize``) hands over the rest and stops it.
    """

    def __init__(self, api, config, reasons=(), answers=True):
        self._api = api
        self.config = config
        self.pipeline = config["pipeline"]
        self._families = {}
        self._log = None
        self._warned = False
        self._flush_s = float(config.get("flush_s", DEFAULT_FLUSH_S))
        self._pending = {}  # id(metric) -> [metric, count not yet handed to Triton]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self._last = None  # handed over last in a flush: the requests counter, so that a scrape showing
        # N requests also shows every count of those N requests
        if self._flush_s > 0:
            self._thread = threading.Thread(target=self._flush_loop, name=f"tritonfleet-metrics-{self.pipeline}",
                                            daemon=True)
            self._thread.start()
        base = {"pipeline": self.pipeline}
        self.errors = {r: self._metric("tritonfleet_request_errors_total", base, reason=r) for r in reasons}
        self.answers = answers
        if not answers:
            return
        self.requests = self._last = self._metric("tritonfleet_requests_total", base)
        self.compared = self._metric("tritonfleet_compared_total", base)
        self.disagreed = self._metric("tritonfleet_disagreement_total", base)
        classes = int(config.get("classes") or 0)
        self.predictions = [self._metric("tritonfleet_predictions_total", base, **{"class": str(c)})
                            for c in range(classes)]
        self.confidence = [self._metric("tritonfleet_confidence_bin_total", base, bin=str(b))
                           for b in range(len(confidence_edges(config)) + 1)]
        profile = config.get("profile") or {}
        self.inputs = {}
        for name, stats in (profile.get("inputs") or {}).items():
            for stat, ref in stats.items():
                self.inputs[(name, stat)] = [self._metric("tritonfleet_input_bin_total", base, input=name, stat=stat,
                                                          bin=str(b)) for b in range(len(ref["edges"]) + 1)]
                for b, fraction in enumerate(ref["fractions"]):
                    self._metric("tritonfleet_reference_input_fraction", base, input=name, stat=stat,
                                 bin=str(b)).set(float(fraction))
        if profile.get("confidence"):
            for b, fraction in enumerate(profile["confidence"]["fractions"]):
                self._metric("tritonfleet_reference_confidence_fraction", base, bin=str(b)).set(float(fraction))
        folder = os.environ.get(PREDICTION_LOG_ENV)
        if folder:
            path = os.path.join(folder, f"{self.pipeline}.jsonl")
            # O_APPEND: lines of concurrent instances never interleave (each is one write < PIPE_BUF)
            self._log = os.fdopen(os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644), "w", buffering=1)

    def _metric(self, name, base, **labels):
        family = self._families.get(name)
        if family is None:
            kind, description = FAMILIES[name]
            api = self._api
            family = api.MetricFamily(name=name, description=description, kind=getattr(api.MetricFamily, kind))
            self._families[name] = family
        return family.Metric(labels={**base, **labels})

    def error(self, reason, count=1):
        """Count ``count`` requests answered with an error for ``reason``."""
        metric = self.errors.get(reason)
        if metric is not None and count:
            self._add(metric, count)

    def answered(self, probabilities, inputs, argmaxes=None, requests=1, ids=None, sizes=None):
        """Count ``requests`` answered requests holding these samples (one batch). ``inputs``
        (pipeline input -> batch), ``argmaxes`` and ``ids`` (request ids, for the prediction log)
        may be callables: they are then evaluated here, where a failure only logs a warning;
        metrics never fail a request."""
        self._guarded(self._answered, probabilities, inputs, argmaxes, requests, ids, sizes)

    def _guarded(self, fn, *args):
        try:
            fn(*args)
        except Exception as exc:  # a metric must never fail a request: warn once
            if not self._warned:
                self._warned = True
                logger = getattr(self._api, "Logger", None)
                if logger is not None:
                    logger.log_warn(f"tritonfleet monitoring of '{self.pipeline}' failed, metrics are incomplete: "
                                    f"{type(exc).__name__}: {exc}")
                else:
                    raise

    def _answered(self, probabilities, inputs, argmaxes, requests, ids, sizes):
        inputs, argmaxes = _value(inputs), _value(argmaxes)
        inc = increments(self.config, probabilities, inputs, argmaxes)
        self._add(self.requests, requests)
        self._add_counts(self.predictions, inc["predictions"])
        self._add_counts(self.confidence, inc["confidence"])
        for key, counts in inc["inputs"].items():
            self._add_counts(self.inputs[key], counts)
        if inc["compared"]:
            self._add(self.compared, inc["compared"])
        if inc["disagreed"]:
            self._add(self.disagreed, inc["disagreed"])
        if self._log is not None:
            top = np.asarray(host(probabilities)).argmax(axis=1)
            sizes = sizes or [len(top)]
            ids = _value(ids) or [""] * len(sizes)
            start = 0
            for request_id, size in zip(ids, sizes):
                self._log.write(json.dumps({"id": request_id, "classes": top[start:start + size].tolist()}) + "\n")
                start += size


    def _add_counts(self, metrics, counts):
        for index in np.flatnonzero(counts):
            if index < len(metrics):
                self._add(metrics[index], int(counts[index]))

    def _add(self, metric, count):
        if self._thread is None:
            self._guarded(metric.increment, count)
            return
        with self._lock:
            entry = self._pending.setdefault(id(metric), [metric, 0])
            entry[1] += count

    def flush(self):
        """Hand every count added since the last flush to Triton (one call per changed series)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for metric, count in sorted(pending.values(), key=lambda entry: entry[0] is self._last):
            self._guarded(metric.increment, count)

    def _flush_loop(self):
        while not self._stop.wait(self._flush_s):
            self.flush()

    def close(self):
        """Stop the background thread and hand over what is left (the model's ``finalize``)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self.flush()
        if self._log is not None:
            self._log.close()
            self._log = None


def _value(value):
    return value() if callable(value) else value


def load_config(model_config):
    """The ``monitor`` JSON parameter of a parsed model config, or None (monitoring off)."""
    value = (model_config.get("parameters") or {}).get("monitor", {}).get("string_value")
    return json.loads(value) if value else None
