"""Which version of a model Triton serves, changed through the same journaled commit as builds.

:func:`serve_version` pins a model to one version (``version_policy: specific``) or, with
``version=None``, back to Triton's default (the newest). The new ``config.pbtxt`` and the
manifest are staged, then committed as one journaled step list ending with the manifest
(:mod:`.journal`), so a crash leaves either the old or the new state, and a server in
``tritonfleet serve`` watch mode reloads the model at the commit point. :func:`rollback` is
the user-facing form: the version before the one served now, a given one, or the latest.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def versions_on_disk(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def served_versions(repo: Path, model: str) -> tuple[list[int], list[int]]:
    """(versions served now, versions on disk) of ``model``."""
    folder = Path(repo) / model
    available = versions_on_disk(folder)
    proto = parse_pbtxt((folder / CONFIG).read_text())
    return list(proto.version_policy.specific.versions) or [max(available)], available


def serve_version(repo: Path, model: str, version: int | None) -> ServedVersion:
    """Serve ``version`` of ``model`` (``None``: the newest, Triton's default policy)."""
    repo = Path(repo).resolve()
    recover(repo)
    manifest = read_manifest_dict(repo)
    record = manifest["models"].get(model)
    if record is None:
        raise RepositoryError(f"model '{model}' is not in {repo} (models: {', '.join(sorted(manifest['models']))})")
    served, available = served_versions(repo, model)
    if version is not None and version not in available:
        raise RepositoryError(f"'{model}' has no version {version} (versions on disk: {available})")
    proto = parse_pbtxt((repo / model / CONFIG).read_text())
    if version is None:
        proto.ClearField("version_policy")
    else:
        proto.version_policy.specific.versions[:] = [version]
    with staging_folder(repo) as staging:
        staged = staging / model / CONFIG
        staged.parent.mkdir(parents=True)
        staged.write_text(to_pbtxt(proto), encoding="utf-8")
        journal = Journal(str(repo), str(staging))
        journal.replace(staged, repo / model / CONFIG, staging / ".replaced" / f"{model}.{CONFIG}")
        record["files"][CONFIG] = sha256_file(staged)
        record["version_policy"] = None if version is None else {"specific": [version]}
        write_json_atomic(staging / MANIFEST, manifest)
        journal.commit(staging / MANIFEST)
    return ServedVersion(model, version if version is not None else max(available), served, available)


def rollback(repo: Path, model: str, version: int | None = None, latest: bool = False) -> ServedVersion:
    """Serve ``version`` of ``model``; by default the version before the one served now."""
    if latest:
        return serve_version(repo, model, None)
    if version is None:
        if not (Path(repo) / model / CONFIG).is_file():
            raise RepositoryError(f"model '{model}' is not in {Path(repo).resolve()}")
        served, available = served_versions(repo, model)
        older = [v for v in available if v < min(served)]
        if not older:
            raise RepositoryError(f"'{model}' serves version {min(served)}; no earlier version is kept "
                                  f"(versions on disk: {available})")
        version = older[-1]
    return serve_version(repo, model, version)
