"""Parity of an artifact against the PyTorch reference.

:func:`compare_outputs` checks output names, shapes, NaN/inf and values
(``|actual - reference| <= atol + rtol * |reference|``, numpy's ``allclose`` rule; with
``atol=None`` the error is recorded but not bounded) and
returns a :class:`ParityRecord` with the observed maxima, so the manifest tells how close
each artifact really is, not only that it passed. Top-1 agreement is measured on the first
output when it holds per-sample class scores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonfleet.builder.errors import ValidationError


@dataclass(frozen=True)
class OutputDiff:
    max_abs_error: float
    max_rel_error: float
    min_atol_to_pass: float  # smallest atol that would have passed with the given rtol


@dataclass(frozen=True)
class ParityRecord:
    artifact: str
    precision: str
    runtime: str
    samples: int
    inputs: str  # where the samples came from, e.g. "data.test" or "random(seed=0)"
    atol: float | None  # None: error recorded, not bounded
    rtol: float
    max_abs_error: float
    top1_agreement: float | None
    passed: bool
    outputs: dict[str, OutputDiff] = field(default_factory=dict)
    # per size of the dynamic axes tried: {"point", "sizes", "source", "samples", "max_abs_error",
    # "top1_agreement", "passed"}; empty for models without dynamic axes besides the batch
    sizes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ParityRecord:
        outputs = {k: OutputDiff(**v) for k, v in data.get("outputs", {}).items()}
        return cls(**{**data, "outputs": outputs})


def compare_outputs(
    reference: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    *,
    atol: float | None,
    rtol: float,
    min_top1_agreement: float = 0.0,
    artifact: str = "",
    precision: str = "fp32",
    runtime: str = "onnxruntime",
    inputs: str = "",
    raise_on_failure: bool = True,
) -> ParityRecord:
    """Compare two name->array mappings; raise :class:`ValidationError` on any mismatch."""
    where = artifact or "artifact"
    if list(reference) != list(actual):
        raise ValidationError(
            f"{where}: outputs {list(actual)} differ from the reference's {list(reference)}",
            kind="output-names",
        )
    diffs: dict[str, OutputDiff] = {}
    samples = 0
    for name, ref in reference.items():
        got = np.asarray(actual[name])
        ref = np.asarray(ref)
        if got.shape != ref.shape:
            raise ValidationError(
                f"{where}: output '{name}' has shape {list(got.shape)}, the reference "
                f"{list(ref.shape)}",
                kind="shape",
            )
        if not np.all(np.isfinite(got)):
            bad = int(np.size(got) - np.count_nonzero(np.isfinite(got)))
            raise ValidationError(f"{where}: output '{name}' holds {bad} NaN/inf values", kind="non-finite")
        samples = max(samples, ref.shape[0] if ref.ndim else 1)
        diffs[name] = _diff(ref.astype(np.float64), got.astype(np.float64), rtol)

    first = next(iter(reference))
    top1 = _top1_agreement(reference[first], actual[first])
    max_abs = max((d.max_abs_error for d in diffs.values()), default=0.0)
    close = atol is None or all(d.min_atol_to_pass <= atol for d in diffs.values())
    agree = top1 is None or top1 >= min_top1_agreement
    record = ParityRecord(
        artifact=artifact, precision=precision, runtime=runtime, samples=samples, inputs=inputs,
        atol=atol, rtol=rtol, max_abs_error=max_abs, top1_agreement=top1,
        passed=close and agree, outputs=diffs,
    )
    if raise_on_failure and not record.passed:
        worst = max(diffs, key=lambda n: diffs[n].min_atol_to_pass)
        reason = (
            f"max abs error {diffs[worst].max_abs_error:.3g} on '{worst}' exceeds atol {atol:g} "
            f"(rtol {rtol:g}; atol {diffs[worst].min_atol_to_pass:.3g} would pass)"
            if not close
            else f"top-1 agreement {top1:.4f} is below {min_top1_agreement:.4f}"
        )
        raise ValidationError(f"{where} ({precision}, {runtime}): {reason}", kind="tolerance")
    return record


def merge_records(parts: Sequence[tuple[dict[str, Any], ParityRecord]]) -> ParityRecord:
    """One record for an artifact checked at several sizes: the worst error, the lowest top-1
    agreement, passed only if every size passed; each size's own numbers in ``sizes``."""
    first = parts[0][1]
    if len(parts) == 1 and not parts[0][0].get("sizes"):
        return first
    outputs: dict[str, OutputDiff] = {}
    for _, rec in parts:
        for name, d in rec.outputs.items():
            old = outputs.get(name)
            outputs[name] = d if old is None else OutputDiff(max(old.max_abs_error, d.max_abs_error),
                                                             max(old.max_rel_error, d.max_rel_error),
                                                             max(old.min_atol_to_pass, d.min_atol_to_pass))
    top1 = [r.top1_agreement for _, r in parts if r.top1_agreement is not None]
    sizes = [{**info, "samples": r.samples, "max_abs_error": r.max_abs_error, "top1_agreement": r.top1_agreement,
              "passed": r.passed} for info, r in parts]
    return ParityRecord(
        artifact=first.artifact, precision=first.precision, runtime=first.runtime,
        samples=sum(r.samples for _, r in parts), inputs=first.inputs, atol=first.atol, rtol=first.rtol,
        max_abs_error=max(r.max_abs_error for _, r in parts), top1_agreement=min(top1) if top1 else None,
        passed=all(r.passed for _, r in parts), outputs=outputs, sizes=sizes,
    )


def _diff(ref: np.ndarray, got: np.ndarray, rtol: float) -> OutputDiff:
    if ref.size == 0:
        return OutputDiff(0.0, 0.0, 0.0)
    err = np.abs(got - ref)
    rel = err / np.maximum(np.abs(ref), np.finfo(np.float32).tiny)
    needed = np.max(err - rtol * np.abs(ref))
    return OutputDiff(float(err.max()), float(rel.max()), float(max(needed, 0.0)))


def _top1_agreement(ref: np.ndarray, got: np.ndarray) -> float | None:
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.ndim != 2 or ref.shape[1] < 2 or not np.issubdtype(ref.dtype, np.floating):
        return None
    return float(np.mean(ref.argmax(axis=1) == got.argmax(axis=1)))


# --------------------------------------------------------------------------- runners
def run_torch(model: Any, inputs: Sequence[np.ndarray], output_names: Sequence[str],
              batch_size: int = 256) -> dict[str, np.ndarray]:
    """Run a PyTorch module / ExportedProgram on numpy inputs, batch by batch."""
    import torch

    module = model.module() if isinstance(model, torch.export.ExportedProgram) else model
    chunks: list[tuple[np.ndarray, ...]] = []
    # no_grad, not inference_mode: a TorchScript module run under inference_mode fails inside
    # recurrent ops ("Inference tensors cannot be saved for backward")
    with torch.no_grad():
        for start in range(0, len(inputs[0]), batch_size):
            args = [torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])) for x in inputs]
            chunks.append(tuple(o.detach().cpu().numpy() for o in flatten_outputs(module(*args), output_names)))
    return _join(chunks, output_names)


def flatten_outputs(out: Any, output_names: Sequence[str]) -> tuple[Any, ...]:
    """A model's return value as a tuple of tensors in the spec's output order: a tensor, a
    tuple/list, or a dict (by the spec's output names when its keys are those names, else in
    its own order, as torch.export flattens it)."""
    if isinstance(out, dict):
        if set(output_names) <= set(out):
            return tuple(out[n] for n in output_names)
        return tuple(out.values())
    if isinstance(out, (tuple, list)):
        return tuple(out)
    return (out,)


def run_onnx(path: Path, inputs: Mapping[str, np.ndarray], batch_size: int = 256,
             providers: Sequence[str] = ("CPUExecutionProvider",)) -> dict[str, np.ndarray]:
    """Run an ONNX file with onnxruntime, batch by batch."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=list(providers))
    names = [o.name for o in session.get_outputs()]
    n = len(next(iter(inputs.values())))
    chunks = [
        tuple(session.run(names, {k: v[s:s + batch_size] for k, v in inputs.items()}))
        for s in range(0, n, batch_size)
    ]
    return _join(chunks, names)


def _join(chunks: list[tuple[np.ndarray, ...]], names: Sequence[str]) -> dict[str, np.ndarray]:
    if chunks and len(chunks[0]) != len(names):
        raise ValidationError(
            f"the model returned {len(chunks[0])} outputs, the spec declares {len(names)}: {list(names)}",
            kind="output-names",
        )
    return {name: np.concatenate([c[i] for c in chunks]) for i, name in enumerate(names)}
