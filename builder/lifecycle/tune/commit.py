"""Commit a tuned configuration as new versions, atomically and rollback-able.

Triton's ``config.pbtxt`` belongs to the model, not to a version, so a tuned config cannot sit
beside the default one on disk. For every model the winner changes (for an ensemble: the step
models it changes, and the ensemble itself), the commit

* adds version ``N+1`` (one above the newest on disk) holding the same files as the version
  served now (hard links, or copies where the filesystem cannot link), so the served artifact
  is unchanged, byte for byte;
* writes the tuned settings into ``config.pbtxt`` with ``version_policy`` pinned to ``N+1``;
* records in ``manifest.json`` the config each version is served with (``versions[N].config``:
  the default text for the versions already there, the tuned text for ``N+1``), what was tuned
  (``versions[N+1].tuned``: target, settings, measurements, the version it was tuned from) and,
  on the model, ``tuned: {version, base_config_sha256}`` (the sha256 of the config the build
  writes for it, so a later build of the same spec keeps the tuned config, and says so);
* for an ensemble, records ``versions[N+1].tuned.models`` (each changed step model and its old and
  new version), so ``tritonfleet rollback REPO ENSEMBLE`` serves all of them as before.

All of it is one journaled commit (:mod:`tritonfleet.builder.repository.journal`) ending with
the manifest, like a build: a crash leaves the old repository or the new one, and
``tritonfleet verify`` checks every file of the new versions like any other.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonfleet.builder.errors import RepositoryError
from tritonfleet.builder.repository.journal import Journal, recover, staging_folder
from tritonfleet.builder.repository.manifest import sha256_file, write_json_atomic
from tritonfleet.builder.repository.versions import CONFIG, served_versions
from tritonfleet.clients.manifest import MANIFEST, read_manifest_dict
from tritonfleet.clients.model_config import parse_pbtxt, to_pbtxt


@dataclass(frozen=True)
class CommittedVersion:
    model: str
    previous: int    # the version served before (the default kept beside the tuned one)
    version: int     # the new, tuned version now served


def config_text(proto) -> str:
    """``config.pbtxt`` text of ``proto`` without its ``version_policy`` (what a build writes)."""
    out = type(proto)()
    out.CopyFrom(proto)
    out.ClearField("version_policy")
    return to_pbtxt(out)


def commit_tuned(repo: Path, target: str, configs: Mapping[str, Any], order: Sequence[str],
                 details: Mapping[str, Any], expected_manifest_sha: str | None = None) -> list[CommittedVersion]:
    """Commit ``configs`` (model -> tuned ``ModelConfig`` proto) as new versions; for an ensemble
    ``target`` also a new version of the ensemble naming them. ``order``: models in load order.
    ``details`` (settings, measurements, objective) go into each new version's ``tuned`` record.
    ``expected_manifest_sha``: refuse when the repository changed since the tuning started."""
    repo = Path(repo).resolve()
    recover(repo)
    manifest_path = repo / MANIFEST
    if expected_manifest_sha is not None and sha256_file(manifest_path) != expected_manifest_sha:
        raise RepositoryError(f"{repo} changed while tuning (a build, rollback or tune committed meanwhile); "
                              "nothing was committed: run 'tritonfleet tune' again")
    manifest = read_manifest_dict(repo)
    target_proto = parse_pbtxt((repo / target / CONFIG).read_text())
    models = [m for m in order if m in configs]
    if target_proto.platform == "ensemble" and target not in configs:
        configs = {**configs, target: target_proto}
        models.append(target)
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    done: list[CommittedVersion] = []
    with staging_folder(repo) as staging:
        journal = Journal(str(repo), str(staging))
        for name in models:
            tuned = {"target": target, "at": when, **details}
            if name == target and target_proto.platform == "ensemble":
                tuned["models"] = {c.model: {"version": c.version, "from": c.previous} for c in done}
            done.append(_stage(repo, staging, journal, manifest["models"][name], name, configs[name], tuned))
        write_json_atomic(staging / MANIFEST, manifest)
        journal.commit(staging / MANIFEST)
    return done


def _stage(repo: Path, staging: Path, journal: Journal, record: dict[str, Any], name: str, proto,
           tuned: dict[str, Any]) -> CommittedVersion:
    folder = repo / name
    served, available = served_versions(repo, name)
    previous, version = max(served), max(available) + 1
    current = parse_pbtxt((folder / CONFIG).read_text())
    default_text = config_text(current)
    base = (record.get("tuned") or {}).get("base_config_sha256") or hashlib.sha256(default_text.encode()).hexdigest()

    versions = record.setdefault("versions", {})
    for v in available:  # every version keeps the config it is served with now
        versions.setdefault(str(v), {}).setdefault("config", default_text)
    files = record["files"]
    prefix = f"{previous}/"
    staged = staging / name / str(version)
    staged.mkdir(parents=True)
    for rel, sha in sorted(files.items()):
        if rel.startswith(prefix):
            _link(folder / rel, staged / rel[len(prefix):])
            files[f"{version}/{rel[len(prefix):]}"] = sha

    new = type(proto)()
    new.CopyFrom(proto)
    new.version_policy.specific.versions[:] = [version]
    config = staging / name / CONFIG
    config.write_text(to_pbtxt(new), encoding="utf-8")
    journal.move(staged, folder / str(version))
    journal.replace(config, folder / CONFIG, staging / ".replaced" / f"{name}.{CONFIG}")

    files[CONFIG] = sha256_file(config)
    kept = {k: v for k, v in (versions.get(str(previous)) or {}).items() if k not in ("config", "tuned")}
    versions[str(version)] = {**kept, "config": config_text(proto),
                              "tuned": {**tuned, "from_version": previous, "base_config_sha256": base}}
    record["version"] = version
    record["version_policy"] = {"specific": [version]}
    record["tuned"] = {"version": version, "base_config_sha256": base}
    return CommittedVersion(name, previous, version)


def _link(src: Path, dst: Path) -> None:
    """A hard link to ``src`` (the same bytes, no space), or a copy where linking fails."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
