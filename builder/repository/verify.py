"""Check a repository against its manifest, and pin a model version (rollback).

:func:`verify` re-hashes every file the manifest records, flags files it does not
record, parses every ``config.pbtxt`` through Triton's schema, re-checks every ensemble's
step graph and reports a commit a crash interrupted. :func:`rollback` makes an earlier
version the served one by writing ``version_policy: specific`` into the model's config
(through the schema, atomically) and recording it in the manifest; ``latest=True`` undoes
it. A server in poll mode picks the change up by itself.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from builder.dtypes import from_config_dtype
from builder.errors import RepositoryError
from builder.repository.config import EnsembleStep, ModelConfig, TensorConfig, parse_pbtxt
from builder.repository.ensemble import check_ensemble
from builder.repository.journal import journal_path, recover
from builder.repository.manifest import MANIFEST, hash_tree, read_manifest, sha256_file, write_json_atomic


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
            report.problems.append(f"an interrupted commit left {journal_path(repo).name}; run "
                                   "'tritonfleet verify --repair' (or build again) to restore the repository")
            return report
    manifest = read_manifest(repo)
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
    return report


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


def versions_on_disk(folder: Path) -> list[int]:
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def rollback(repo: Path, model: str, version: int | None = None, latest: bool = False) -> dict:
    """Serve ``version`` of ``model`` (default: the version before the one served now)."""
    from google.protobuf import text_format

    repo = Path(repo).resolve()
    recover(repo)
    manifest = read_manifest(repo)
    record = manifest["models"].get(model)
    if record is None:
        raise RepositoryError(f"model '{model}' is not in {repo} (models: {', '.join(sorted(manifest['models']))})")
    folder = repo / model
    available = versions_on_disk(folder)
    config_path = folder / "config.pbtxt"
    proto = parse_pbtxt(config_path.read_text())
    served = list(proto.version_policy.specific.versions) or [max(available)]
    if latest:
        proto.ClearField("version_policy")
        target = None
    else:
        if version is None:
            older = [v for v in available if v < min(served)]
            if not older:
                raise RepositoryError(f"'{model}' serves version {min(served)}; no earlier version is kept "
                                      f"(versions on disk: {available})")
            version = older[-1]
        if version not in available:
            raise RepositoryError(f"'{model}' has no version {version} (versions on disk: {available})")
        proto.version_policy.specific.versions[:] = [version]
        target = version
    text = text_format.MessageToString(proto)
    if proto.max_batch_size == 0:
        text += "max_batch_size: 0\n"
    fd, tmp = tempfile.mkstemp(prefix=".config.", dir=folder)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, config_path)
    record["files"]["config.pbtxt"] = sha256_file(config_path)
    record["version_policy"] = None if target is None else {"specific": [target]}
    write_json_atomic(repo / MANIFEST, manifest)
    return {"model": model, "served": target or max(available), "previous": served, "available": available}
