"""Shadow evidence for a promotion: what a live ``route`` pipeline with ``shadow: true`` saw.

A route pipeline sends the requests it routes to its current model to its candidate as well
(without using the answer) and counts, per shadowed sample, whether both models' arg-max classes
agreed: ``tritonfleet_compared_total{pipeline}`` and ``tritonfleet_disagreement_total{pipeline}``
(the pipeline metrics of ``builder/runtime/tritonfleet_monitoring.py``), beside its routing
decisions ``tritonfleet_route_total{pipeline, route="shadow"|"shadow_error"}``. Read from a
server's metrics endpoint (Prometheus text, parsed with ``prometheus_client``).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tritonfleet.builder.errors import RepositoryError
from tritonfleet.clients.errors import MissingDependencyError, ServerError
from tritonfleet.clients.manifest import Manifest
from tritonfleet.clients.model_config import parse_pbtxt

COMPARED = "tritonfleet_compared_total"
DISAGREED = "tritonfleet_disagreement_total"
ROUTES = "tritonfleet_route_total"


@dataclass(frozen=True)
class ShadowRoute:
    """A route pipeline with ``shadow: true`` that calls the model being promoted."""

    pipeline: str
    current: dict[str, Any]    # {"model": ..., "version": -1 | N}
    candidate: dict[str, Any]
    role: str                  # where the promoted model is in the route: "current" or "candidate"

    def shadows(self, model: str, current: int, candidate: int) -> bool:
        """Whether the route compares exactly the two versions the gate compares."""
        return (self.current["model"] == model and self.candidate["model"] == model
                and int(self.current.get("version", -1)) == current
                and int(self.candidate.get("version", -1)) == candidate)


@dataclass(frozen=True)
class ShadowEvidence:
    route: ShadowRoute
    matches: bool                  # the route shadows the candidate version with the current one
    compared: int | None = None    # shadowed samples whose answers were compared (None: not read)
    disagreed: int | None = None
    shadow_requests: int | None = None
    shadow_errors: int | None = None
    note: str = ""

    @property
    def agreement(self) -> float | None:
        if not self.compared:
            return None
        return 1.0 - (self.disagreed or 0) / self.compared

    def describe(self) -> str:
        r = self.route
        pair = f"{_stage(r.current)} vs {_stage(r.candidate)}"
        if self.compared is None:
            return f"route '{r.pipeline}' shadows {pair}: {self.note}"
        if not self.compared:
            return f"route '{r.pipeline}' shadows {pair}: no shadowed samples yet ({self.shadow_errors or 0} errors)"
        what = "" if self.matches else " (not the versions compared here)"
        return (f"route '{r.pipeline}' shadows {pair}{what}: agreement {self.agreement:.4f} over {self.compared} "
                f"live samples ({self.disagreed} disagreed), {self.shadow_requests} shadowed requests, "
                f"{self.shadow_errors} shadow errors")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agreement": self.agreement, "description": self.describe()}


def _stage(stage: dict[str, Any]) -> str:
    version = int(stage.get("version", -1))
    return stage["model"] + ("" if version < 0 else f" v{version}")


def shadow_routes(repository: Path, manifest: Manifest, model: str) -> list[ShadowRoute]:
    """Route pipelines of the repository with ``shadow: true`` whose current or candidate stage is ``model``."""
    routes = []
    for name, pipeline in manifest.pipelines.items():
        fusion = (pipeline.raw.get("spec") or {}).get("fusion") or {}
        if fusion.get("type") != "route" or not fusion.get("shadow"):
            continue
        config = Path(repository) / name / "config.pbtxt"
        if not config.is_file():
            raise RepositoryError(f"route pipeline '{name}' has no {config}; run 'tritonfleet verify {repository}'")
        params = json.loads(parse_pbtxt(config.read_text(encoding="utf-8")).parameters["pipeline"].string_value)
        current, candidate = params["current"], params["candidate"]
        if model in (current["model"], candidate["model"]):
            role = "current" if current["model"] == model else "candidate"
            routes.append(ShadowRoute(name, current, candidate, role))
    return routes


def parse_counters(text: str) -> dict[tuple[str, frozenset], float]:
    """``{(sample name, labels): value}`` of a Prometheus text exposition."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        raise MissingDependencyError("reading shadow metrics needs prometheus_client: pip install prometheus-client") \
            from None
    return {(s.name, frozenset(s.labels.items())): float(s.value)
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(metrics_url: str, timeout: float = 10.0) -> str:
    url = metrics_url if "://" in metrics_url else f"http://{metrics_url}"
    url = url if url.rstrip("/").endswith("/metrics") else url.rstrip("/") + "/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - the user's own server
            return response.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as exc:
        raise ServerError(f"cannot read metrics at {url} ({exc}); pass the metrics address of the serving "
                          "Triton (its --metrics-port, default 8002) as --metrics-url HOST:PORT") from None


def evidence(routes: list[ShadowRoute], model: str, current: int, candidate: int,
             metrics_text: str | None) -> list[ShadowEvidence]:
    """What each route's counters say (``metrics_text`` None: not read, say how to read them)."""
    out = []
    counters = parse_counters(metrics_text) if metrics_text is not None else None
    for route in routes:
        matches = route.shadows(model, current, candidate)
        if counters is None:
            out.append(ShadowEvidence(route, matches, note="pass --metrics-url HOST:PORT (the serving Triton's "
                                                            "metrics endpoint) to read its live agreement"))
            continue

        def value(name: str, pipeline: str = route.pipeline, **labels: str) -> int:
            return int(counters.get((name, frozenset({"pipeline": pipeline, **labels}.items())), 0))

        out.append(ShadowEvidence(route, matches, value(COMPARED), value(DISAGREED),
                                  value(ROUTES, route="shadow"), value(ROUTES, route="shadow_error")))
    return out
