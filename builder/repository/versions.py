"""Which version of a model Triton serves, changed through the same journaled commit as builds.

:func:`serve_version` pins a model to one version (``version_policy: specific``) or, with
``version=None``, back to Triton's default (the newest). The new ``config.pbtxt`` and the
manifest are staged, then committed as one journaled step list ending with the manifest
(:mod:`.journal`), so a crash leaves either the old or the new state, and a server in
``tritonfleet serve`` watch mode reloads the model at the commit point. :func:`rollback` is
the user-facing form: the version before the one served now, a given one, or the latest.

Versions committed by ``tritonfleet tune`` (:mod:`tritonfleet.builder.lifecycle.tune.commit`)
carry the config they are served with in the manifest (``versions[N].config``, the
``config.pbtxt`` text without ``version_policy``), and so does every version beside them: a
config is per model in Triton, so serving another version writes that version's recorded
config (rollback restores the default settings with the default version). A tuned ensemble
version also lists the step models tuned with it (``versions[N].tuned.models``): leaving it
serves those models' previous versions again, returning to it serves their tuned ones, all
in the same journaled commit (:attr:`ServedVersion.related`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from tritonfleet.builder.errors import RepositoryError
from tritonfleet.builder.repository.journal import Journal, recover, staging_folder
from tritonfleet.builder.repository.manifest import sha256_file, write_json_atomic
from tritonfleet.clients.manifest import MANIFEST, read_manifest_dict
from tritonfleet.clients.model_config import parse_pbtxt, to_pbtxt

CONFIG = "config.pbtxt"


@dataclass(frozen=True)
class ServedVersion:
    model: str
    served: int          # the version Triton serves after the change
    previous: list[int]  # what it served before
    available: list[int]
    related: tuple[ServedVersion, ...] = ()  # models a tuned ensemble version changed with it


def versions_on_disk(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def served_versions(repo: Path, model: str) -> tuple[list[int], list[int]]:
    """(versions served now, versions on disk) of ``model``."""
    folder = Path(repo) / model
    available = versions_on_disk(folder)
    proto = parse_pbtxt((folder / CONFIG).read_text())
    return list(proto.version_policy.specific.versions) or [max(available)], available


def serve_version(repo: Path, model: str, version: int | None, note: dict | None = None) -> ServedVersion:
    """Serve ``version`` of ``model`` (``None``: the newest, Triton's default policy); ``note``:
    fields recorded on the model's manifest record in the same commit (``tritonfleet promote``'s evidence)."""
    repo = Path(repo).resolve()
    recover(repo)
    manifest = read_manifest_dict(repo)
    record = manifest["models"].get(model)
    if record is None:
        raise RepositoryError(f"model '{model}' is not in {repo} (models: {', '.join(sorted(manifest['models']))})")
    served, available = served_versions(repo, model)
    if version is not None and version not in available:
        raise RepositoryError(f"'{model}' has no version {version} (versions on disk: {available})")
    plan = {model: version, **_related(repo, manifest, record, served, max(available) if version is None else version)}
    done = []
    with staging_folder(repo) as staging:
        journal = Journal(str(repo), str(staging))
        for name, wanted in plan.items():
            done.append(_stage(repo, staging, journal, name, manifest["models"][name], wanted))
        record.update(note or {})
        write_json_atomic(staging / MANIFEST, manifest)
        journal.commit(staging / MANIFEST)
    return replace(done[0], related=tuple(done[1:]))


def _related(repo: Path, manifest: dict, record: dict, served: list[int], target: int) -> dict[str, int]:
    """Models to move with a tuned ensemble version: back to their previous versions when
    leaving it, to their tuned versions when returning to it (each only where it still applies)."""
    versions = record.get("versions") or {}
    plan: dict[str, int] = {}
    if served != [target]:
        for v in served:
            for name, info in ((versions.get(str(v)) or {}).get("tuned") or {}).get("models", {}).items():
                if name in manifest["models"] and served_versions(repo, name)[0] == [info["version"]] \
                        and info["from"] in versions_on_disk(repo / name):
                    plan[name] = info["from"]
        for name, info in ((versions.get(str(target)) or {}).get("tuned") or {}).get("models", {}).items():
            if name in manifest["models"] and info["version"] in versions_on_disk(repo / name):
                plan[name] = info["version"]
    return plan


def _stage(repo: Path, staging: Path, journal: Journal, model: str, record: dict, version: int | None) -> ServedVersion:
    """Stage the config of ``model`` serving ``version`` (its recorded config, else the current
    one) and update its record."""
    served, available = served_versions(repo, model)
    chosen = max(available) if version is None else version
    entry = (record.get("versions") or {}).get(str(chosen)) or {}
    proto = parse_pbtxt(entry.get("config") or (repo / model / CONFIG).read_text())
    if version is None:
        proto.ClearField("version_policy")
    else:
        proto.version_policy.specific.versions[:] = [version]
    staged = staging / model / CONFIG
    staged.parent.mkdir(parents=True)
    staged.write_text(to_pbtxt(proto), encoding="utf-8")
    journal.replace(staged, repo / model / CONFIG, staging / ".replaced" / f"{model}.{CONFIG}")
    record["files"][CONFIG] = sha256_file(staged)
    record["version_policy"] = None if version is None else {"specific": [version]}
    if entry.get("tuned"):
        record["tuned"] = {"version": chosen, "base_config_sha256": entry["tuned"]["base_config_sha256"]}
    else:
        record.pop("tuned", None)
    return ServedVersion(model, chosen, served, available)


def rollback(repo: Path, model: str, version: int | None = None, latest: bool = False) -> ServedVersion:
    """Serve ``version`` of ``model``; by default the version before the one served now (after
    ``tritonfleet promote``: the version that served before the promotion)."""
    if latest:
        return serve_version(repo, model, None)
    if version is None:
        if not (Path(repo) / model / CONFIG).is_file():
            raise RepositoryError(f"model '{model}' is not in {Path(repo).resolve()}")
        served, available = served_versions(repo, model)
        promoted = (read_manifest_dict(repo)["models"].get(model) or {}).get("promotion") or {}
        before = [v for v in promoted.get("previous", []) if v in available and v not in served]
        older = [v for v in available if v < min(served)]
        if promoted.get("version") in served and before:
            older = [max(before)]
        if not older:
            raise RepositoryError(f"'{model}' serves version {min(served)}; no earlier version is kept "
                                  f"(versions on disk: {available})")
        version = older[-1]
    return serve_version(repo, model, version)
