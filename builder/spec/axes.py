"""Dynamic axes and value constraints of a model input.

Every ``-1`` in a tensor's ``shape`` is a dynamic axis: exported as a symbolic dimension of
the ONNX model, checked by parity at several sizes, bounded in the TensorRT profile and, when
bounds are declared, checked on every request. Axes are numbered as in the full tensor
``[batch, *shape]`` (what torch, ONNX and TensorRT call them), so for ``shape: [-1]`` the
sequence axis is ``1``; axis ``0`` is the batch, which ``serving.max_batch_size`` bounds::

    - name: ids
      dtype: int64
      shape: [-1]
      dynamic: {1: {min: 1, opt: 64, max: 512}}   # or the short form {1: [1, 64, 512]}
      range: [0, 499]                              # values outside: one clear error per request
    - name: feats
      dtype: float32
      shape: [8]
      finite: true                                 # NaN/inf: one clear error per request

Parity tries, per dynamic axis, its smallest size, the data's size and a larger one (or the
sizes listed in ``sizes``). Axes with the same bounds and the same size in the data are sized
together (``input_ids`` and ``attention_mask`` stay equal).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import Field, model_validator

from tritonfleet.builder.spec.common import _Strict
from tritonfleet.clients.dtypes import FLOAT_DTYPES

MAX_AXIS_SIZE = 1 << 20


class DynamicAxis(_Strict):
    """Bounds of one dynamic axis: the TensorRT profile (min/opt/max), the sizes parity tries
    and, with ``max``, the largest size a request may have."""

    min: int = Field(default=1, ge=1, le=MAX_AXIS_SIZE)
    opt: int | None = Field(default=None, ge=1, le=MAX_AXIS_SIZE)  # TensorRT opt; default: max
    max: int | None = Field(default=None, ge=1, le=MAX_AXIS_SIZE)  # None: unbounded (no TensorRT engine)
    multiple_of: int = Field(default=1, ge=1, le=4096)  # e.g. 4 for a U-Net with two 2x poolings
    sizes: list[int] | None = Field(default=None, min_length=1, max_length=8)  # sizes parity tries

    @model_validator(mode="before")
    @classmethod
    def _short_form(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            if len(value) != 3:
                raise ValueError(f"the short form is [min, opt, max] (3 sizes), got {list(value)}")
            return {"min": value[0], "opt": value[1], "max": value[2]}
        return value

    @model_validator(mode="after")
    def _check(self) -> DynamicAxis:
        top = self.max if self.max is not None else MAX_AXIS_SIZE
        if self.min > top or (self.opt is not None and not self.min <= self.opt <= top):
            raise ValueError(f"needs min <= opt <= max, got min {self.min}, opt {self.opt}, max {self.max}")
        if self.low > top:
            raise ValueError(f"no multiple of {self.multiple_of} lies in [{self.min}, {self.max}]")
        for size in self.sizes or ():
            if not self.accepts(size):
                raise ValueError(f"size {size} in sizes is outside {self.describe()}")
        return self

    @property
    def low(self) -> int:
        """The smallest size a request may have (min rounded up to ``multiple_of``)."""
        return -(-self.min // self.multiple_of) * self.multiple_of

    @property
    def profile(self) -> tuple[int, int, int] | None:
        """TensorRT (min, opt, max), or None without a max."""
        if self.max is None:
            return None
        return self.low, self.opt or self.max, self.max

    def accepts(self, size: int) -> bool:
        return size >= self.min and (self.max is None or size <= self.max) and size % self.multiple_of == 0

    def describe(self) -> str:
        top = "" if self.max is None else str(self.max)
        step = f" in steps of {self.multiple_of}" if self.multiple_of > 1 else ""
        return f"{self.min}..{top}{step}" if top else f">= {self.min}{step}"

    def fit(self, size: int) -> int:
        """The nearest size this axis accepts (rounded up to the multiple, clamped to the bounds)."""
        size = max(self.low, -(-size // self.multiple_of) * self.multiple_of)
        if self.max is not None and size > self.max:
            size = self.max - self.max % self.multiple_of
        return size


class TensorOptions(_Strict):
    """What a tensor declares beyond name, dtype and shape (the base of ``TensorSpec``)."""

    dynamic: dict[int, DynamicAxis] = Field(default_factory=dict)  # axis -> bounds; axes count the batch as 0
    range: tuple[float, float] | None = None  # inputs: every value in [lo, hi]
    finite: bool = False                      # float inputs: no NaN or inf

    @model_validator(mode="after")
    def _check_options(self) -> TensorOptions:
        shape = list(getattr(self, "shape", ()))
        name = getattr(self, "name", "?")
        dtype = getattr(self, "dtype", "float32")
        dims = {i + 1: d for i, d in enumerate(shape)}
        for axis in self.dynamic:
            if axis == 0:
                raise ValueError(f"dynamic axis 0 of '{name}' is the batch: serving.max_batch_size bounds it; "
                                 f"axes of '{name}' are numbered 1..{len(shape)} after it")
            if axis not in dims:
                raise ValueError(f"'{name}' has no axis {axis}: shape {shape} gives axes 1..{len(shape)} "
                                 "(0 is the batch)")
            if dims[axis] != -1:
                raise ValueError(f"axis {axis} of '{name}' has the fixed size {dims[axis]} in shape {shape}; "
                                 "only -1 axes are dynamic (write -1 there to make it one)")
        if self.range is not None:
            lo, hi = self.range
            if lo > hi:
                raise ValueError(f"range [{lo:g}, {hi:g}] of '{name}' must have lo <= hi")
            if dtype == "bool":
                raise ValueError(f"range does not apply to the bool input '{name}'")
            if dtype not in FLOAT_DTYPES and (lo != int(lo) or hi != int(hi)):
                raise ValueError(f"range [{lo:g}, {hi:g}] of the {dtype} input '{name}' must hold integers")
        if self.finite and dtype not in FLOAT_DTYPES:
            raise ValueError(f"finite applies to float inputs; '{name}' is {dtype}")
        return self

    # ---- derived views (self is a TensorSpec)
    def dynamic_axes(self) -> dict[int, DynamicAxis]:
        """Every dynamic axis (each -1 of the shape) with its bounds (defaults where not declared)."""
        shape = getattr(self, "shape", ())
        return {i + 1: self.dynamic.get(i + 1, DynamicAxis()) for i, d in enumerate(shape) if d == -1}

    @property
    def constrained(self) -> bool:
        return (self.range is not None or self.finite
                or any(a.min > 1 or a.max is not None or a.multiple_of > 1 for a in self.dynamic.values()))

    def checks(self) -> dict[str, Any]:
        """What a request must satisfy, as the JSON the serving runtime reads (empty: nothing)."""
        out: dict[str, Any] = {}
        if self.range is not None:
            out["range"] = [float(self.range[0]), float(self.range[1])]
        if self.finite:
            out["finite"] = True
        dims = {str(axis): [a.min, a.max, a.multiple_of] for axis, a in sorted(self.dynamic.items())
                if a.min > 1 or a.max is not None or a.multiple_of > 1}
        if dims:
            out["dims"] = dims
        return out


def output_option_problems(outputs) -> list[str]:
    """Constraints are checked on requests, so they belong to inputs."""
    return [f"output '{t.name}' declares {', '.join(k for k in ('dynamic', 'range', 'finite') if getattr(t, k))}; "
            "these apply to inputs (an output's dynamic axes follow from the inputs)"
            for t in outputs if t.dynamic or t.range is not None or t.finite]


def merge_checks(groups: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The checks of several models fed by the same inputs, combined so that every one holds."""
    merged: dict[str, dict[str, Any]] = {}
    for checks in groups:
        for name, check in checks.items():
            into = merged.setdefault(name, {})
            if "range" in check:
                lo, hi = check["range"]
                old = into.get("range", [float("-inf"), float("inf")])
                into["range"] = [max(lo, old[0]), min(hi, old[1])]
            if check.get("finite"):
                into["finite"] = True
            for axis, (low, high, step) in check.get("dims", {}).items():
                o_low, o_high, o_step = into.setdefault("dims", {}).get(axis, [1, None, 1])
                highs = [h for h in (high, o_high) if h is not None]
                into["dims"][axis] = [max(low, o_low), min(highs) if highs else None, max(step, o_step)]
    return merged


# --------------------------------------------------------------------------- TensorRT profile
@dataclass(frozen=True)
class EngineProfile:
    """The one TensorRT optimization profile of a member: the batch (min/opt/max) and, per input,
    (min, opt, max) of each dynamic axis."""

    batch: Any  # BatchProfile
    axes: dict[str, dict[int, tuple[int, int, int]]] = field(default_factory=dict)

    @property
    def max(self) -> int:
        return self.batch.max

    def shapes(self, per_sample: tuple[int, ...], name: str | None = None) -> tuple[tuple[int, ...], ...]:
        """min, opt and max shapes of input ``name`` whose per-sample shape is ``per_sample``."""
        bounds = self.axes.get(name or "", {})
        out = []
        for k, b in enumerate((self.batch.min, self.batch.opt, self.batch.max)):
            dims = tuple(bounds[i + 1][k] if (i + 1) in bounds else (1 if d == -1 else d)
                         for i, d in enumerate(per_sample))
            out.append((b, *dims))
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        return {"min": self.batch.min, "opt": self.batch.opt, "max": self.batch.max,
                "axes": {n: {str(a): list(v) for a, v in axes.items()} for n, axes in self.axes.items()}}


def engine_axes(inputs) -> dict[str, dict[int, tuple[int, int, int]]]:
    return {t.name: {axis: a.profile for axis, a in t.dynamic_axes().items()}
            for t in inputs if t.dynamic_axes()}


def engine_problems(models) -> list[str]:
    """TensorRT needs a max for every dynamic axis."""
    return [f"'{m.name}' input '{t.name}' axis {axis} has no dynamic max; TensorRT engines need one: "
            f"dynamic: {{{axis}: {{min: {a.min}, opt: N, max: N}}}}"
            for m in models for t in m.inputs for axis, a in t.dynamic_axes().items() if a.max is None]
