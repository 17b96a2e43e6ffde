"""Read a Triton server's metrics endpoint: one scrape, parsed with ``prometheus_client``'s parser.

:class:`Snapshot` holds every sample of one scrape and answers the questions the monitor asks
(the value of a series, a sum over label values, a breakdown by one label). Names are the ones
Triton exposes and Prometheus stores: ``nv_inference_request_success``,
``tritonfleet_requests_total`` (prometheus_client's parser calls every counter sample
``<family>_total``; a snapshot answers to the exposed name, with or without that suffix).
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

from tritonfleet.clients.errors import MissingDependencyError, ServerError

Labels = Mapping[str, str]


def metrics_url(address: str) -> str:
    """``host:port`` or a URL -> the URL of its ``/metrics`` page."""
    url = address if "://" in address else f"http://{address}"
    return url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"


@dataclass(frozen=True)
class Snapshot:
    """Every sample of one scrape: name -> [(labels, value)], and when it was taken."""

    time: float                                   # time.time() of the scrape
    samples: Mapping[str, tuple[tuple[Labels, float], ...]] = field(default_factory=dict)
    types: Mapping[str, str] = field(default_factory=dict)  # family -> counter | gauge | summary | ...

    @classmethod
    def parse(cls, text: str, at: float | None = None) -> Snapshot:
        try:
            from prometheus_client.parser import text_string_to_metric_families
        except ImportError:
            raise MissingDependencyError("reading Triton's metrics needs prometheus-client: "
                                         "pip install prometheus-client") from None
        samples: dict[str, list[tuple[Labels, float]]] = {}
        types = {}
        try:
            for family in text_string_to_metric_families(text):
                types[family.name] = family.type
                for sample in family.samples:
                    name = sample.name
                    if family.type == "counter" and name == f"{family.name}_total":
                        name = family.name  # the parser's OpenMetrics suffix: keep the family's name
                    samples.setdefault(name, []).append((dict(sample.labels), float(sample.value)))
        except ValueError as exc:
            raise ServerError(f"the metrics page is not in Prometheus' text format ({exc})") from None
        return cls(time.time() if at is None else at, {k: tuple(v) for k, v in samples.items()}, types)

    def series(self, name: str, **match: str) -> list[tuple[Labels, float]]:
        """Samples of ``name`` whose labels include ``match``."""
        found = self.samples.get(name)
        if found is None and name.endswith("_total"):
            found = self.samples.get(name[: -len("_total")])
        return [(labels, value) for labels, value in found or ()
                if all(labels.get(k) == v for k, v in match.items())]

    def has(self, name: str) -> bool:
        return bool(self.series(name))

    def total(self, name: str, **match: str) -> float:
        """Sum of the matching samples (0 when there are none)."""
        return float(sum(value for _, value in self.series(name, **match)))

    def by(self, label: str, name: str, **match: str) -> dict[str, float]:
        """Sum of the matching samples per value of ``label``."""
        out: dict[str, float] = {}
        for labels, value in self.series(name, **match):
            key = labels.get(label, "")
            out[key] = out.get(key, 0.0) + value
        return out

    def label_values(self, label: str, name: str, **match: str) -> list[str]:
        return sorted({labels[label] for labels, _ in self.series(name, **match) if label in labels})


def scrape(url: str, timeout: float = 10.0) -> Snapshot:
    """One scrape of ``url`` (``host:port`` or a URL; ``/metrics`` is added when missing)."""
    url = metrics_url(url)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - the user's server
            text = response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ServerError(f"cannot read Triton's metrics at {url} ({reason}); is the server running, and is this its "
                          "metrics port (tritonfleet serve prints it as 'metrics')?") from None
    return Snapshot.parse(text)
