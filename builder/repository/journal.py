"""Crash-safe commit of a staged build into a model repository.

A commit is a list of steps, each one atomic on its own:

* ``move``: ``os.rename(src, dst)`` (a model folder, a version folder, or one into the trash);
* ``replace``: ``os.replace(src, dst)`` after copying the old ``dst`` to ``backup``;
* finally the new ``manifest.json`` replaces the old one: that rename is the commit point.

Before the first step the whole plan, with the new manifest's sha256, is written to a
journal beside the repository (``.<repo>.commit-journal.json``). :func:`recover` reads a
journal left by a killed commit: if the manifest is already the new one the commit had
completed and only leftovers are removed; otherwise every step that was applied is undone
in reverse order, leaving the repository byte-identical to before the commit. Recovery is
idempotent: each undo checks the state first.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from builder.failpoints import failpoint
from builder.repository.manifest import MANIFEST, sha256_file, write_json_atomic


def journal_path(repo: Path) -> Path:
    repo = Path(repo).resolve()
    return repo.parent / f".{repo.name}.commit-journal.json"


@dataclass
class Step:
    kind: str  # "move" | "replace"
    src: str
    dst: str
    backup: str | None = None
    new_sha: str | None = None


@dataclass
class Journal:
    repo: str
    staging: str
    manifest_sha: str = ""
    steps: list[Step] = field(default_factory=list)

    def move(self, src: Path, dst: Path) -> None:
        self.steps.append(Step("move", str(src), str(dst)))

    def replace(self, src: Path, dst: Path, backup: Path) -> None:
        self.steps.append(Step("replace", str(src), str(dst), str(backup), sha256_file(src)))

    def commit(self, new_manifest: Path) -> None:
        """Write the journal, apply every step, then the manifest (the commit point)."""
        repo = Path(self.repo)
        self.manifest_sha = sha256_file(new_manifest)
        path = journal_path(repo)
        write_json_atomic(path, asdict(self))
        failpoint("commit-journal-written")
        for i, step in enumerate(self.steps):
            if step.kind == "replace":
                Path(step.backup).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(step.dst, step.backup)
                os.replace(step.src, step.dst)
            else:
                Path(step.dst).parent.mkdir(parents=True, exist_ok=True)
                os.rename(step.src, step.dst)
            failpoint(f"commit-step-{i}")
        os.replace(new_manifest, repo / MANIFEST)
        failpoint("commit-manifest-replaced")
        path.unlink()


def recover(repo: Path) -> str | None:
    """Finish or undo a commit a crash interrupted. Returns what it did, or None."""
    path = journal_path(repo)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    journal = Journal(data["repo"], data["staging"], data["manifest_sha"], [Step(**s) for s in data["steps"]])
    manifest = Path(journal.repo) / MANIFEST
    if manifest.is_file() and sha256_file(manifest) == journal.manifest_sha:
        outcome = "completed"  # the commit point was reached; only leftovers remain
    else:
        for step in reversed(journal.steps):
            src, dst = Path(step.src), Path(step.dst)
            if step.kind == "move" and dst.exists() and not src.exists():
                src.parent.mkdir(parents=True, exist_ok=True)
                os.rename(dst, src)
            elif (step.kind == "replace" and Path(step.backup).is_file() and dst.is_file()
                  and sha256_file(dst) == step.new_sha):
                os.replace(step.backup, dst)  # the backup is written before the replace: it ran
        outcome = "rolled back"
    shutil.rmtree(journal.staging, ignore_errors=True)
    path.unlink()
    return outcome
