"""Check a repository against its manifest.

:func:`verify` re-hashes every file the manifest records, flags files it does not record,
parses every ``config.pbtxt`` through Triton's schema, re-checks every ensemble's step
graph, reports a commit a crash interrupted, and flags build-host details that leaked into
the files (absolute paths, the host's name), which would make the repository differ
between machines and disclose the build machine's layout.
"""

from __future__ import annotations

import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tritonfleet.builder.errors import RepositoryError
from tritonfleet.builder.repository.config import EnsembleStep, ModelConfig, TensorConfig
from tritonfleet.builder.repository.ensemble import check_ensemble
from tritonfleet.builder.repository.journal import journal_path, recover
from tritonfleet.builder.repository.manifest import hash_tree
from tritonfleet.clients.dtypes import from_config_dtype
from tritonfleet.clients.manifest import MANIFEST, read_manifest_dict
from tritonfleet.clients.model_config import parse_pbtxt


@dataclass
class VerifyReport:
    repository: Path
    models: int = 0
    files: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(repo: Path, repair: bool = False) -> VerifyReport:
    repo = Path(repo).resolve()
    if not repo.is_dir():
        raise RepositoryError(f"repository not found: {repo}")
    report = VerifyReport(repo)
    if journal_path(repo).is_file():
        if repair:
            report.repaired = recover(repo)
        else:
            report.problems.append(f"an interrupted commit left {journal_path(repo)}; run "
                                   f"'tritonfleet verify {repo} --repair' (or build again) to restore the repository")
            return report
    manifest = read_manifest_dict(repo)
    if not (repo / MANIFEST).is_file():
        report.problems.append(f"{repo} has no {MANIFEST}: not a tritonfleet repository")
        return report
    configs = {}
    for name, record in sorted(manifest["models"].items()):
        report.models += 1
        folder = repo / name
        if not folder.is_dir():
            report.problems.append(f"{name}: folder missing")
            continue
        actual = hash_tree(folder)
        for rel, sha in record.get("files", {}).items():
            report.files += 1
            if rel not in actual:
                report.problems.append(f"{name}/{rel}: missing")
            elif actual[rel] != sha:
                report.problems.append(f"{name}/{rel}: sha256 differs from the manifest (modified after the build)")
        for rel in sorted(set(actual) - set(record.get("files", {}))):
            report.problems.append(f"{name}/{rel}: not recorded in the manifest")
        try:
            configs[name] = _to_config(parse_pbtxt((folder / "config.pbtxt").read_text()))
        except Exception as exc:  # a schema or I/O error, reported, never raised
            report.problems.append(f"{name}/config.pbtxt: does not parse through Triton's schema ({exc})")
    for name in sorted(set(p.name for p in repo.iterdir() if p.is_dir()) - set(manifest["models"])):
        report.problems.append(f"{name}: folder not recorded in the manifest")
    for name, config in configs.items():
        if config.is_ensemble:
            try:
                check_ensemble(config, configs)
            except Exception as exc:
                report.problems.append(f"{name}: {exc}")
    report.problems += leaked_host_details(repo, [repo / MANIFEST, *(repo / n / rel for n, r in manifest["models"].items()
                                                                    for rel in r.get("files", {}))])
    return report


# Absolute paths under the usual roots of a build machine's file system, absolute paths of Python
# source files under any root (torch's stack traces name them: a CI checkout may live anywhere),
# and Windows drives.
_ABSOLUTE_PATH = re.compile(rb"(?<![\w.:/-])(?:/(?:home|root|tmp|usr|opt|var|srv|mnt|work|Users|private)/[\w.+-]+"
                            rb"|/(?:[\w.+-]+/)+[\w.+-]+\.py(?![\w.])"
                            rb"|[A-Za-z]:\\(?:Users|Windows|Program Files|ProgramData)\\)")
# tritonfleet's own runtime files (model.py, ops.py, ...) are checked for paths, not for the host name:
# their code may contain any word.
_CODE = (".py",)


def leaked_host_details(repo: Path, files: list[Path]) -> list[str]:
    """One problem per file that holds an absolute path or this host's name."""
    host = socket.gethostname().encode()
    by_host = (re.compile(rb"(?<![\w.-])" + re.escape(host) + rb"(?![\w-])"), "the host name")
    needles = [(re.compile(re.escape(str(repo).encode())), "the repository's absolute path"),
               *((re.compile(re.escape(place)), "an absolute path") for place in _install_places()),
               (_ABSOLUTE_PATH, "an absolute path")]
    problems = []
    for path in files:
        if not path.is_file():
            continue
        data = path.read_bytes()
        checks = needles if path.suffix in _CODE or len(host) < 4 else [*needles, by_host]
        for needle in checks:
            found = needle[0].search(data)
            if found:
                shown = found.group(0).decode(errors="replace")
                problems.append(f"{path.relative_to(repo)}: holds {needle[1]} ('{shown}'); a repository should not "
                                "depend on the machine that built it (rebuild without keep_debug_info)")
                break
    return problems


def _install_places() -> list[bytes]:
    """Where this Python and tritonfleet are installed (two folders deep at least, so never '/')."""
    places = {sys.prefix, sys.base_prefix, str(Path(__file__).resolve().parents[3])}
    return sorted(p.encode() for p in places if len(Path(p).parts) > 2)


def _to_config(proto) -> ModelConfig:
    from tritonclient.grpc import model_config_pb2

    def tensors(items):
        return tuple(TensorConfig(t.name, from_config_dtype(model_config_pb2.DataType.Name(t.data_type)), tuple(t.dims))
                     for t in items)

    steps = tuple(EnsembleStep(s.model_name, dict(s.input_map), dict(s.output_map), s.model_version)
                  for s in proto.ensemble_scheduling.step)
    return ModelConfig(name=proto.name, inputs=tensors(proto.input), outputs=tensors(proto.output),
                       max_batch_size=proto.max_batch_size, platform=proto.platform or None,
                       backend=proto.backend or None, ensemble_steps=steps)
