"""Autoscaling and alerting queries: the prometheus-adapter rule behind the HPA, alert rules files.

The HPA scales on Triton's average queue time per request, as Triton's k8s-onprem chart
does: a prometheus-adapter rule derives it per pod from two counters Triton exports,
``nv_inference_queue_duration_us`` (cumulative microseconds requests waited in the
scheduler queue) and ``nv_inference_request_success``. Over a window, their rates' ratio is
the queue time of an average request; summed over the pod's models first, so a busy model
weighs by its traffic. Alert rules (from ``tritonfleet monitor --alert-rules``) are read as a
Prometheus rules file and wrapped in a PrometheusRule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tritonfleet.builder.errors import DeployError

QUEUE_METRIC = "tritonfleet_queue_us_per_request"   # the custom metric the HPA reads
QUEUE_SERIES = "nv_inference_queue_duration_us"
SUCCESS_SERIES = "nv_inference_request_success"
WINDOW = "1m"


def adapter_rule(namespace: str | None) -> dict[str, Any]:
    """One prometheus-adapter ``rules.custom`` entry (Go template in ``metricsQuery``)."""
    where = f'namespace="{namespace}",pod!=""' if namespace else 'namespace!="",pod!=""'
    per_pod = "sum by (<<.GroupBy>>) (rate({series}{{<<.LabelMatchers>>}}[" + WINDOW + "]))"
    return {
        "seriesQuery": f"{QUEUE_SERIES}{{{where}}}",
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": f"^{QUEUE_SERIES}$", "as": QUEUE_METRIC},
        # no traffic: both rates are 0 and clamp_min keeps the ratio 0 instead of NaN
        "metricsQuery": f"{per_pod.format(series=QUEUE_SERIES)} / clamp_min({per_pod.format(series=SUCCESS_SERIES)}, 1e-9)",
    }


def render_adapter_query(template: str, matchers: str = 'namespace="default",pod=~"triton-.*"',
                         group_by: str = "pod") -> str:
    """The PromQL prometheus-adapter sends for ``template`` (what the offline checks parse)."""
    return (template.replace("<<.LabelMatchers>>", matchers).replace("<<.GroupBy>>", group_by)
            .replace("<<.Series>>", QUEUE_SERIES))


def load_alert_rules(path: Path) -> list[dict[str, Any]]:
    """The ``groups`` of a Prometheus rules file; one clear error when it is not one."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DeployError(f"--alert-rules {path}: not readable YAML ({first})") from None
    groups = data.get("groups") if isinstance(data, dict) else None
    if not isinstance(groups, list) or not groups:
        raise DeployError(f"--alert-rules {path}: not a Prometheus rules file (expected a top-level 'groups' list, "
                          "as 'tritonfleet monitor --alert-rules' writes)")
    for i, group in enumerate(groups):
        if not isinstance(group, dict) or not group.get("name") or not isinstance(group.get("rules"), list):
            raise DeployError(f"--alert-rules {path}: groups[{i}] needs a 'name' and a 'rules' list")
    return groups
