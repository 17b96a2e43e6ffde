"""Run Triton's ``perf_analyzer`` and read its CSV into :class:`LoadResult` objects.

The binary ships in the ``tritonclient`` wheel (``<venv>/bin/perf_analyzer``); builds of
tritonclient 2.51 need ``libb64`` (apt ``libb64-0d``) and ``libcudart`` (pip
``nvidia-cuda-runtime-cu12``), which :func:`perf_environment` puts on ``LD_LIBRARY_PATH``.
Arguments come from :class:`PerfAnalyzerConfig`; ``-f`` writes the CSV that
:func:`parse_perf_csv` turns into the same result objects the asyncio load generator
returns, so both can be compared and reported alike.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tritonfleet.clients.errors import MissingDependencyError, ServerError, UsageError
from tritonfleet.clients.loadgen import LoadResult, ServerTime, WindowStats
from tritonfleet.clients.loadgen.windows import spread

INSTALL_HINT = ("install it with: pip install 'tritonclient[all]==2.51.0' nvidia-cuda-runtime-cu12 and "
                "apt-get install -y libb64-0d (newer perf_analyzer builds need glibc >= 2.38)")


@dataclass(frozen=True)
class PerfAnalyzerConfig:
    model: str
    url: str
    protocol: Literal["grpc", "http"] = "grpc"
    concurrency: tuple[int, ...] | None = (1,)   # sweep values (start:end:step is built from them)
    request_rate: tuple[float, ...] | None = None
    batch_size: int = 1
    measurement_interval_ms: int = 2000
    stability_pct: float = 10.0
    max_trials: int = 10
    input_data: Path | None = None
    extra_args: tuple[str, ...] = ()

    def to_args(self, binary: Path, csv_path: Path) -> list[str]:
        args = [str(binary), "-m", self.model, "-u", self.url, "-i", self.protocol, "-b", str(self.batch_size),
                "-f", str(csv_path), "--measurement-interval", str(self.measurement_interval_ms),
                "-s", f"{self.stability_pct:g}", "-r", str(self.max_trials), "--verbose-csv",
                "-v"]  # -v prints every window ("Pass [n] ..."): read for the windows and for unstable runs
        if self.request_rate:
            args += ["--request-rate-range", _range(self.request_rate)]
        else:
            args += ["--concurrency-range", _range(self.concurrency or (1,))]
        if self.input_data is not None:
            args += ["--input-data", str(self.input_data)]
        return args + list(self.extra_args)


def _range(values) -> str:
    """perf_analyzer sweeps start:end:step; the values must be evenly spaced."""
    values = sorted(values)
    if len(values) == 1:
        return f"{values[0]:g}"
    step = values[1] - values[0]
    if any(abs((b - a) - step) > 1e-9 for a, b in zip(values, values[1:])) or step <= 0:
        raise UsageError(f"perf_analyzer sweeps need evenly spaced values (start:end:step), got {values}")
    return f"{values[0]:g}:{values[-1]:g}:{step:g}"


def locate_perf_analyzer() -> Path:
    candidates = [shutil.which("perf_analyzer"), Path(sys.executable).parent / "perf_analyzer",
                  Path(sys.prefix) / "bin" / "perf_analyzer"]
    for candidate in candidates:
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise MissingDependencyError(f"perf_analyzer not found on PATH or beside {sys.executable}; {INSTALL_HINT}")


def perf_environment() -> dict[str, str]:
    env = dict(os.environ)
    extra = []
    try:
        import nvidia.cuda_runtime

        extra.append(str(Path(next(iter(nvidia.cuda_runtime.__path__))) / "lib"))
    except (ImportError, StopIteration):
        pass
    env["LD_LIBRARY_PATH"] = os.pathsep.join([*extra, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    return env


def write_input_data(path: Path, inputs: Mapping[str, np.ndarray], samples: int = 64) -> Path:
    """perf_analyzer ``--input-data`` JSON with real samples (one per request step, batch 1 rows)."""
    n = min(samples, len(next(iter(inputs.values()))))
    steps = [{name: {"content": np.asarray(a[i]).ravel().tolist(), "shape": list(np.asarray(a[i]).shape)}
              for name, a in inputs.items()} for i in range(n)]
    Path(path).write_text(json.dumps({"data": steps}))
    return Path(path)


def run_perf_analyzer(config: PerfAnalyzerConfig, timeout: float = 900) -> list[LoadResult]:
    binary = locate_perf_analyzer()
    with tempfile.TemporaryDirectory(prefix="tritonfleet-pa-") as tmp:
        csv_path = Path(tmp) / "perf.csv"
        proc = subprocess.run(config.to_args(binary, csv_path), capture_output=True, text=True,
                              env=perf_environment(), timeout=timeout)
        output = proc.stdout + proc.stderr
        if "error while loading shared libraries" in output:
            missing = output.split("error while loading shared libraries:", 1)[1].split(":")[0].strip()
            raise MissingDependencyError(f"perf_analyzer cannot start: {missing} is missing; {INSTALL_HINT}")
        blocks = parse_perf_windows(output, config.measurement_interval_ms / 1e3, config.batch_size)
        if proc.returncode != 0 or not csv_path.is_file():
            if UNSTABLE in output and len(blocks) == 1 and blocks[0].unstable:
                return [blocks[0].unstable_result(config)]  # no CSV then: its windows are all there is
            tail = "\n".join(output.strip().splitlines()[-8:])
            if UNSTABLE in output:
                tail += "\n(an unstable level stops a perf_analyzer sweep: measure one level per call to see its windows)"
            raise ServerError(f"perf_analyzer failed on model '{config.model}' (exit {proc.returncode}):\n{tail}")
        results = parse_perf_csv(csv_path.read_text(), config.model, config.batch_size)
        if len(blocks) == len(results):
            results = [block.attach(r) for block, r in zip(blocks, results)]
        return results


UNSTABLE = "Failed to obtain stable measurement"
_LEVEL = re.compile(r"^\s*Request (?:concurrency|Rate): ([0-9.]+)", re.M)
_PASS = re.compile(r"Pass \[(\d+)\] throughput: ([0-9.eE+-]+) infer/sec\. Avg latency: ([0-9.eE+-]+) usec")


@dataclass
class PerfWindows:
    """The measurement windows (``Pass [n]`` lines of ``-v``) perf_analyzer printed for one level."""

    level: float
    windows: list[WindowStats]
    unstable: bool  # perf_analyzer gave up: no window triple met its rule

    def attach(self, result: LoadResult, stable_windows: int = 3) -> LoadResult:
        """``result`` (from the CSV) with the windows behind it and their spread."""
        reported = self.windows[-stable_windows:]
        result.windows, result.reported_windows = list(self.windows), len(reported)
        result.throughput_spread = spread([w.requests_per_s for w in reported])
        result.latency_spread = spread([w.mean_latency_ms for w in reported])
        return result

    def unstable_result(self, config: PerfAnalyzerConfig, stable_windows: int = 3) -> LoadResult:
        """What the last windows measured, flagged ``stable=False`` (as the load generator reports it)."""
        reported = self.windows[-stable_windows:]
        requests = float(np.mean([w.requests_per_s for w in reported])) if reported else math.nan
        latency = {"mean": float(np.mean([w.mean_latency_ms for w in reported]))} if reported else {}
        rate_mode = bool(config.request_rate)
        result = LoadResult(
            model=config.model, mode="rate" if rate_mode else "concurrency",
            concurrency=0 if rate_mode else int(self.level), request_rate=self.level if rate_mode else None,
            batch_size=config.batch_size, seconds=sum(w.seconds for w in reported), requests=0, errors=0,
            stable=False, requests_per_s=requests, infer_per_s=requests * config.batch_size, latency_ms=latency,
            engine="perf_analyzer")
        return self.attach(result, stable_windows)


def parse_perf_windows(output: str, window_s: float, batch_size: int = 1) -> list[PerfWindows]:
    """Every level's windows from perf_analyzer's verbose output (stdout, then stderr, where its error
    about an unstable level lands in the last block): its infer/s over ``batch_size`` as requests/s,
    its average latency in ms."""
    heads = list(_LEVEL.finditer(output))
    out = []
    for i, head in enumerate(heads):
        body = output[head.end(): heads[i + 1].start() if i + 1 < len(heads) else len(output)]
        windows = [WindowStats(0.0, window_s, 0, 0, float(m.group(2)) / batch_size, float(m.group(3)) / 1e3)
                   for m in _PASS.finditer(body)]
        out.append(PerfWindows(float(head.group(1)), windows, UNSTABLE in body))
    return out


def parse_perf_csv(text: str, model: str, batch_size: int = 1) -> list[LoadResult]:
    """One :class:`LoadResult` per row of perf_analyzer's ``-f`` CSV (latencies in usec)."""
    reader = csv.DictReader(io.StringIO(text.strip()))
    if reader.fieldnames is None or "Inferences/Second" not in reader.fieldnames:
        raise ServerError("not a perf_analyzer CSV: no 'Inferences/Second' column")
    rate_mode = reader.fieldnames[0] == "Request Rate"
    results = []
    for row in reader:
        infer_per_s = float(row["Inferences/Second"])
        us = {k: float(row[k]) for k in row if row[k] not in (None, "") and _number(row[k])}
        latency = {f"p{p}": us[f"p{p} latency"] / 1e3 for p in (50, 90, 95, 99) if f"p{p} latency" in us}
        if "Avg latency" in us:
            latency["mean"] = us["Avg latency"] / 1e3
        server = {model: ServerTime(0, 0, us.get("Server Queue", 0.0), us.get("Server Compute Input", 0.0),
                                    us.get("Server Compute Infer", 0.0), us.get("Server Compute Output", 0.0))}
        level = float(row[reader.fieldnames[0]])
        results.append(LoadResult(
            model=model, mode="rate" if rate_mode else "concurrency",
            concurrency=0 if rate_mode else int(level), request_rate=level if rate_mode else None,
            batch_size=batch_size, seconds=0.0, requests=0, errors=0, stable=True,  # an unstable level has no row
            requests_per_s=infer_per_s / batch_size, infer_per_s=infer_per_s, latency_ms=latency, server=server,
            engine="perf_analyzer",
        ))
    return results


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False
