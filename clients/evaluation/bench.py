"""Benchmark sweep: every chosen model at every concurrency, joined with its accuracy.

The result, :class:`BenchReport`, is plain JSON (``save``/``load``) that
:mod:`tritonfleet.clients.evaluation.report` renders. Each model entry says what the model is (from the
repository's ``manifest.json``: member, baseline, student, ensemble or pipeline; precision; size),
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

from tritonfleet.clients.dtypes import from_numpy
from tritonfleet.clients.evaluation.accuracy import evaluate_accuracy
from tritonfleet.clients.infer import TritonClient
from tritonfleet.clients.loadgen import LoadConfig, LoadResult, run_load
from tritonfleet.clients.manifest import Manifest
from tritonfleet.clients.model_config import parse_pbtxt, tensors_of
from tritonfleet.clients.vocabulary import ModelKind


@dataclass
class ModelBench:
    model: str
    kind: str  # member | baseline | student | ensemble | pipeline | model
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

    @property
    def unstable(self) -> list[str]:
        """``model@concurrency`` of every run that never met the stability rule."""
        return [f"{m.model}@{r.concurrency}" for m in self.models for r in m.runs if not r.stable]

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"meta": self.meta, "models": [asdict(m) for m in self.models]}, indent=2))
        return path

    @classmethod
    def load(cls, path: Path) -> BenchReport:
        data = json.loads(Path(path).read_text())
        return cls(data["meta"], [ModelBench.from_dict(m) for m in data["models"]])


def describe_models(manifest: Manifest) -> list[ModelBench]:
    """Every model of a tritonfleet repository (fusion steps excluded), from its manifest."""
    out = []
    for name, rec in manifest.models.items():
        if rec.kind == ModelKind.FUSION.value:
            continue
        out.append(ModelBench(name, rec.kind, rec.precision, rec.owners[0] if rec.owners else None, rec.size_bytes,
                              member=rec.member, max_abs_error=rec.max_abs_error))
    order = {"member": 0, "baseline": 1, "student": 2, "ensemble": 3, "pipeline": 4}
    return sorted(out, key=lambda m: (order.get(m.kind, 5), m.model))


def accepts(repository: Path, model: str, inputs: Sequence[np.ndarray]) -> bool:
    """Whether ``model``'s config takes arrays shaped like ``inputs`` (batch dimension aside)."""
    config = Path(repository) / model / "config.pbtxt"
    if not config.is_file():
        return False
    wanted = list(tensors_of(parse_pbtxt(config.read_text()), "input").values())
    given = [(from_numpy(a.dtype), tuple(a.shape[1:])) for a in inputs]
    return len(wanted) == len(given) and all(
        dt == gdt and len(dims) == len(gdims) and all(d in (-1, g) for d, g in zip(dims, gdims))
        for (dt, dims), (gdt, gdims) in zip(wanted, given))


def labelled_split(manifest: Manifest, split: str = "test"):
    """``(inputs, labels, description)`` of the labelled split the build recorded, or None."""
    found = manifest.labelled_split(split)
    if found is None:
        return None
    pipeline, record = found
    inputs, labels = record.load(manifest.repository, pipeline.spec_dir)
    return inputs, labels, f"{pipeline.name}: data.{split} of {Path(record.path).name} ({record.samples} samples)"


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
    max_windows: int = 10,
    stability_pct: float = 10.0,
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
                entry.runs.append(_measure(url, model.model, conc, batch_size, window_s, engine, inputs, max_windows,
                                           stability_pct))
                bar.advance(task)
            results.append(entry)
    info = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {_cpu_count()} CPUs, {platform.system()}",
        "url": url, "engine": engine, "batch_size": batch_size, "concurrency": list(concurrencies),
        "window_s": window_s, "max_windows": max_windows,
        "stability": f"last 3 windows, max/min <= {1 + stability_pct / 100:g} for throughput and latency "
                     "(perf_analyzer's rule)",
        "stability_pct": stability_pct,
        **(meta or {}),
    }
    return BenchReport(info, results)


def _measure(url, model, concurrency, batch_size, window_s, engine, inputs, max_windows,
             stability_pct: float = 10.0) -> LoadResult:
    if engine == "perf_analyzer":
        from tritonfleet.clients.perf import PerfAnalyzerConfig, run_perf_analyzer

        return run_perf_analyzer(PerfAnalyzerConfig(model, url, concurrency=(concurrency,), batch_size=batch_size,
                                                    measurement_interval_ms=int(window_s * 1000),
                                                    stability_pct=stability_pct, max_trials=max_windows))[0]
    config = LoadConfig(model, concurrency=concurrency, batch_size=batch_size, warmup_s=min(1.0, window_s),
                        window_s=window_s, max_windows=max_windows, stability_pct=stability_pct)
    return run_load(url, config, inputs)


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
