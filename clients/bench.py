"""Benchmark sweep: every chosen model at every concurrency, joined with its accuracy.

The result, :class:`BenchReport`, is plain JSON (``save``/``load``) that
:mod:`clients.report` renders. Each model entry says what the model is (from the
repository's ``manifest.json``: member, baseline, ensemble or pipeline; precision; size),
its top-1 accuracy on a labelled split measured through the server, and one
:class:`LoadResult` per concurrency from the asyncio/callback load generator or from
perf_analyzer.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from clients.accuracy import evaluate_accuracy
from clients.infer import TritonClient
from clients.loadgen import LoadConfig, LoadResult, run_load

PIPELINE_KINDS = ("ensemble", "pipeline")


@dataclass
class ModelBench:
    model: str
    kind: str  # member | baseline | ensemble | pipeline | model
    precision: str | None = None
    pipeline: str | None = None
    size_bytes: int | None = None
    accuracy: float | None = None
    samples: int = 0
    runs: list[LoadResult] = field(default_factory=list)
    member: str | None = None  # the member a precision variant was derived from
    max_abs_error: float | None = None  # worst parity error vs PyTorch fp32 (from the manifest)

    @property
    def peak(self) -> LoadResult | None:
        """The run with the highest throughput."""
        return max(self.runs, key=lambda r: r.infer_per_s) if self.runs else None

    @classmethod
    def from_dict(cls, data: dict) -> ModelBench:
        return cls(**{**data, "runs": [LoadResult.from_dict(r) for r in data.get("runs", [])]})


@dataclass
class BenchReport:
    meta: dict
    models: list[ModelBench]

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": self.meta, "models": [asdict(m) for m in self.models]}, indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> BenchReport:
        data = json.loads(Path(path).read_text())
        return cls(data["meta"], [ModelBench.from_dict(m) for m in data["models"]])


def describe_models(repository: Path) -> list[ModelBench]:
    """Every model of a tritonfleet repository (fusion steps excluded), from its manifest."""
    from builder.repository.manifest import read_manifest

    manifest = read_manifest(Path(repository))
    out = []
    for name, rec in sorted(manifest["models"].items()):
        kind = rec.get("kind", "model")
        if kind == "fusion":
            continue
        owners = rec.get("owners", [])
        errors = [p["max_abs_error"] for p in rec.get("parity") or [] if p.get("max_abs_error") is not None]
        out.append(ModelBench(name, kind, rec.get("precision"), owners[0] if owners else None, rec.get("size_bytes"),
                              member=rec.get("member"), max_abs_error=max(errors) if errors else None))
    order = {"member": 0, "baseline": 1, "ensemble": 2, "pipeline": 3}
    return sorted(out, key=lambda m: (order.get(m.kind, 4), m.model))


def accepts(repository: Path, model: str, inputs: Sequence[np.ndarray]) -> bool:
    """Whether ``model``'s config takes arrays shaped like ``inputs`` (batch dimension aside)."""
    from builder.dtypes import from_numpy
    from builder.repository.config import parse_pbtxt, tensors_of

    config = Path(repository) / model / "config.pbtxt"
    if not config.is_file():
        return False
    wanted = list(tensors_of(parse_pbtxt(config.read_text()), "input").values())
    given = [(from_numpy(a.dtype), tuple(a.shape[1:])) for a in inputs]
    return len(wanted) == len(given) and all(
        dt == gdt and len(dims) == len(gdims) and all(d in (-1, g) for d, g in zip(dims, gdims))
        for (dt, dims), (gdt, gdims) in zip(wanted, given))


def labelled_split(repository: Path, spec_path: Path | None = None):
    """``(inputs, labels, description)`` of the test split of ``spec_path`` or, by default, of
    the first pipeline in the repository whose spec names one."""
    from builder.data import load_split
    from builder.errors import SpecError
    from builder.repository.manifest import read_manifest
    from builder.specs import load_spec, parse_spec

    if spec_path is not None:
        spec = load_spec(spec_path)
    else:
        spec = None
        for name, pipe in sorted(read_manifest(Path(repository))["pipelines"].items()):
            try:  # the manifest keeps each resolved spec; its files may have moved since
                candidate = parse_spec(pipe["spec"], base_dir=Path("/"), source=f"manifest pipeline {name}")
            except SpecError:
                continue
            if candidate.data is not None and candidate.data.test is not None:
                spec = candidate
                break
    if spec is None:
        return None
    split = load_split(spec, "test")
    if split is None:
        return None
    return split.inputs, split.labels, f"{spec.name}: data.test of {spec.data.path.name} ({len(split)} samples)"


def sweep(
    url: str,
    models: Sequence[ModelBench],
    inputs: Sequence[np.ndarray] | None,
    labels: np.ndarray | None,
    concurrencies: Sequence[int],
    batch_size: int = 1,
    window_s: float = 1.0,
    engine: Literal["loadgen", "perf_analyzer"] = "loadgen",
    progress: bool = True,
    meta: dict | None = None,
) -> BenchReport:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[bold]bench[/] {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    results = []
    with Progress(*columns, disable=not progress, transient=True) as bar, TritonClient(url) as client:
        task = bar.add_task("", total=len(models) * (len(concurrencies) + 1))
        for model in models:
            entry = replace(model, runs=[])
            bar.update(task, description=f"{model.model} accuracy")
            if labels is not None and inputs is not None:
                res = evaluate_accuracy(client, model.model, inputs, labels)
                entry.accuracy, entry.samples = res.accuracy, res.samples
            bar.advance(task)
            for conc in concurrencies:
                bar.update(task, description=f"{model.model} concurrency {conc}")
                entry.runs.append(_measure(url, model.model, conc, batch_size, window_s, engine, inputs))
                bar.advance(task)
            results.append(entry)
    info = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {_cpu_count()} CPUs, {platform.system()}",
        "url": url, "engine": engine, "batch_size": batch_size, "concurrency": list(concurrencies),
        "window_s": window_s, **(meta or {}),
    }
    return BenchReport(info, results)


def _measure(url, model, concurrency, batch_size, window_s, engine, inputs) -> LoadResult:
    if engine == "perf_analyzer":
        from clients.perf import PerfAnalyzerConfig, run_perf_analyzer

        return run_perf_analyzer(PerfAnalyzerConfig(model, url, concurrency=(concurrency,), batch_size=batch_size,
                                                    measurement_interval_ms=int(window_s * 1000)))[0]
    config = LoadConfig(model, concurrency=concurrency, batch_size=batch_size, warmup_s=min(1.0, window_s),
                        window_s=window_s, max_windows=6)
    return run_load(url, config, inputs)


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
