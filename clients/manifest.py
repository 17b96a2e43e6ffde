"""A typed, read-only view of a repository's ``manifest.json``.

The builder writes ``manifest.json`` at the root of every repository it builds; everything
that only *uses* a repository (the clients, benchmarks, reports, the supervisor) reads it
through :class:`Manifest` and never needs the spec or the builder:

* :class:`ModelRecord` — one Triton model: its kind, the member and precision it was built
  from, its version, the sha256 of each file, its parity against PyTorch;
* :class:`PipelineRecord` — one pipeline (spec): its target, its models and the labelled
  data splits the build used (:class:`SplitRecord`), so accuracy can be measured through
  the server later with exactly those samples, and the reference profile its traffic
  metrics are compared with (:class:`MonitoringRecord`, ``tritonfleet monitor``).

Paths in the manifest are relative (the data file relative to the spec's folder, the spec's
folder relative to the repository), so a repository built in another directory or on
another machine has the same manifest; :meth:`SplitRecord.load` resolves them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tritonfleet.clients.errors import TritonfleetError

MANIFEST = "manifest.json"
FORMAT = 2


class ManifestError(TritonfleetError):
    """``manifest.json`` is missing, unreadable or not a tritonfleet manifest."""


def read_manifest_dict(repository: Path) -> dict[str, Any]:
    """The raw manifest of ``repository``; an empty one when the file does not exist."""
    path = Path(repository) / MANIFEST
    if not path.is_file():
        return {"format": FORMAT, "pipelines": {}, "models": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestError(
            f"{path} is not valid JSON ({exc}); restore it from a backup or rebuild into an empty output_dir"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise ManifestError(f"{path} is not a tritonfleet manifest of format {FORMAT} (found format {found}); "
                            "rebuild the repository with this version of tritonfleet")
    return data


def load_npz(path: Path, names: list[str], where: str) -> dict[str, np.ndarray]:
    """Arrays ``names`` of an ``.npz`` file (no pickles); one clear error when absent."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [n for n in names if n not in npz.files]
            if missing:
                raise ManifestError(f"{where}: array '{missing[0]}' is not in {path} "
                                    f"(arrays: {', '.join(sorted(npz.files))})")
            return {n: npz[n] for n in names}
    except ManifestError:
        raise
    except Exception as exc:
        raise ManifestError(f"{where}: cannot read {path} as a .npz file ({exc})") from None


@dataclass(frozen=True)
class SplitRecord:
    """A labelled data split as the build used it: arrays of one ``.npz`` file."""

    path: str                 # the .npz, relative to the pipeline's spec folder
    inputs: tuple[str, ...]   # one array per model input
    labels: str | None
    samples: int
    sha256: str

    def resolve(self, repository: Path, spec_dir: str) -> Path:
        return (Path(repository) / spec_dir / self.path).resolve()

    def load(self, repository: Path, spec_dir: str) -> tuple[tuple[np.ndarray, ...], np.ndarray | None]:
        path = self.resolve(repository, spec_dir)
        if not path.is_file():
            raise ManifestError(f"the data file the build used is not at {path} (recorded as '{self.path}' "
                                f"relative to the spec folder '{spec_dir}'); pass the data explicitly")
        arrays = load_npz(path, [*self.inputs, *([self.labels] if self.labels else [])], str(path))
        labels = arrays[self.labels].astype(np.int64) if self.labels else None
        return tuple(arrays[n] for n in self.inputs), labels

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SplitRecord:
        return cls(data["path"], tuple(data["inputs"]), data.get("labels"), int(data["samples"]), data["sha256"])


@dataclass(frozen=True)
class Binned:
    """A reference distribution in bins: ``edges`` (bin ``i`` holds ``(edges[i-1], edges[i]]``)
    and the reference's share of each of the ``len(edges) + 1`` bins."""

    edges: tuple[float, ...]
    fractions: tuple[float, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Binned | None:
        return None if not data else cls(tuple(map(float, data["edges"])), tuple(map(float, data["fractions"])))


@dataclass(frozen=True)
class MonitoringRecord:
    """What a pipeline's traffic metrics are compared with: its answers on ``data.validation``
    at build time (``profile`` None: no validation split, no reference)."""

    bins: int | None = None
    samples: int = 0
    confidence: Binned | None = None                           # top probability
    classes: tuple[float, ...] | None = None                   # share of each predicted class
    disagreement: float | None = None                          # share of compared samples whose members differ
    inputs: Mapping[str, Mapping[str, Binned]] = field(default_factory=dict)  # input -> mean/std -> bins

    @property
    def has_reference(self) -> bool:
        return self.bins is not None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MonitoringRecord:
        profile = data.get("profile")
        if not profile:
            return cls()
        return cls(int(profile["bins"]), int(profile.get("samples", 0)), Binned.from_dict(profile.get("confidence")),
                   tuple(profile["classes"]) if profile.get("classes") else None, profile.get("disagreement"),
                   {name: {stat: Binned.from_dict(b) for stat, b in stats.items()}
                    for name, stats in (profile.get("inputs") or {}).items()})


@dataclass(frozen=True)
class PipelineRecord:
    name: str
    target: str
    models: tuple[str, ...]
    spec_dir: str                           # the spec's folder, relative to the repository
    splits: Mapping[str, SplitRecord] = field(default_factory=dict)  # "test", "validation", ...
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def monitoring(self) -> MonitoringRecord | None:
        """The reference profile of the pipeline's traffic metrics; None when it publishes none."""
        data = self.raw.get("monitoring")
        return None if data is None else MonitoringRecord.from_dict(data)

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> PipelineRecord:
        splits = {k: SplitRecord.from_dict(v) for k, v in (data.get("splits") or {}).items()}
        return cls(name, data.get("target", ""), tuple(data.get("models", ())), data.get("spec_dir", "."), splits,
                   data)


@dataclass(frozen=True)
class ModelRecord:
    name: str
    kind: str
    owners: tuple[str, ...]
    version: int
    files: Mapping[str, str]
    member: str | None = None
    precision: str | None = None
    format: str | None = None
    size_bytes: int | None = None
    parity: tuple[Mapping[str, Any], ...] = ()
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def max_abs_error(self) -> float | None:
        """Worst parity error against PyTorch fp32 over the records of this artifact."""
        errors = [p["max_abs_error"] for p in self.parity if p.get("max_abs_error") is not None]
        return max(errors) if errors else None

    @classmethod
    def from_dict(cls, name: str, data: Mapping[str, Any]) -> ModelRecord:
        return cls(name, data.get("kind", "model"), tuple(data.get("owners", ())), int(data.get("version", 1)),
                   dict(data.get("files", {})), data.get("member"), data.get("precision"), data.get("format"),
                   data.get("size_bytes"), tuple(data.get("parity") or ()), data)


@dataclass(frozen=True)
class Manifest:
    repository: Path
    models: Mapping[str, ModelRecord]
    pipelines: Mapping[str, PipelineRecord]

    @classmethod
    def read(cls, repository: Path) -> Manifest:
        repository = Path(repository)
        if not (repository / MANIFEST).is_file():
            raise ManifestError(f"{repository} has no {MANIFEST}; build it with 'tritonfleet build SPEC' first")
        data = read_manifest_dict(repository)
        return cls(repository,
                   {n: ModelRecord.from_dict(n, r) for n, r in sorted(data["models"].items())},
                   {n: PipelineRecord.from_dict(n, r) for n, r in sorted(data["pipelines"].items())})

    def labelled_split(self, split: str = "test") -> tuple[PipelineRecord, SplitRecord] | None:
        """The first pipeline (by name) whose build recorded a labelled ``split``."""
        for pipeline in self.pipelines.values():
            record = pipeline.splits.get(split)
            if record is not None and record.labels is not None:
                return pipeline, record
        return None
