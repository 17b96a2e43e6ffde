"""Labelled samples from the spec's ``.npz`` file, checked against the model signature."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tritonfleet.builder.errors import SpecError
from tritonfleet.builder.spec.models import TensorSpec
from tritonfleet.builder.spec.pipeline import PipelineSpec
from tritonfleet.builder.spec.sizes import (
    EXTRA_SAMPLES,
    SizePoint,
    resize_inputs,
    size_points,
    synthetic_inputs,
)
from tritonfleet.clients.dtypes import numpy_dtype
from tritonfleet.clients.manifest import ManifestError, load_npz

SPLITS = ("test", "validation", "calibration", "train")


@dataclass(frozen=True)
class Split:
    name: str
    inputs: tuple[np.ndarray, ...]  # one array per model input, batch first
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.inputs[0])

    def head(self, n: int) -> Split:
        labels = None if self.labels is None else self.labels[:n]
        return Split(self.name, tuple(x[:n] for x in self.inputs), labels)


def load_split(spec: PipelineSpec, split: str) -> Split | None:
    """The named split, or ``None`` when the spec has no data or no such split."""
    if spec.data is None or getattr(spec.data, split) is None:
        return None
    where = f"data.{split}"
    split_spec = getattr(spec.data, split)
    path = spec.data.path

    def get(key: str, field: str) -> np.ndarray:
        try:
            return load_npz(path, [key], f"{where}.{field}")[key]
        except ManifestError as exc:
            raise SpecError(str(exc)) from None

    keys = split_spec.input_keys
    signature = spec.inputs
    if len(keys) != len(signature):
        raise SpecError(
            f"{where}.inputs names {len(keys)} arrays but the models take {len(signature)} inputs "
            f"({', '.join(t.name for t in signature)})"
        )
    inputs = tuple(_check_input(get(k, "inputs"), t, f"{where}.inputs '{k}'") for k, t in zip(keys, signature))
    sizes = {len(x) for x in inputs}
    if len(sizes) != 1 or 0 in sizes:
        raise SpecError(f"{where}.inputs: arrays must hold the same, non-zero number of samples (got {sorted(sizes)})")
    labels = None
    if split_spec.labels is not None:
        labels = get(split_spec.labels, "labels")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise SpecError(
                f"{where}.labels '{split_spec.labels}' must be a 1-D integer array of class indices "
                f"(got {labels.dtype} {list(labels.shape)})"
            )
        if len(labels) != len(inputs[0]):
            raise SpecError(
                f"{where}: {len(labels)} labels for {len(inputs[0])} samples in {path}"
            )
        labels = labels.astype(np.int64)
    return Split(split, inputs, labels)


def _check_input(array: np.ndarray, tensor: TensorSpec, where: str) -> np.ndarray:
    want = numpy_dtype(tensor.dtype)
    shape = list(array.shape[1:])
    ok = len(shape) == len(tensor.shape) and all(d == -1 or d == s for d, s in zip(tensor.shape, shape))
    if array.ndim == 0 or not ok:
        raise SpecError(
            f"{where} has per-sample shape {shape if array.ndim else 'scalar'}; input "
            f"'{tensor.name}' takes {list(tensor.shape)} (arrays are [samples, ...])"
        )
    for axis, a in tensor.dynamic_axes().items():
        if array.ndim > axis and not a.accepts(array.shape[axis]):
            raise SpecError(f"{where} has size {array.shape[axis]} on axis {axis}; input '{tensor.name}' declares "
                            f"{a.describe()} there (dynamic: {{{axis}: ...}})")
    if array.dtype != want:
        same_kind = np.issubdtype(array.dtype, np.floating) == np.issubdtype(want, np.floating)
        if not same_kind or array.dtype == np.bool_:
            raise SpecError(f"{where} has dtype {array.dtype}; input '{tensor.name}' takes {tensor.dtype}")
        array = array.astype(want)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        bad = int(np.argmax(~np.isfinite(array).reshape(len(array), -1).all(axis=1)))
        raise SpecError(f"{where} holds NaN or inf values (first in sample {bad}); clean the data or drop those samples")
    return array


def parity_inputs(spec: PipelineSpec) -> tuple[tuple[np.ndarray, ...], str]:
    """Samples every artifact is validated on, and where they came from.

    Real samples (validation split, else test split) when the spec has data; otherwise
    seeded well-formed noise of the input signature (uniform [0, 1) floats, 0/1 integers, or
    values inside each input's ``range``), dynamic axes at their default size.
    """
    n = spec.parity.samples
    for name in ("validation", "test"):
        split = load_split(spec, name)
        if split is not None:
            return split.head(n).inputs, f"data.{name}[:{min(n, len(split))}]"
    return synthetic_inputs(spec.inputs, size_points(spec.inputs)[0], n), f"random(seed=0, n={n})"


@dataclass(frozen=True)
class Probe:
    """Parity samples at one size of every dynamic axis."""

    key: str            # dataset key: "parity" (the data's sizes) or "parity@<label>"
    point: SizePoint
    inputs: tuple[np.ndarray, ...]
    source: str


def parity_probes(spec: PipelineSpec) -> list[Probe]:
    """The parity samples at the data's sizes, then at every other size parity tries (see
    :mod:`tritonfleet.builder.spec.sizes`): real samples resized where there are some."""
    arrays, source = parity_inputs(spec)
    real = source.startswith("data.")
    points = size_points(spec.inputs, arrays if real else None)
    probes = [Probe("parity", points[0], arrays, source)]
    for i, point in enumerate(points[1:], start=1):
        if real:
            inputs, where = resize_inputs(spec.inputs, arrays, point, EXTRA_SAMPLES), f"{source} resized"
        else:
            n = min(spec.parity.samples, EXTRA_SAMPLES)
            inputs, where = synthetic_inputs(spec.inputs, point, n, seed=i), f"random(seed={i}, n={n})"
        probes.append(Probe(f"parity@{point.label}", point, inputs, where))
    return probes
