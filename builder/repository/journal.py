"""Crash-safe commit of a staged build into a model repository.

A commit is a list of steps, each one atomic on its own:

* ``move``: ``os.rename(src, dst)`` (a model folder, a version folder, or one into the trash);
* ``replace``: ``os.replace(src, dst)`` after copying the old ``dst`` to ``backup``;
* finally the new ``manifest.json`` replaces the old one: that rename is the commit point.

Durability: the staged files are fsynced before the journal is written, and every folder a
rename touches is fsynced after it, so after a power cut the repository is either the old
one, restorable from the journal, or the new one.

Before the first step the whole plan, with the new manifest's sha256, is written to a
journal beside the repository (``.<repo>.commit-journal.json``). :func:`recover` reads a
journal left by a killed commit: if the manifest is already the new one the commit had
completed and only leftovers are removed; otherwise every step that was applied is undone
in reverse order, leaving the repository byte-identical to before the commit. Recovery is
idempotent: each undo checks the state first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tritonfleet.builder.errors import RepositoryError
from tritonfleet.builder.failpoints import failpoint
from tritonfleet.builder.repository.manifest import fsync_dir, sha256_file, write_json_atomic
from tritonfleet.clients.manifest import MANIFEST


def journal_path(repo: Path) -> Path:
    repo = Path(repo).resolve()
    return repo.parent / f".{repo.name}.commit-journal.json"


@contextlib.contextmanager
def staging_folder(repo: Path) -> Iterator[Path]:
    """A fresh folder beside ``repo`` (same filesystem, so commits are renames), removed on
    exit; staging folders of builds that were killed are cleaned up first."""
    repo = Path(repo).resolve()
    if repo.exists() and not repo.is_dir():
        raise RepositoryError(f"output_dir {repo} exists and is not a folder")
    try:
        repo.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(repo.parent, repo.name)
        staging = Path(tempfile.mkdtemp(prefix=f".{repo.name}.staging-{os.getpid()}-", dir=repo.parent))
    except OSError as exc:
        raise RepositoryError(
            f"cannot write beside output_dir {repo} ({exc.strerror}); choose a writable output_dir in the spec "
            "or with --output"
        ) from None
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_staging(parent: Path, repo_name: str) -> None:
    """Staging folders of builds that were killed (their process is gone) are removed;
    run after journal recovery, which may still need a killed commit's staging folder."""
    for folder in parent.glob(f".{repo_name}.staging-*"):
        pid = folder.name.rsplit(".staging-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)


@dataclass
class JournalEntry:
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
    steps: list[JournalEntry] = field(default_factory=list)

    def move(self, src: Path, dst: Path) -> None:
        self.steps.append(JournalEntry("move", str(src), str(dst)))

    def replace(self, src: Path, dst: Path, backup: Path) -> None:
        self.steps.append(JournalEntry("replace", str(src), str(dst), str(backup), sha256_file(src)))

    def commit(self, new_manifest: Path) -> None:
        """Write the journal, apply every step, then the manifest (the commit point)."""
        repo = Path(self.repo)
        fsync_tree(Path(self.staging))
        self.manifest_sha = sha256_file(new_manifest)
        path = journal_path(repo)
        write_json_atomic(path, asdict(self))
        failpoint("commit-journal-written")
        for i, step in enumerate(self.steps):
            src, dst = Path(step.src), Path(step.dst)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if step.kind == "replace":
                Path(step.backup).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(dst, step.backup)
                _fsync_file(Path(step.backup))
                os.replace(src, dst)
            else:
                os.rename(src, dst)
            for folder in {src.parent, dst.parent}:
                fsync_dir(folder)
            failpoint(f"commit-step-{i}")
        os.replace(new_manifest, repo / MANIFEST)
        fsync_dir(repo)
        failpoint("commit-manifest-replaced")
        path.unlink()
        fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (the staged build, before it is committed)."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_file(Path(folder) / name)
        fsync_dir(Path(folder))


def recover(repo: Path) -> str | None:
    """Finish or undo a commit a crash interrupted. Returns what it did, or None."""
    path = journal_path(repo)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    journal = Journal(data["repo"], data["staging"], data["manifest_sha"], [JournalEntry(**s) for s in data["steps"]])
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
