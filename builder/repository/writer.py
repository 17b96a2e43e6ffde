"""Write a pipeline's models into a Triton model repository, all or nothing.

Everything is first written into a staging folder beside the repository
(``.<repo>.staging-*``, on the same filesystem). Only :meth:`RepositoryWriter.commit`
touches the repository: it swaps each model folder in with a rename and rewrites
``manifest.json`` atomically. An error before commit removes the staging folder and
leaves the repository byte-identical. Models of other pipelines, and folders tritonfleet
did not write, are never overwritten.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from builder.errors import RepositoryError
from builder.repository.manifest import (
    MANIFEST,
    hash_tree,
    read_manifest,
    write_json_atomic,
)
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
            "pipeline": self.pipeline,
            "kind": plan.kind,
            "member": plan.member,
            "precision": plan.precision,
            "version": version,
            **dict(record or {}),
        }
        return version_dir

    # ------------------------------------------------------------------ commit
    def check_names(self, names: list[str]) -> None:
        """Raise before any work if committing ``names`` would overwrite foreign models."""
        self._raise_on_conflicts(read_manifest(self.repo), names)

    def _raise_on_conflicts(self, manifest: dict[str, Any], names) -> None:
        problems = []
        for name in names:
            existing = self.repo / name
            owner = manifest["models"].get(name, {}).get("pipeline")
            if owner is not None and owner != self.pipeline:
                problems.append(f"model '{name}' already belongs to pipeline '{owner}'")
            elif owner is None and existing.exists():
                problems.append(f"folder '{existing}' exists and was not written by tritonfleet")
        if problems:
            raise RepositoryError(
                f"refusing to overwrite in {self.repo}:\n"
                + "\n".join(f"  - {p}" for p in problems)
                + "\nRename the models in the spec or choose another output_dir."
            )

    def commit(self, pipeline_record: Mapping[str, Any]) -> list[str]:
        """Move staged models into the repository; return the names of removed stale models."""
        assert self.staging is not None
        manifest = read_manifest(self.repo)
        self._raise_on_conflicts(manifest, self.models)
        for name, record in self.models.items():
            record["files"] = hash_tree(self.model_dir(name))

        self.repo.mkdir(parents=True, exist_ok=True)
        trash = self.staging / ".replaced"
        trash.mkdir()
        stale = [
            name for name, rec in manifest["models"].items()
            if rec.get("pipeline") == self.pipeline and name not in self.models
        ]
        for name in stale:
            if (self.repo / name).exists():
                os.rename(self.repo / name, trash / name)
            del manifest["models"][name]
        for name in self.models:
            dest = self.repo / name
            if dest.exists():
                os.rename(dest, trash / name)
            os.rename(self.model_dir(name), dest)
        manifest["models"].update(self.models)
        manifest["pipelines"][self.pipeline] = {**pipeline_record, "models": sorted(self.models)}
        write_json_atomic(self.repo / MANIFEST, manifest)
        return stale
