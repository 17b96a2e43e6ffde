"""What the manifest records about each model and pipeline of a build, and which files
each model's version folder holds.

The builder hands these records to the :class:`~.writer.RepositoryWriter`; the clients read
them back through :mod:`tritonfleet.clients.manifest`. Every path recorded is relative (the
data file to the spec's folder, the spec's folder to the repository), so the manifest of a
repository does not depend on where it was built.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonfleet.builder import runtime
from tritonfleet.builder.repository.manifest import sha256_file, tool_versions
from tritonfleet.builder.repository.plan import ONNX_FILE, PLAN_FILE, TORCHSCRIPT_FILE, ModelPlan
from tritonfleet.builder.spec import PipelineSpec
from tritonfleet.builder.spec.splits import Split
from tritonfleet.builder.stages.parity import ParityRecord
from tritonfleet.builder.stages.variants import Selection, VariantStats
from tritonfleet.clients.vocabulary import ArtifactFormat


@dataclass
class Artifact:
    """One built (or reused) file of one member: an ONNX variant or a TensorRT engine."""

    member: str
    precision: str
    format: ArtifactFormat
    path: Path
    parity: list[ParityRecord] = field(default_factory=list)
    key: str | None = None              # artifact key (ONNX variants): equal keys may be reused
    calibration: dict[str, Any] | None = None
    engine: dict[str, Any] | None = None
    reused: bool = False
    conversion: dict[str, Any] | None = None  # how a lower precision was made, e.g. {"kept_fp32": ["Loop"]}


def member_files(plan: ModelPlan, artifact: Artifact, stats: VariantStats | None,
                 target: str) -> tuple[dict[str, Path | bytes], dict[str, Any]]:
    """Files and manifest record of a member variant (ONNX or engine)."""
    record: dict[str, Any] = {"parity": [r.to_dict() for r in artifact.parity],
                              "artifact_sha256": sha256_file(artifact.path), "size_bytes": artifact.path.stat().st_size}
    if artifact.format == ArtifactFormat.PLAN:
        record["engine"] = artifact.engine
        return {PLAN_FILE: artifact.path}, record
    if artifact.format == ArtifactFormat.TORCHSCRIPT:  # Triton's PyTorch backend (ngc) or the torch runner (local)
        runner = {"model.py": runtime.TORCH_RUNNER, runtime.SERVING.name: runtime.SERVING} if target == "local" else {}
        return {TORCHSCRIPT_FILE: artifact.path, **runner}, record
    files: dict[str, Path | bytes] = {ONNX_FILE: artifact.path}
    record["artifact_key"] = artifact.key
    record["variant"] = stats.to_dict() if stats else None
    if artifact.calibration is not None:
        record["calibration"] = artifact.calibration
    if artifact.conversion is not None:
        record["conversion"] = artifact.conversion
    if target == "local":
        files["model.py"] = runtime.ONNX_RUNNER
        files[runtime.SERVING.name] = runtime.SERVING
        if "input_checks" in plan.config.parameters:
            files[runtime.INPUT_CHECKS.name] = runtime.INPUT_CHECKS
    return files, record


def guard_files() -> dict[str, Path]:
    """Files of an ensemble's input guard: its model.py and the checks it runs."""
    return {"model.py": runtime.GUARD_MODEL, runtime.INPUT_CHECKS.name: runtime.INPUT_CHECKS,
            runtime.MONITORING.name: runtime.MONITORING}


def fusion_files(fitted: Mapping[str, Any]) -> tuple[dict[str, Path | bytes], dict[str, Any]]:
    """Files and record of an ensemble's fusion step; fitted coefficients go to params.json."""
    files: dict[str, Path | bytes] = {"model.py": runtime.FUSION_MODEL, "ops.py": runtime.OPS,
                                      runtime.SERVING.name: runtime.SERVING, runtime.MONITORING.name: runtime.MONITORING}
    if "coef" in fitted:  # stacking: data read by model.py, not code
        files["params.json"] = json.dumps({"coef": fitted["coef"], "intercept": fitted["intercept"]},
                                          sort_keys=True).encode()
    summary = fitted_summary(fitted)
    return files, ({"fitted": summary} if summary else {})


def pipeline_files(fusion_type: str, selections: Mapping[str, Selection]) -> tuple[dict[str, Path], dict[str, Any]]:
    """Files and record of a BLS pipeline (cascade, route)."""
    files = {"model.py": runtime.BLS_MODELS[fusion_type], "ops.py": runtime.OPS, runtime.SERVING.name: runtime.SERVING,
             runtime.MONITORING.name: runtime.MONITORING}
    return files, served_record(selections)


def served_record(selections: Mapping[str, Selection]) -> dict[str, Any]:
    return {"served": {k: v.to_dict() for k, v in selections.items()}}


def fitted_summary(fitted: Mapping[str, Any]) -> dict[str, Any]:
    """Fitted fusion parameters without the (large) stacking coefficients."""
    return {k: v for k, v in fitted.items() if k not in ("coef", "intercept")}


def split_record(split: Split, spec: PipelineSpec) -> dict[str, Any]:
    keys = getattr(spec.data, split.name)
    return {"path": _relative(spec.data.path, spec), "inputs": keys.input_keys, "labels": keys.labels,
            "samples": len(split), "sha256": sha256_file(spec.data.path)}


def pipeline_record(spec: PipelineSpec, target: str, repo: Path, spec_path: Path | None,
                    splits: Mapping[str, Split | None], selections: Mapping[str, Selection],
                    fitted: Mapping[str, Any], monitoring: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a pipeline's build recorded: the spec (paths relative to its folder), where that
    folder is relative to the repository, the data splits it used, tools and choices, and the
    reference profile its traffic metrics are compared with (``monitoring``, when it publishes any)."""
    spec_dir = os.path.relpath(spec.source_dir, repo) if spec.source_dir else "."
    return {
        "target": target,
        "spec": spec.portable_dump(),
        "spec_dir": Path(spec_dir).as_posix(),
        "spec_file": Path(spec_path).name if spec_path else None,
        "spec_sha256": sha256_file(spec_path) if spec_path else None,
        "splits": {name: split_record(split, spec) for name, split in splits.items() if split is not None},
        "built_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),  # varies by design
        "tools": tool_versions(),
        **served_record(selections),
        "fitted": fitted_summary(fitted),
        **({"monitoring": dict(monitoring)} if monitoring is not None else {}),
    }


def _relative(path: Path, spec: PipelineSpec) -> str:
    base = spec.source_dir
    return Path(os.path.relpath(path, base) if base else path).as_posix()
