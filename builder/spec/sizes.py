"""The sizes of dynamic axes that parity and the served checks try, and inputs of those sizes.

Per dynamic axis: its smallest size, the data's size and a larger one (the declared ``max``
when it is within 8x the data's size, else twice the data's size), or the ``sizes`` the spec
lists. Axes with the same bounds and the same size in the data are sized together, so inputs
whose axes must match (``input_ids``, ``attention_mask``) stay consistent.

Inputs of another size are made from the real samples where there are some: cropped along
the axis, or repeated (wrapped) to a larger size, so token ids stay in the vocabulary and masks
stay 0/1. Without data they are synthetic and well-formed: values inside the declared
``range`` (integers for integer inputs), else uniform [0, 1) floats and 0/1 integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tritonfleet.builder.spec.axes import DynamicAxis
from tritonfleet.builder.spec.models import TensorSpec
from tritonfleet.clients.dtypes import numpy_dtype

DEFAULT_SIZE = 8        # the "data" size of a dynamic axis when there is no data
EXTRA_SAMPLES = 32      # samples per extra size (the data's size uses parity.samples)


@dataclass(frozen=True)
class SizePoint:
    """One combination of sizes of every dynamic axis: ``{(input, axis): size}``."""

    label: str  # "data", "min", "large" or "sizes[i]"
    sizes: tuple[tuple[tuple[str, int], int], ...]

    def as_dict(self) -> dict[tuple[str, int], int]:
        return dict(self.sizes)

    def describe(self) -> str:
        return ", ".join(f"{name}[{axis}]={size}" for (name, axis), size in self.sizes) or "fixed shapes"

    def to_json(self) -> dict[str, int]:
        return {f"{name}[{axis}]": size for (name, axis), size in self.sizes}


def data_sizes(inputs: Sequence[TensorSpec], arrays: Sequence[np.ndarray] | None) -> dict[tuple[str, int], int]:
    """The size of every dynamic axis in the data (a default, fitted to the bounds, without data)."""
    sizes = {}
    for i, t in enumerate(inputs):
        for axis, a in t.dynamic_axes().items():
            sizes[(t.name, axis)] = int(arrays[i].shape[axis]) if arrays is not None else a.fit(DEFAULT_SIZE)
    return sizes


def axis_sizes(axis: DynamicAxis, data: int) -> list[tuple[str, int]]:
    """(label, size) this axis takes at each extra point."""
    if axis.sizes:
        return [(f"sizes[{i}]", s) for i, s in enumerate(axis.sizes)]
    large = axis.max if axis.max is not None and axis.max <= 8 * data else axis.fit(2 * data)
    return [("min", axis.low), ("large", axis.fit(large))]


def size_points(inputs: Sequence[TensorSpec], arrays: Sequence[np.ndarray] | None = None) -> list[SizePoint]:
    """The data's sizes first, then every other combination parity tries (none without dynamic axes)."""
    base = data_sizes(inputs, arrays)
    if not base:
        return [SizePoint("data", ())]
    axes = {(t.name, axis): a for t in inputs for axis, a in t.dynamic_axes().items()}
    per_axis = {key: axis_sizes(axes[key], base[key]) for key in base}
    points = [SizePoint("data", tuple(sorted(base.items())))]
    seen = {points[0].sizes}
    for i in range(max(len(v) for v in per_axis.values())):
        sizes = {key: options[i][1] if i < len(options) else base[key] for key, options in per_axis.items()}
        labels = {options[i][0] for options in per_axis.values() if i < len(options)}
        point = SizePoint("/".join(sorted(labels)), tuple(sorted(sizes.items())))
        if point.sizes not in seen:
            seen.add(point.sizes)
            points.append(point)
    return points


def resize_inputs(inputs: Sequence[TensorSpec], arrays: Sequence[np.ndarray], point: SizePoint,
                  samples: int | None = None) -> tuple[np.ndarray, ...]:
    """``arrays`` (real samples) cropped or wrapped along each dynamic axis to ``point``'s sizes."""
    sizes = point.as_dict()
    out = []
    for t, array in zip(inputs, arrays):
        array = array[:samples] if samples else array
        for axis in t.dynamic_axes():
            size = sizes[(t.name, axis)]
            array = np.take(array, np.arange(size) % array.shape[axis], axis=axis)
        out.append(np.ascontiguousarray(array))
    return tuple(out)


def synthetic_inputs(inputs: Sequence[TensorSpec], point: SizePoint, samples: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Well-formed random inputs of ``point``'s sizes (values inside each input's ``range``)."""
    rng = np.random.default_rng(seed)
    sizes = point.as_dict()
    out = []
    for t in inputs:
        shape = [samples, *[sizes[(t.name, i + 1)] if d == -1 else d for i, d in enumerate(t.shape)]]
        out.append(synthetic_values(t, shape, rng))
    return tuple(out)


def synthetic_values(t: TensorSpec, shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    dtype = numpy_dtype(t.dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        lo, hi = t.range if t.range is not None else (0.0, 1.0)
        return (lo + (hi - lo) * rng.random(shape)).astype(dtype)
    lo, hi = (int(t.range[0]), int(t.range[1])) if t.range is not None else (0, 1)
    return rng.integers(lo, hi + 1, shape).astype(dtype)
