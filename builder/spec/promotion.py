"""The promotion gate of a pipeline: when ``tritonfleet promote`` lets a candidate version serve.

```yaml
promotion:
  min_gain_pt: 0.0              # candidate top-1 minus current, in points, on data.test (>=)
  max_p_value: 0.05             # exact McNemar p-value of that difference (<=); null: not required
  max_latency_regression: 0.10  # candidate p99 / current p99 - 1 (<=); null: not required
  max_throughput_drop: null     # 1 - candidate infer/s / current infer/s (<=); null: reported only
  confidence: 0.95              # of the paired bootstrap interval of the gain
  load: {concurrency: 4, batch_size: 1, rounds: 2, window_s: 1.0}
```

The gain must reach ``min_gain_pt`` (so with ``min_gain_pt > 0`` an equally accurate candidate is
refused) *and* be significant at ``max_p_value``; the load criteria compare the two versions in
alternating rounds (current, candidate, candidate, current, ...).
"""

from __future__ import annotations

from pydantic import Field

from tritonfleet.builder.spec.common import _Strict


class PromotionLoad(_Strict):
    """The short load run on each version (the project's load generator, concurrency mode)."""

    concurrency: int = Field(default=4, ge=1, le=256)
    batch_size: int = Field(default=1, ge=1, le=4096)
    rounds: int = Field(default=2, ge=1, le=20)        # ABBA: round i runs (current, candidate), reversed every other
    window_s: float = Field(default=1.0, gt=0, le=60)  # measurement window; the last 3 are reported


class PromotionPolicy(_Strict):
    min_gain_pt: float = Field(default=0.0, ge=-100, le=100)
    max_p_value: float | None = Field(default=0.05, gt=0, le=1)
    max_latency_regression: float | None = Field(default=0.10, ge=0)
    max_throughput_drop: float | None = Field(default=None, ge=0, le=1)
    confidence: float = Field(default=0.95, gt=0, lt=1)
    load: PromotionLoad = Field(default_factory=PromotionLoad)


def promotion_problems(spec) -> list[str]:
    """A ``promotion:`` block written in the spec needs the labelled test split it is measured on."""
    if "promotion" not in spec.model_fields_set:
        return []
    test = spec.data.test if spec.data is not None else None
    if test is None or test.labels is None:
        return ["promotion: compares versions on data.test, which needs inputs and labels "
                "(data: {test: {inputs: ..., labels: ...}})"]
    return []
