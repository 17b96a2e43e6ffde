"""What the pipeline model publishes about its traffic (``tritonfleet monitor``)."""

from __future__ import annotations

from pydantic import Field

from tritonfleet.builder.spec.common import _Strict


class MonitoringSpec(_Strict):
    """Metrics of classification pipelines (fusion step, cascade, route): predicted classes,
    confidence, member disagreement and per-input summaries, binned like the reference profile
    the build computes on ``data.validation``. Detection and chained pipelines publish none."""

    enabled: bool = True
    bins: int = Field(default=10, ge=2, le=50)  # reference quantile bins per monitored quantity
    # per-sample mean/std of every pipeline input; an ensemble then also hands its inputs to the
    # fusion step (one more copy of each input per request)
    inputs: bool = True
    # seconds counts wait in the pipeline model before they reach Triton's metrics endpoint (each
    # metric call is a stub-to-server round trip); 0: at once, on every request
    flush_s: float = Field(default=0.5, ge=0, le=60)


def publishes_metrics(spec) -> bool:
    """Whether ``spec``'s pipeline model publishes traffic metrics (classification and BLS pipelines)."""
    return spec.monitoring.enabled and spec.fusion_kind in ("classification", "bls")
