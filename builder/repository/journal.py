"""Crash-safe commit of a staged build into a model repository.

A commit is a list of steps, each one atomic on its own:

* ``move``: ``os.rename(src, dst)`` (a model folder, a version folder, or one into the trash);
* ``replace``: ``os.replace(src, dst)`` after copying the old ``dst`` to ``backup``;
* finally the new ``manifest.json`` replaces the old one: that rename is the commit point.

Durability: the staged files and folders are fsynced before the journal is written (itself
written to a temporary file, fsynced, renamed), a backup is fsynced before the file it saves is
replaced, every folder a step creates or renames into or out of is fsynced after it, and the
journal is removed only after the new manifest's folder is fsynced. So after a power cut the
repository is the old one, restorable from the journal, or the new one; :func:`recover` fsyncs
what it undoes the same way.

An error inside the commit (a failing disk) rolls back at once with the journal and re-raises,
so the caller reports one error and the repository is byte-identical to before.

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
        raise RepositoryError(f"output_dir {repo} exists and is not a folder; choose another output_dir in the spec "
                              "or with --output")
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
        """Write the journal, apply every step, then the manifest (the commit point). An error on
        the way rolls back what was applied (:func:`recover`) and is raised again."""
        repo = Path(self.repo)
        fsync_tree(Path(self.staging))
        self.manifest_sha = sha256_file(new_manifest)
        path = journal_path(repo)
        write_json_atomic(path, asdict(self))
        fsync_dir(path.parent)
        failpoint("commit-journal-written", path)
        try:
            for i, step in enumerate(self.steps):
                src, dst = Path(step.src), Path(step.dst)
                _make_folders(dst.parent)
                if step.kind == "replace":
                    backup = Path(step.backup)
                    _make_folders(backup.parent)
                    shutil.copy2(dst, backup)
                    _fsync_file(backup)
                    fsync_dir(backup.parent)
                    os.replace(src, dst)
                else:
                    os.rename(src, dst)
                for folder in {src.parent, dst.parent}:
                    fsync_dir(folder)
                failpoint(f"commit-step-{i}", dst)
            os.replace(new_manifest, repo / MANIFEST)
            fsync_dir(repo)
        except BaseException:
            recover(repo)  # before the commit point: undo every step applied, from the journal
            raise
        failpoint("commit-manifest-replaced", repo / MANIFEST)
        path.unlink()
        fsync_dir(path.parent)


def _make_folders(folder: Path) -> None:
    """``mkdir -p``, fsyncing the parent of every folder it creates (its entry is then durable)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)
        fsync_dir(new.parent)


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
                _make_folders(src.parent)
                os.rename(dst, src)
                for folder in {src.parent, dst.parent}:
                    fsync_dir(folder)
            elif (step.kind == "replace" and Path(step.backup).is_file() and dst.is_file()
                  and sha256_file(dst) == step.new_sha):
                os.replace(step.backup, dst)  # the backup is written before the replace: it ran
                fsync_dir(dst.parent)
        outcome = "rolled back"
    shutil.rmtree(journal.staging, ignore_errors=True)
    path.unlink()
    fsync_dir(path.parent)
    return outcome
