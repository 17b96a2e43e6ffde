"""Write a pipeline's models into a Triton model repository, all or nothing.

Everything is first written into a staging folder beside the repository
(``.<repo>.staging-*``, on the same filesystem). Only :meth:`RepositoryWriter.commit`
touches the repository, through a journaled list of atomic renames that ends with the
new ``manifest.json`` (see :mod:`tritonfleet.builder.repository.journal`): an error or a crash before
that point leaves the repository byte-identical, or restorable to it by ``recover``.

Versions: a new model starts at version 1. When a rebuild changes a model's files, they
become version N+1 beside the old versions (the newest ``keep_versions`` are kept) and
Triton's default policy serves the newest; when only its config changes, config.pbtxt is
replaced; an unchanged model is not touched at all (a live server sees nothing).

Several pipelines may share a model (the same member in a mean and a vote ensemble): the
manifest lists each model's ``owners``. A model whose config and files are byte-identical
to what is there is left untouched (a live server sees no change) and gains an owner; a
model another pipeline owns is never changed, and a folder tritonfleet did not write is
never overwritten. Models a pipeline no longer has lose that owner and are removed when
nobody owns them.

Models ``tritonfleet tune`` committed a tuned config for (the manifest's ``tuned`` record) keep
it when the build would write the very config they were tuned from and their files are
unchanged; otherwise the spec's config replaces it and the tuned records are dropped. Either
way :attr:`RepositoryWriter.notes` says so (the build prints it).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tritonfleet.builder.errors import RepositoryError
from tritonfleet.builder.failpoints import failpoint
from tritonfleet.builder.repository.journal import Journal, recover, staging_folder
from tritonfleet.builder.repository.manifest import hash_tree, write_json_atomic
from tritonfleet.builder.repository.plan import ModelPlan
from tritonfleet.builder.repository.versions import served_versions
from tritonfleet.clients.manifest import MANIFEST, read_manifest_dict
from tritonfleet.clients.model_config import parse_pbtxt, to_pbtxt

CONFIG = "config.pbtxt"


class RepositoryWriter:
    """Context manager: stage models, then ``commit`` them into ``repo``."""

    def __init__(self, repo: Path, pipeline: str):
        self.repo = Path(repo).resolve()
        self.pipeline = pipeline
        self.staging: Path | None = None
        self.models: dict[str, dict[str, Any]] = {}
        self.actions: dict[str, tuple[str, int]] = {}
        self.pinned: dict[str, list[int]] = {}  # candidate commits: model -> the versions it keeps serving
        self.notes: list[str] = []        # what the commit did that the user should know (tuned configs)
        self._kept_tuned: set[str] = set()

    def __enter__(self) -> RepositoryWriter:
        self._staging_cm = staging_folder(self.repo)
        self.staging = self._staging_cm.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._staging_cm.__exit__(exc_type, exc, tb)

    # ------------------------------------------------------------------ staging
    def model_dir(self, name: str) -> Path:
        assert self.staging is not None, "use RepositoryWriter as a context manager"
        return self.staging / name

    def add_model(self, plan: ModelPlan, files: Mapping[str, Path | bytes], version: int = 1,
                  record: Mapping[str, Any] | None = None) -> Path:
        """Stage ``<name>/config.pbtxt`` and ``<name>/<version>/<files>``."""
        name = plan.config.name
        root = self.model_dir(name)
        version_dir = root / str(version)
        version_dir.mkdir(parents=True, exist_ok=True)
        (root / CONFIG).write_text(plan.config.to_pbtxt(), encoding="utf-8")
        for rel, src in files.items():
            dest = version_dir / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, bytes):
                dest.write_bytes(src)
            else:
                shutil.copyfile(src, dest)
        self.models[name] = {
            "kind": plan.kind,
            "member": plan.member,
            "precision": plan.precision,
            "format": plan.format,
            "version": version,
            **dict(record or {}),
        }
        return version_dir

    # ------------------------------------------------------------------ ownership
    def check_names(self, names: Iterable[str]) -> None:
        """Before any work: refuse names whose folders tritonfleet did not write."""
        manifest = read_manifest_dict(self.repo)
        self._raise([f"folder '{self.repo / n}' exists and was not written by tritonfleet"
                     for n in names if n not in manifest["models"] and (self.repo / n).exists()])

    def _raise(self, problems: list[str]) -> None:
        if problems:
            raise RepositoryError(
                f"refusing to overwrite in {self.repo}:\n" + "\n".join(f"  - {p}" for p in problems)
                + "\nRename the models in the spec or choose another output_dir."
            )

    # ------------------------------------------------------------------ commit
    def _actions(self, manifest: dict[str, Any]) -> dict[str, tuple[str, int]]:
        """model -> (action, version): new | unchanged | config | version | version+config."""
        problems, actions = [], {}
        for name, record in self.models.items():
            record["files"] = hash_tree(self.model_dir(name))
            old = manifest["models"].get(name)
            if old is None:
                if (self.repo / name).exists():
                    problems.append(f"folder '{self.repo / name}' exists and was not written by tritonfleet")
                actions[name] = ("new", 1)
                continue
            latest = int(old.get("version", 1))
            same_artifact = (_version_files(old["files"], latest) == _version_files(record["files"], 1)
                             and (self.repo / name / str(latest)).is_dir())
            same_config = old["files"].get(CONFIG) == record["files"][CONFIG]
            others = [o for o in old.get("owners", []) if o != self.pipeline]
            if same_artifact and same_config:
                actions[name] = ("unchanged", latest)
            elif same_artifact and (old.get("tuned") or {}).get("base_config_sha256") == record["files"][CONFIG]:
                actions[name] = ("unchanged", latest)  # the config tune committed, tuned from this very config
                self._kept_tuned.add(name)
            elif others:
                problems.append(f"model '{name}' is shared with pipeline {', '.join(others)} and would change "
                                "(different checkpoint, precision or serving settings)")
            else:
                actions[name] = (("config", latest) if same_artifact else
                                 ("version", latest + 1) if same_config else ("version+config", latest + 1))
        self._raise(problems)
        return actions

    def _pin_served(self, actions: Mapping[str, tuple[str, int]]) -> dict[str, list[int]]:
        """Candidate commits: every model that changes keeps serving the versions served now
        (``version_policy: specific``); a new version waits on disk for ``tritonfleet promote``."""
        pinned = {}
        for name, (action, _) in actions.items():
            if action in ("new", "unchanged"):
                continue
            served, _ = served_versions(self.repo, name)
            staged = self.model_dir(name) / CONFIG
            proto = parse_pbtxt(staged.read_text(encoding="utf-8"))
            proto.version_policy.specific.versions[:] = served
            staged.write_text(to_pbtxt(proto), encoding="utf-8")
            pinned[name] = served
        return pinned

    def commit(self, pipeline_record: Mapping[str, Any], keep_versions: int = 3, candidate: bool = False) -> list[str]:
        """Apply the staged models to the repository; return the names of removed models.
        ``candidate``: models that change keep serving what they serve now (:meth:`_pin_served`)."""
        assert self.staging is not None
        recover(self.repo)
        manifest = read_manifest_dict(self.repo)
        actions = self._actions(manifest)
        if candidate:
            self.pinned = self._pin_served(actions)
            actions = self._actions(manifest)  # a pinned config may equal the one on disk
        self.actions = actions
        self.repo.mkdir(parents=True, exist_ok=True)
        trash = self.staging / ".replaced"
        journal = Journal(str(self.repo), str(self.staging))

        removed = []
        for name, rec in list(manifest["models"].items()):
            if self.pipeline in rec.get("owners", []) and name not in self.models:
                rec["owners"] = [o for o in rec["owners"] if o != self.pipeline]
                if not rec["owners"]:
                    if (self.repo / name).exists():
                        journal.move(self.repo / name, trash / name)
                    del manifest["models"][name]
                    removed.append(name)

        for name, record in self.models.items():
            action, version = actions[name]
            old = manifest["models"].get(name, {})
            owners = sorted({*old.get("owners", []), self.pipeline})
            staged, dest = self.model_dir(name), self.repo / name
            files = {k: v for k, v in record.pop("files").items()}
            if action == "new":
                journal.move(staged, dest)
                manifest["models"][name] = {**record, "owners": owners, "files": files,
                                            "versions": {"1": _version_record(record)}}
                continue
            versions = dict(old.get("versions") or {str(old.get("version", 1)): _version_record(old)})
            tree = dict(old["files"])
            if action in ("config", "version+config"):
                journal.replace(staged / CONFIG, dest / CONFIG, trash / f"{name}.{CONFIG}")
                tree[CONFIG] = files[CONFIG]
            if action.startswith("version"):
                journal.move(staged / "1", dest / str(version))
                tree.update({f"{version}/{k}": v for k, v in _version_files(files, 1).items()})
                versions[str(version)] = _version_record(record)
                served = self.pinned.get(name, [])  # never removed: they serve
                excess = max(0, len(versions) - keep_versions)
                for old_version in [v for v in sorted(int(v) for v in versions) if v not in served][:excess]:
                    if (dest / str(old_version)).exists():
                        journal.move(dest / str(old_version), trash / f"{name}.v{old_version}")
                    del versions[str(old_version)]
                    tree = {k: v for k, v in tree.items() if not k.startswith(f"{old_version}/")}
            new_version = action.startswith("version")
            latest = version if new_version else int(old.get("version", 1))
            fields = record if new_version else {k: v for k, v in record.items() if k != "version"}
            manifest["models"][name] = {**old, **fields, "version": latest, "owners": owners, "files": tree,
                                        "versions": versions,
                                        "version_policy": {"specific": self.pinned[name]} if name in self.pinned
                                        else None}
            self._tuned_note(name, manifest["models"][name], old)
        manifest["pipelines"][self.pipeline] = {**pipeline_record, "models": sorted(self.models)}
        new_manifest = self.staging / MANIFEST
        write_json_atomic(new_manifest, manifest)
        failpoint("before-commit")
        journal.commit(new_manifest)
        return removed

    def _tuned_note(self, name: str, entry: dict[str, Any], old: Mapping[str, Any]) -> None:
        """Keep a tuned config the build would not change, or drop every tuned record and say so."""
        if name in self._kept_tuned:
            entry["version_policy"] = old.get("version_policy")
            self.notes.append(f"{name}: kept the config 'tritonfleet tune' committed (version {old['tuned']['version']}); "
                              "'tritonfleet rollback' serves the default settings again")
            return
        tuned = sorted(int(v) for v, rec in entry["versions"].items() if "tuned" in rec)
        if not tuned and "tuned" not in entry:
            return
        entry.pop("tuned", None)
        for rec in entry["versions"].values():
            rec.pop("config", None)
            rec.pop("tuned", None)
        self.notes.append(f"{name}: the spec's serving settings replace the config 'tritonfleet tune' committed "
                          f"(version {', '.join(map(str, tuned)) or old.get('version')}): the spec or the model changed "
                          "since; run 'tritonfleet tune' again to tune it")


def _version_files(files: Mapping[str, str], version: int) -> dict[str, str]:
    prefix = f"{version}/"
    return {k[len(prefix):]: v for k, v in files.items() if k.startswith(prefix)}


def _version_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the manifest keeps per version: how that artifact was made and checked."""
    keep = ("artifact_sha256", "artifact_key", "size_bytes", "parity", "variant", "calibration", "engine", "fitted")
    return {k: record[k] for k in keep if k in record}
