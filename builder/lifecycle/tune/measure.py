"""Serve a candidate on the real server and measure it with the project's load generator.

Candidates are loaded through Triton's model-repository API in explicit model-control mode:
``load_model(name, config=<ModelConfig JSON>)`` reloads a model with a config that replaces
its ``config.pbtxt`` for that load, from the model's own folder, without writing a file. Only
the models whose settings change are reloaded, all at once (Triton loads them in parallel),
before the ensemble that calls them when it is reloaded itself (after a commit).
A candidate that fails to load is flagged (Triton keeps serving the previous config).

Before it is measured, a candidate must answer a fixed probe batch like the default did
(floats within 1e-4 + 1e-3 relative, everything else equal): scheduling settings never change
the math, so a difference is a broken candidate. Then the load generator runs at a fixed
concurrency and batch size with perf_analyzer's stability rule
(:mod:`tritonfleet.clients.loadgen.windows`).

:meth:`CandidateServer.restore` loads every changed model with its config from disk again
(Triton ignores a plain ``load_model`` of files that did not change, so the disk config is
sent explicitly).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tritonfleet.builder.lifecycle.tune.search import Measurement
from tritonfleet.builder.lifecycle.tune.space import Settings, apply_settings
from tritonfleet.clients.errors import ServerError
from tritonfleet.clients.infer import TritonClient
from tritonfleet.clients.loadgen import LoadConfig, run_load
from tritonfleet.clients.model_config import parse_pbtxt

CONFIG = "config.pbtxt"


def config_json(proto) -> str:
    """A ``ModelConfig`` as the JSON Triton's load API takes."""
    from google.protobuf import json_format

    return json_format.MessageToJson(proto, preserving_proto_field_name=True)


@dataclass(frozen=True)
class LoadSettings:
    """How each candidate is measured."""

    concurrency: int = 8
    batch_size: int = 1
    warmup_s: float = 1.0
    window_s: float = 2.0
    max_windows: int = 10
    stability_pct: float = 10.0
    load_timeout_s: float = 120.0


class CandidateServer:
    """Loads candidates of ``models`` on the server at ``url`` and measures ``target``."""

    def __init__(self, url: str, repository: Path, target: str, models: Sequence[str],
                 defaults: Mapping[str, Settings], inputs: Sequence[np.ndarray] | None, load: LoadSettings):
        self.url, self.repository, self.target, self.models = url, Path(repository), target, list(models)
        self.defaults = dict(defaults)
        self.loaded = dict(defaults)
        self.inputs = inputs
        self.load = load
        self.client = TritonClient(url, timeout=max(60.0, load.load_timeout_s))
        self.reference: dict[str, np.ndarray] | None = None
        self._probe = None

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ configs
    def disk_config(self, model: str):
        return parse_pbtxt((self.repository / model / CONFIG).read_text())

    def _load(self, model: str, proto) -> None:
        self.client.load_model(model, timeout=self.load.load_timeout_s, config=config_json(proto))

    def load_defaults(self) -> None:
        """Serve exactly the repository's configs (a server given with --url may run others)."""
        failed = self._load_all({m: self.disk_config(m) for m in self.models})
        if failed:
            raise ServerError("cannot load the repository's configs: " + "; ".join(f"{m}: {e}" for m, e in failed.items()))
        self.client.wait_ready([self.target], self.load.load_timeout_s)
        self.loaded = dict(self.defaults)

    def _load_all(self, configs: Mapping[str, object]) -> dict[str, str]:
        """Load several models at once (Triton loads them in parallel); model -> error of those that failed."""
        def one(item):
            model, proto = item
            try:
                self._load(model, proto)
            except ServerError as exc:
                return model, str(exc).split(": ", 1)[-1][:200]
            return model, None

        if len(configs) <= 1:
            results = [one(item) for item in configs.items()]
        else:
            with ThreadPoolExecutor(len(configs)) as pool:
                results = list(pool.map(one, configs.items()))
        return {model: error for model, error in results if error}

    def apply(self, settings: Mapping[str, Settings]) -> str | None:
        """Load the models whose settings differ from what is loaded; the problem, or None."""
        todo = {m: apply_settings(self.disk_config(m), settings[m]) for m in self.models if settings[m] != self.loaded[m]}
        failed = self._load_all(todo)
        for model in todo:
            if model not in failed:
                self.loaded[model] = settings[model]
        if failed:
            return "; ".join(f"failed to load {m}: {e}" for m, e in failed.items())
        try:
            self.client.wait_ready([self.target], self.load.load_timeout_s)
        except ServerError as exc:
            return str(exc)[:200]
        return None

    def restore(self, models: Sequence[str] | None = None) -> None:
        """Load the configs on disk again: the changed models, or ``models`` (after a commit)."""
        todo = [m for m in self.models if self.loaded[m] != self.defaults[m]] if models is None else list(models)
        steps = [m for m in todo if m in self.defaults]
        failed = self._load_all({m: self.disk_config(m) for m in steps})  # step models first, at once
        for model in [m for m in todo if m not in self.defaults]:       # then the ensemble that calls them
            self._load(model, self.disk_config(model))
        if failed:
            raise ServerError("cannot load the repository's configs again: "
                              + "; ".join(f"{m}: {e}" for m, e in failed.items()))
        for model in steps:
            self.loaded[model] = self.defaults[model]
        self.client.wait_ready([self.target], self.load.load_timeout_s)

    # ------------------------------------------------------------------ answers
    def probe(self) -> dict[str, np.ndarray]:
        """The target's outputs on a fixed batch (the first samples of the data)."""
        if self._probe is None:
            meta = self.client.metadata(self.target)
            if self.inputs is not None:
                batch = [np.asarray(a[: max(1, min(8, meta.max_batch_size or 8))]) for a in self.inputs]
            else:
                from tritonfleet.clients.loadgen.requests import random_inputs

                batch = random_inputs(meta, n=max(1, min(8, meta.max_batch_size or 8)))
            self._probe = batch
        return self.client.infer(self.target, self._probe)

    def check(self) -> str | None:
        """None when the target answers the probe like the default did."""
        try:
            got = self.probe()
        except ServerError as exc:
            return f"probe request failed: {str(exc)[:200]}"
        if self.reference is None:
            self.reference = got
            return None
        for name, ref in self.reference.items():
            out = got[name]
            if out.shape != ref.shape:
                return f"output '{name}' has shape {list(out.shape)}, the default's {list(ref.shape)}"
            if np.issubdtype(ref.dtype, np.floating):
                if not np.allclose(out, ref, atol=1e-4, rtol=1e-3):
                    return f"output '{name}' differs from the default's by {float(np.abs(out - ref).max()):.2e}"
            elif not np.array_equal(out, ref):
                return f"output '{name}' differs from the default's"
        return None

    # ------------------------------------------------------------------ measurement
    def measure(self, settings: Mapping[str, Settings]) -> Measurement:
        problem = self.apply(settings) or self.check()
        if problem:
            return Measurement.failed(problem)
        cfg = self.load
        config = LoadConfig(self.target, concurrency=cfg.concurrency, batch_size=cfg.batch_size, warmup_s=cfg.warmup_s,
                            window_s=cfg.window_s, max_windows=max(cfg.max_windows, 3), stability_pct=cfg.stability_pct)
        result = run_load(self.url, config, self.inputs)
        return Measurement(result.infer_per_s, result.latency_ms.get("p99", math.nan), result.stable, result.errors,
                           result.latency_ms.get("p50", math.nan))
