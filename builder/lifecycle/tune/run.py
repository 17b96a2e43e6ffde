"""``tritonfleet tune``: search a model's serving settings on the real server, commit the winner.

:func:`tune` resolves what to tune (a model, or an ensemble's step models, jointly), builds
the search space (:mod:`.space`), serves each candidate on the bundled tritonserver it starts
on the repository (or the explicit-mode server at ``url``) and measures it (:mod:`.measure`),
hill-climbs within the budget (:mod:`.search`), and commits the winner as new versions
(:mod:`.commit`) unless the default is already best, the measurement was not sound, or
``dry_run``. The committed versions are then loaded on the server, which is left serving the
repository's configs (the new ones, or the old ones when nothing was committed).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonfleet.builder.errors import RepositoryError
from tritonfleet.builder.lifecycle.tune.commit import CommittedVersion, commit_tuned
from tritonfleet.builder.lifecycle.tune.measure import CandidateServer, LoadSettings
from tritonfleet.builder.lifecycle.tune.search import Goal, Objective, SearchResult, quick_search
from tritonfleet.builder.lifecycle.tune.space import ModelInfo, SearchSpace, apply_settings, build_space, read_settings
from tritonfleet.builder.repository.journal import recover
from tritonfleet.builder.repository.manifest import sha256_file
from tritonfleet.clients.errors import TritonfleetError, UsageError
from tritonfleet.clients.manifest import MANIFEST, Manifest, read_manifest_dict
from tritonfleet.clients.model_config import ensemble_steps, parse_pbtxt

CONFIG = "config.pbtxt"


@dataclass(frozen=True)
class TuneOptions:
    objective: Objective = "throughput"
    latency_budget_ms: float | None = None   # p99; None: the default's measured p99
    budget: int = 8                          # candidates measured, the default included
    concurrency: int = 8
    batch_size: int = 1
    warmup_s: float = 1.0
    window_s: float = 2.0
    max_windows: int = 10
    stability_pct: float = 10.0
    min_gain: float = 0.05                   # relative margin a candidate must win by
    max_instances: int = 4
    dry_run: bool = False
    url: str | None = None                   # a server in explicit mode serving the repository
    progress: bool = True
    server_log: Path | None = None

    def __post_init__(self):
        checks = ((self.budget >= 1, "budget", ">= 1"), (self.concurrency >= 1, "concurrency", ">= 1"),
                  (self.batch_size >= 1, "batch_size", ">= 1"), (self.window_s > 0, "window_s", "> 0"),
                  (self.warmup_s >= 0, "warmup_s", ">= 0"), (self.max_windows >= 3, "max_windows", ">= 3"),
                  (self.stability_pct > 0, "stability_pct", "> 0"), (self.min_gain >= 0, "min_gain", ">= 0"),
                  (self.max_instances >= 1, "max_instances", ">= 1"),
                  (self.latency_budget_ms is None or self.latency_budget_ms > 0, "latency_budget_ms", "> 0"),
                  (self.objective in ("throughput", "latency"), "objective", "throughput or latency"))
        for ok, name, rule in checks:
            if not ok:
                raise UsageError(f"tune {name} must be {rule} (got {getattr(self, name)!r})")


@dataclass
class TuneResult:
    repository: Path
    target: str
    models: list[str]                 # the models tuned (an ensemble's step models, in step order)
    ensemble: bool
    options: dict[str, Any]
    search: SearchResult
    space: SearchSpace
    decision: str
    committed: list[CommittedVersion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def winner_throughput_ratio(self) -> float:
        d, w = self.search.default.measurement, self.search.winner.measurement
        return w.throughput / d.throughput if d.throughput else math.nan


def tuning_models(repo: Path, model: str) -> tuple[list[str], bool]:
    """(models whose settings are tuned, whether ``model`` is an ensemble): the model itself, or
    every non-ensemble model an ensemble's steps reach (nested ensembles included), in step order."""
    proto = _config(repo, model)
    if proto.platform != "ensemble":
        return [model], False
    order: list[str] = []

    def walk(name: str, path: tuple[str, ...]) -> None:
        for step in ensemble_steps(_config(repo, name)):
            if step in path:
                raise RepositoryError(f"ensemble '{model}' calls itself through '{step}'")
            if _config(repo, step).platform == "ensemble":
                walk(step, (*path, step))
            elif step not in order:
                order.append(step)

    walk(model, (model,))
    return order, True


def _config(repo: Path, model: str):
    path = Path(repo) / model / CONFIG
    if not path.is_file():
        raise RepositoryError(f"{path} not found: the repository is incomplete; run 'tritonfleet verify {repo}'")
    return parse_pbtxt(path.read_text())


def users_of(repo: Path, model: str) -> list[str]:
    """Ensembles in the repository that call ``model``."""
    users = []
    for config in sorted(Path(repo).glob(f"*/{CONFIG}")):
        with contextlib.suppress(Exception):
            if model in ensemble_steps(parse_pbtxt(config.read_text())):
                users.append(config.parent.name)
    return users


def measurement_inputs(repo: Path, model: str) -> tuple[Sequence[np.ndarray] | None, str]:
    """The recorded test (or validation) split of a pipeline that owns ``model``, when the model
    takes it; else None (the load generator makes inputs of the model's signature)."""
    from tritonfleet.clients.evaluation.bench import accepts

    try:
        view = Manifest.read(repo)
    except TritonfleetError:
        return None, "generated inputs"
    owners = [*view.models[model].owners] if model in view.models else []
    for pipeline in [*owners, *(p for p in view.pipelines if p not in owners)]:
        record = view.pipelines.get(pipeline)
        for split in ("test", "validation"):
            found = record.splits.get(split) if record else None
            if found is None:
                continue
            try:
                inputs, _ = found.load(repo, record.spec_dir)
            except TritonfleetError:
                continue
            if accepts(repo, model, inputs):
                return inputs, f"{pipeline}: data.{split} ({found.samples} samples)"
    return None, "generated inputs"


@contextlib.contextmanager
def _server(repo: Path, options: TuneOptions, target: str) -> Iterator[str]:
    if options.url:
        yield options.url
        return
    from tritonfleet.clients.server import TritonServer

    with TritonServer(repo, model_control_mode="explicit", load_models=[target], log_path=options.server_log) as server:
        yield server.url("grpc")


def tune(repo: Path, model: str, options: TuneOptions | None = None, output: Path | None = None) -> TuneResult:
    options = options or TuneOptions()
    repo = Path(repo).resolve()
    if not (repo / MANIFEST).is_file():
        raise RepositoryError(f"{repo} has no {MANIFEST}: not a tritonfleet repository (build one with "
                              "'tritonfleet build SPEC')")
    recover(repo)
    manifest = read_manifest_dict(repo)
    if model not in manifest["models"]:
        raise RepositoryError(f"model '{model}' is not in {repo} (models: {', '.join(sorted(manifest['models']))})")
    models, ensemble = tuning_models(repo, model)
    protos = {m: _config(repo, m) for m in models}
    target_mbs = _config(repo, model).max_batch_size
    if (target_mbs and options.batch_size > target_mbs) or (not target_mbs and options.batch_size > 1):
        raise UsageError(f"--batch-size {options.batch_size} is more than '{model}' accepts (max_batch_size "
                         f"{target_mbs}); use --batch-size {max(1, target_mbs)} or less")
    defaults = {m: read_settings(p) for m, p in protos.items()}
    infos = [ModelInfo(m, defaults[m], fixed_max_batch=protos[m].platform == "tensorrt_plan") for m in models]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    space = build_space(model, infos, load=options.concurrency * options.batch_size,
                        max_instances=options.max_instances, cpus=cpus)
    inputs, source = measurement_inputs(repo, model)
    notes = [f"{m} is also called by {', '.join(u)}: their latency changes with it"
             for m in models if (u := [x for x in users_of(repo, m) if x != model])]
    start_sha = sha256_file(repo / MANIFEST)
    goal = Goal(options.objective, options.latency_budget_ms, options.min_gain)
    load = LoadSettings(options.concurrency, options.batch_size, options.warmup_s, options.window_s,
                        options.max_windows, options.stability_pct)
    committed: list[CommittedVersion] = []
    with _server(repo, options, model) as url:
        candidates = CandidateServer(url, repo, model, models, defaults, inputs, load)
        try:
            if options.url:  # a server we did not start: make it serve exactly the repository's configs
                candidates.load_defaults()
            search = _search(space, candidates, options, goal)
            commit, decision = search.decision()
            if commit and options.dry_run:
                decision += " (--dry-run: nothing committed)"
            if commit and not options.dry_run:
                winner = search.winner.settings
                configs = {m: apply_settings(protos[m], winner[m]) for m in models if winner[m] != defaults[m]}
                details = {"objective": options.objective, "latency_budget_ms": search.goal.latency_budget_ms,
                           "settings": {m: s.to_dict() for m, s in winner.items()},
                           "measured": {"default": search.default.measurement.to_dict(),
                                        "winner": search.winner.measurement.to_dict()},
                           "load": {"concurrency": options.concurrency, "batch_size": options.batch_size,
                                    "inputs": source}}
                committed = commit_tuned(repo, model, configs, models, details, expected_manifest_sha=start_sha)
                # the committed versions from their new configs, and any step the last candidate left changed
                stale = [m for m in models if candidates.loaded[m] != defaults[m]]
                candidates.restore(list(dict.fromkeys([*stale, *(c.model for c in committed)])))
                _check_committed(candidates, committed)
            elif options.url:
                candidates.restore()
        except BaseException:
            if options.url:  # leave the server serving the repository's configs
                with contextlib.suppress(Exception):
                    candidates.restore()
            raise
        finally:
            candidates.close()
    result = TuneResult(repo, model, models, ensemble, {**asdict(options), "inputs": source, "server_log": None},
                        search, space, decision, committed, notes)
    if output is not None:
        from tritonfleet.builder.lifecycle.tune.report import write

        write(result, output)
    return result


def _search(space: SearchSpace, candidates: CandidateServer, options: TuneOptions, goal: Goal) -> SearchResult:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[bold]tune[/] {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not options.progress, transient=True) as bar:
        task = bar.add_task("", total=options.budget)

        def measure(coordinate):
            bar.update(task, description=f"{space.target}: {space.describe(coordinate)[:70]}")
            return candidates.measure(space.settings_at(coordinate))

        result = quick_search(space, measure, options.budget, goal, on_trial=lambda trial: bar.advance(task))
        bar.update(task, completed=options.budget)
    return result


def _check_committed(candidates: CandidateServer, committed: list[CommittedVersion]) -> None:
    """Every committed version is the one the server serves, and the target answers as before."""
    client = candidates.client._client
    missing = [f"{c.model} v{c.version}" for c in committed if not client.is_model_ready(c.model, str(c.version))]
    problem = candidates.check()
    if missing or problem:
        raise RepositoryError("the tuned versions were committed but the server "
                              + (f"does not serve {', '.join(missing)}" if missing else f"answers differently: {problem}")
                              + f"; 'tritonfleet rollback {candidates.repository} {candidates.target}' restores the "
                              "default")
