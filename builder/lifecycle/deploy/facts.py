"""What a deployment needs to know about a built repository, read from its manifest and configs.

The Triton version its configs were written for (the tritonclient schema the build used),
the target each pipeline was built for, which models run on a GPU (``KIND_GPU`` instance
groups), which hold TensorRT engines, and which models roll out a newer version over one
still on disk (a candidate: KServe gets ``canaryTrafficPercent`` for it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from tritonfleet.builder.errors import DeployError
from tritonfleet.builder.repository.versions import served_versions
from tritonfleet.clients.manifest import MANIFEST, Manifest
from tritonfleet.clients.model_config import parse_pbtxt

# Triton server release <-> NGC container tag (Triton's release notes: 2.51.0 is container 24.10).
NGC_RELEASES = {"2.49": "24.08", "2.50": "24.09", "2.51": "24.10", "2.52": "24.11", "2.53": "24.12", "2.54": "25.01"}
NGC_IMAGE = "nvcr.io/nvidia/tritonserver"


def ngc_tag(triton_version: str) -> str:
    """``2.51.0`` -> ``24.10-py3``; one clear error for a version outside the table."""
    major_minor = ".".join(triton_version.split(".")[:2])
    if major_minor not in NGC_RELEASES:
        known = ", ".join(f"{k} ({v})" for k, v in NGC_RELEASES.items())
        raise DeployError(f"no NGC container known for Triton {triton_version} (known: {known}); pass --image")
    return f"{NGC_RELEASES[major_minor]}-py3"


@dataclass(frozen=True)
class Rollout:
    """A model that serves a newer version than one it still holds."""

    model: str
    serving: int
    previous: int


@dataclass(frozen=True)
class RepositoryFacts:
    path: Path
    triton_version: str | None
    targets: dict[str, str]          # pipeline -> local | ngc
    models: tuple[str, ...]
    gpu_models: tuple[str, ...]      # models with a KIND_GPU instance group
    engines: dict[str, str]          # TensorRT engine model -> tensorrt version that built it
    rollouts: tuple[Rollout, ...]
    manifest_sha256: str

    @property
    def local_pipelines(self) -> list[str]:
        return sorted(p for p, t in self.targets.items() if t != "ngc")


def read_facts(repository: Path) -> RepositoryFacts:
    repository = Path(repository)
    manifest = Manifest.read(repository)
    tools = [p.raw.get("tools") or {} for p in manifest.pipelines.values()]
    versions = sorted({t["tritonclient"] for t in tools if t.get("tritonclient")})
    if len(versions) > 1:
        raise DeployError(f"{repository}: pipelines were built with different Triton versions ({', '.join(versions)}); "
                          "rebuild them with one tritonclient version")
    tensorrt = next((t["tensorrt"] for t in tools if t.get("tensorrt")), "unknown")
    gpu, engines, rollouts = [], {}, []
    for name, record in manifest.models.items():
        config = repository / name / "config.pbtxt"
        if not config.is_file():
            raise DeployError(f"{repository}: model '{name}' is in {MANIFEST} but has no config.pbtxt; "
                              f"run 'tritonfleet verify {repository}'")
        proto = parse_pbtxt(config.read_text(encoding="utf-8"))
        if any(g.kind == g.KIND_GPU for g in proto.instance_group):
            gpu.append(name)
        if proto.platform == "tensorrt_plan" or record.format == "tensorrt_plan":
            engines[name] = tensorrt
        if proto.platform != "ensemble":
            served, available = served_versions(repository, name)
            older = [v for v in available if v < max(served)]
            if older:
                rollouts.append(Rollout(name, max(served), max(older)))
    return RepositoryFacts(
        repository, versions[0] if versions else None, {n: p.target for n, p in manifest.pipelines.items()},
        tuple(manifest.models), tuple(gpu), engines, tuple(rollouts),
        hashlib.sha256((repository / MANIFEST).read_bytes()).hexdigest(),
    )
