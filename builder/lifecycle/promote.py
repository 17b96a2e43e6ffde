"""``tritonfleet promote``: a candidate version serves only if it is better than the one serving now.

A candidate is a version on disk that is not served (``tritonfleet build SPEC --candidate``
writes one and keeps ``version_policy`` pinned to what serves). :func:`promote`

1. picks the two versions (current: the newest served; candidate: given, or the newest above
   the current one) and the pipeline that owns the model and recorded a labelled ``data.test``;
   its spec's ``promotion:`` policy applies, overridden by the caller;
2. loads *both* versions on a live server — its own bundled tritonserver on the repository
   (explicit model control, only this model, ``version_policy: specific [current, candidate]``
   given as a config override: no file changes), or a running server in explicit mode
   (``url``), which is told to reload the model from the repository afterwards;
3. measures top-1 on ``data.test`` through the server, request by request to each
   ``model_version``: the paired difference with the exact McNemar p-value and a paired
   bootstrap interval (:mod:`tritonfleet.clients.evaluation.stats`);
4. unless ``skip_load``, runs the load generator on each version in alternating rounds
   (current, candidate, candidate, current, ...): p99 and throughput, median of the rounds
   with their range;
5. decides (:mod:`.promote_gate`) and, when every criterion passes, serves the candidate
   through the same journaled commit as builds and rollbacks
   (:func:`tritonfleet.builder.repository.versions.serve_version`), recording the evidence in
   the model's manifest record (``promotion``); ``tritonfleet rollback`` then serves the version
   that served before.

Route pipelines with ``shadow: true`` that call the model add their live agreement counters
(:mod:`.promote_shadow`) to the report.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonfleet.builder.errors import RepositoryError, SpecError
from tritonfleet.builder.lifecycle.promote_gate import (
    LoadComparison,
    Verdict,
    abba_order,
    decide,
    summarize_rounds,
)
from tritonfleet.builder.lifecycle.promote_shadow import ShadowEvidence, evidence, scrape, shadow_routes
from tritonfleet.builder.repository.journal import recover
from tritonfleet.builder.repository.versions import CONFIG, serve_version, served_versions
from tritonfleet.builder.spec.promotion import PromotionPolicy
from tritonfleet.clients.errors import ServerError
from tritonfleet.clients.evaluation.stats import AccuracyComparison, accuracy_gain
from tritonfleet.clients.manifest import MANIFEST, Manifest, PipelineRecord
from tritonfleet.clients.model_config import parse_pbtxt, tensors_of

RESAMPLES = 2000     # paired bootstrap resamples
SEED = 0             # of the bootstrap: the same evidence gives the same interval
WARMUP_S = 0.5       # per load round, before its windows
MAX_WINDOWS = 5      # per load round: stops earlier once the last 3 are stable


@dataclass(frozen=True)
class Versions:
    served: list[int]     # what serves now
    available: list[int]  # on disk
    current: int          # the served version requests without a version get (the newest served)
    candidate: int


def choose_versions(repository: Path, model: str, candidate: int | None = None) -> Versions:
    served, available = served_versions(repository, model)
    current = max(served)
    if candidate is None:
        newer = [v for v in available if v > current and v not in served]
        if not newer:
            raise RepositoryError(
                f"'{model}' has no candidate version: it serves {served} and has no newer version on disk "
                f"(versions: {available}); build one with 'tritonfleet build SPEC --candidate', or name an older one "
                "with --candidate-version")
        candidate = newer[-1]
    elif candidate not in available:
        raise RepositoryError(f"'{model}' has no version {candidate} (versions on disk: {available})")
    elif candidate in served:
        raise RepositoryError(f"version {candidate} of '{model}' already serves (served: {served}); "
                              "name a version that does not, or build one with 'tritonfleet build SPEC --candidate'")
    return Versions(served, available, current, candidate)


def owning_pipeline(manifest: Manifest, model: str) -> PipelineRecord:
    """The first pipeline (by name) that owns ``model`` and recorded a labelled test split."""
    record = manifest.models.get(model)
    if record is None:
        raise RepositoryError(f"model '{model}' is not in {manifest.repository} "
                              f"(models: {', '.join(sorted(manifest.models))})")
    owners = [manifest.pipelines[o] for o in sorted(record.owners) if o in manifest.pipelines]
    for pipeline in owners:
        split = pipeline.splits.get("test")
        if split is not None and split.labels is not None:
            return pipeline
    raise SpecError(f"model '{model}' belongs to pipeline {', '.join(p.name for p in owners) or '(none)'}, whose "
                    "build recorded no labelled data.test; promote measures both versions on it: add "
                    "data: {test: {inputs: ..., labels: ...}} to the spec and rebuild")


def policy_for(pipeline: PipelineRecord, overrides: Mapping[str, Any] | None = None) -> PromotionPolicy:
    """The spec's ``promotion:`` (defaults where it has none), with ``overrides`` applied."""
    from pydantic import ValidationError

    recorded = (pipeline.raw.get("spec") or {}).get("promotion") or {}
    merged = {**recorded, **{k: v for k, v in (overrides or {}).items() if k != "load"}}
    merged["load"] = {**(recorded.get("load") or {}), **((overrides or {}).get("load") or {})}
    try:
        return PromotionPolicy.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SpecError(f"promotion policy of pipeline '{pipeline.name}': {problems}") from None


def classifier_signature(repository: Path, model: str, inputs: int) -> str:
    """The output holding class scores ``[classes]``; one clear error for models promote cannot judge."""
    proto = parse_pbtxt((Path(repository) / model / CONFIG).read_text(encoding="utf-8"))
    ins, outs = tensors_of(proto, "input"), tensors_of(proto, "output")
    if proto.platform == "ensemble" or proto.max_batch_size == 0:
        raise SpecError(f"'{model}' is {'an ensemble' if proto.platform == 'ensemble' else 'not batching'}; promote "
                        "compares versions of a batching model (a member or baseline)")
    if len(ins) != inputs:
        raise SpecError(f"'{model}' takes {len(ins)} inputs ({', '.join(ins)}) but data.test holds {inputs} array(s); "
                        "promote compares models that take the pipeline's input (not chained members)")
    name, (_, dims) = next(iter(outs.items()))
    if len(dims) != 1 or dims[0] < 2:
        raise SpecError(f"'{model}' first output '{name}' has shape {list(dims)}; promote compares classifiers "
                        "whose first output is class scores [classes]")
    return name


def version_override(repository: Path, model: str, versions: Sequence[int]) -> str:
    """The model's config as JSON with ``version_policy: specific`` on ``versions`` (a load override)."""
    from google.protobuf import json_format

    proto = parse_pbtxt((Path(repository) / model / CONFIG).read_text(encoding="utf-8"))
    proto.version_policy.specific.versions[:] = sorted(set(versions))
    return json_format.MessageToJson(proto, preserving_proto_field_name=True)


@contextlib.contextmanager
def comparison_server(repository: Path, model: str, versions: Sequence[int], url: str | None = None,
                      log_path: Path | None = None) -> Iterator[str]:
    """gRPC address of a live server with every one of ``versions`` of ``model`` loaded.

    ``url``: a running server in explicit model control; on exit the model is reloaded from the
    repository (its config.pbtxt: what serves after the promotion, or before)."""
    from tritonfleet.clients.infer import TritonClient

    override = version_override(repository, model, versions)
    if url is None:
        from tritonfleet.clients.server import TritonServer

        with TritonServer(repository, model_control_mode="explicit", load_models=[model], log_path=log_path) as server:
            with TritonClient(server.url("grpc")) as client:
                _load_versions(client, model, override, versions)
            yield server.url("grpc")
        return
    with TritonClient(url) as client:
        if not client.is_ready():
            raise ServerError(f"no ready tritonserver at {url}; start one in explicit model control "
                              "('tritonfleet serve REPO') or leave out --url to use a bundled one")
        _load_versions(client, model, override, versions)
    try:
        yield url
    finally:
        with TritonClient(url) as client:
            client.load_model(model)  # back to the repository's config.pbtxt


def _load_versions(client, model: str, override: str, versions: Sequence[int]) -> None:
    try:
        client.load_model(model, config=override)
    except ServerError as exc:
        if "explicit" in str(exc).lower() or "polling" in str(exc).lower() or "mode" in str(exc).lower():
            raise ServerError(f"{exc}; promote needs a server in explicit model control "
                              "(--model-control-mode=explicit, as 'tritonfleet serve' runs it)") from None
        raise
    missing = [v for v in versions if not client.is_ready(model, v)]
    if missing:
        raise ServerError(f"'{model}' versions {missing} did not become ready at {client.url}")


def served_correct(client, model: str, version: int, inputs: tuple[np.ndarray, ...], labels: np.ndarray,
                   output: str, batch_size: int) -> np.ndarray:
    """Per-sample top-1 correctness of one version, through the server."""
    scores = client.infer_batched(model, inputs, batch_size=batch_size, outputs=[output], version=version)[output]
    return np.asarray(scores).reshape(len(scores), -1).argmax(axis=1) == np.asarray(labels).astype(np.int64)


def load_comparison(url: str, model: str, versions: Versions, inputs: tuple[np.ndarray, ...],
                    policy: PromotionPolicy, advance=lambda name: None) -> LoadComparison:
    """Both versions under the same load in alternating rounds; median and range per version."""
    from tritonfleet.clients.loadgen import LoadConfig, run_load

    load = policy.load
    runs: dict[str, list] = {"current": [], "candidate": []}
    order = abba_order(load.rounds)
    for which in order:
        version = versions.current if which == "current" else versions.candidate
        advance(f"load {which} v{version}")
        config = LoadConfig(model, concurrency=load.concurrency, batch_size=load.batch_size, warmup_s=WARMUP_S,
                            window_s=load.window_s, max_windows=MAX_WINDOWS, version=str(version))
        result = run_load(url, config, list(inputs))
        if not result.latency_ms:
            raise ServerError(f"the load run of '{model}' version {version} got no successful response "
                              f"({result.errors} errors: {result.error_messages})")
        runs[which].append(result)

    def summary(results):
        return summarize_rounds([r.latency_ms["p50"] for r in results], [r.latency_ms["p99"] for r in results],
                                [r.infer_per_s for r in results], [r.errors for r in results],
                                [r.stable for r in results])

    return LoadComparison(summary(runs["current"]), summary(runs["candidate"]), tuple(order))


@dataclass
class PromotionReport:
    repository: Path
    model: str
    pipeline: str
    versions: Versions
    policy: PromotionPolicy
    accuracy: AccuracyComparison
    load: LoadComparison | None
    verdict: Verdict
    shadow: list[ShadowEvidence] = field(default_factory=list)
    server: str = ""                      # "bundled" or the --url address
    served_after: list[int] = field(default_factory=list)

    @property
    def promoted(self) -> bool:
        return self.verdict.promote

    def to_dict(self) -> dict[str, Any]:
        v = self.versions
        return {
            "repository": str(self.repository), "model": self.model, "pipeline": self.pipeline,
            "current": v.current, "candidate": v.candidate, "served_before": v.served, "available": v.available,
            "served_after": self.served_after, "server": self.server, "policy": self.policy.model_dump(mode="json"),
            "accuracy": self.accuracy.to_dict(), "load": self.load.to_dict() if self.load else None,
            "verdict": self.verdict.to_dict(), "promoted": self.promoted,
            "shadow": [s.to_dict() for s in self.shadow],
        }


def promote(repository: Path, model: str, *, candidate: int | None = None, url: str | None = None,
            metrics_url: str | None = None, overrides: Mapping[str, Any] | None = None, skip_load: bool = False,
            progress: bool = True, server_log: Path | None = None) -> PromotionReport:
    """Compare ``candidate`` with the version serving now and serve it if the policy says so."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tritonfleet.clients.infer import TritonClient

    repository = Path(repository).resolve()
    if not (repository / MANIFEST).is_file():
        raise RepositoryError(f"{repository} has no {MANIFEST}; build it with 'tritonfleet build SPEC' first")
    recover(repository)
    manifest = Manifest.read(repository)
    pipeline = owning_pipeline(manifest, model)
    policy = policy_for(pipeline, overrides)
    versions = choose_versions(repository, model, candidate)
    inputs, labels = pipeline.splits["test"].load(repository, pipeline.spec_dir)
    output = classifier_signature(repository, model, len(inputs))
    routes = shadow_routes(repository, manifest, model)
    before = _sha(repository / MANIFEST)

    steps = 3 + (0 if skip_load else 2 * policy.load.rounds)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task(f"promote {model}: start server", total=steps)

        def advance(name: str) -> None:
            bar.update(task, description=f"promote {model}: {name}")

        with comparison_server(repository, model, [versions.current, versions.candidate], url, server_log) as grpc:
            bar.advance(task)
            batch = max(1, min(64, _max_batch(repository, model)))
            with TritonClient(grpc) as client:
                advance(f"accuracy v{versions.current}")
                current = served_correct(client, model, versions.current, inputs, labels, output, batch)
                bar.advance(task)
                advance(f"accuracy v{versions.candidate}")
                challenger = served_correct(client, model, versions.candidate, inputs, labels, output, batch)
                bar.advance(task)
            comparison = accuracy_gain(current, challenger, confidence=policy.confidence, resamples=RESAMPLES,
                                       seed=SEED)
            load = None
            if not skip_load:
                def step(name: str) -> None:
                    advance(name)
                    bar.advance(task)

                load = load_comparison(grpc, model, versions, inputs, policy, step)
            verdict = decide(comparison, load, policy)
            metrics = scrape(metrics_url) if routes and metrics_url else None
            shadow = evidence(routes, model, versions.current, versions.candidate, metrics)
            report = PromotionReport(repository, model, pipeline.name, versions, policy, comparison, load, verdict,
                                     shadow, url or "bundled", list(versions.served))
            if verdict.promote:
                advance(f"commit v{versions.candidate}")
                if _sha(repository / MANIFEST) != before:
                    raise RepositoryError(f"{repository} changed while promote compared the versions (a build, "
                                          "rollback or tune?); nothing was promoted: run promote again")
                serve_version(repository, model, versions.candidate, note={"promotion": _promotion_record(report)})
                report.served_after = served_versions(repository, model)[0]
    return report


def _promotion_record(report: PromotionReport) -> dict[str, Any]:
    """What the manifest keeps about the promotion (the full report is --json's)."""
    a = report.accuracy
    return {
        "version": report.versions.candidate, "previous": report.versions.served,
        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "pipeline": report.pipeline, "samples": a.samples, "gain_pt": round(a.gain_pt, 6),
        "ci_pt": [round(x, 6) for x in a.ci_pt], "p_value": a.p_value,
        "latency_regression": None if report.load is None else round(report.load.latency_regression, 6),
        "criteria": {c.name: c.outcome for c in report.verdict.criteria},
    }


def _max_batch(repository: Path, model: str) -> int:
    proto = parse_pbtxt((repository / model / CONFIG).read_text(encoding="utf-8"))
    return proto.max_batch_size or 1


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
