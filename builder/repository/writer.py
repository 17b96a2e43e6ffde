"""Write a pipeline's models into a Triton model repository, all or nothing.

Everything is first written into a staging folder beside the repository
(``.<repo>.staging-*``, on the same filesystem). Only :meth:`RepositoryWriter.commit`
touches the repository: it swaps each changed model folder in with a rename and rewrites
``manifest.json`` atomically. An error before commit removes the staging folder and leaves
the repository byte-identical.

Several pipelines may share a model (the same member in a mean and a vote ensemble): the
manifest lists each model's ``owners``. A model whose config and files are byte-identical
to what is there is left untouched (a live server sees no change) and gains an owner; a
model another pipeline owns is never changed, and a folder tritonfleet did not write is
never overwritten. Models a pipeline no longer has lose that owner and are removed when
nobody owns them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from builder.errors import RepositoryError
from builder.repository.manifest import MANIFEST, hash_tree, read_manifest, write_json_atomic
from builder.repository.plan import ModelPlan

CONFIG = "config.pbtxt"


class RepositoryWriter:
    """Context manager: stage models, then ``commit`` them into ``repo``."""

    def __init__(self, repo: Path, pipeline: str):
        self.repo = Path(repo).resolve()
        self.pipeline = pipeline
        self.staging: Path | None = None
        self.models: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> RepositoryWriter:
        parent = self.repo.parent
        if self.repo.exists() and not self.repo.is_dir():
            raise RepositoryError(f"output_dir {self.repo} exists and is not a folder")
        try:
            parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.repo.name}.staging-", dir=parent))
        except OSError as exc:
            raise RepositoryError(
                f"cannot write beside output_dir {self.repo} ({exc.strerror}); choose a writable "
                "output_dir in the spec or with --output"
            ) from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.staging is not None and self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)

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
        manifest = read_manifest(self.repo)
        self._raise([f"folder '{self.repo / n}' exists and was not written by tritonfleet"
                     for n in names if n not in manifest["models"] and (self.repo / n).exists()])

    def _raise(self, problems: list[str]) -> None:
        if problems:
            raise RepositoryError(
                f"refusing to overwrite in {self.repo}:\n" + "\n".join(f"  - {p}" for p in problems)
                + "\nRename the models in the spec or choose another output_dir."
            )

    # ------------------------------------------------------------------ commit
    def commit(self, pipeline_record: Mapping[str, Any]) -> list[str]:
        """Move changed models into the repository; return the names of removed models."""
        assert self.staging is not None
        manifest = read_manifest(self.repo)
        problems, unchanged = [], set()
        for name, record in self.models.items():
            record["files"] = hash_tree(self.model_dir(name))
            old = manifest["models"].get(name)
            if old is None:
                if (self.repo / name).exists():
                    problems.append(f"folder '{self.repo / name}' exists and was not written by tritonfleet")
                continue
            others = [o for o in old.get("owners", []) if o != self.pipeline]
            same = old.get("files") == record["files"] and (self.repo / name).is_dir()
            if same:
                unchanged.add(name)
            elif others:
                problems.append(
                    f"model '{name}' is shared with pipeline {', '.join(others)} and would change "
                    "(different checkpoint, precision or serving settings)"
                )
        self._raise(problems)

        self.repo.mkdir(parents=True, exist_ok=True)
        trash = self.staging / ".replaced"
        trash.mkdir()
        removed = []
        for name, rec in list(manifest["models"].items()):
            if self.pipeline in rec.get("owners", []) and name not in self.models:
                rec["owners"] = [o for o in rec["owners"] if o != self.pipeline]
                if not rec["owners"]:
                    if (self.repo / name).exists():
                        os.rename(self.repo / name, trash / name)
                    del manifest["models"][name]
                    removed.append(name)
        for name, record in self.models.items():
            old = manifest["models"].get(name, {})
            owners = sorted({*old.get("owners", []), self.pipeline})
            if name in unchanged:
                manifest["models"][name] = {**old, **record, "owners": owners}
                continue
            dest = self.repo / name
            if dest.exists():
                os.rename(dest, trash / name)
            os.rename(self.model_dir(name), dest)
            manifest["models"][name] = {**record, "owners": owners}
        manifest["pipelines"][self.pipeline] = {**pipeline_record, "models": sorted(self.models)}
        write_json_atomic(self.repo / MANIFEST, manifest)
        return removed
