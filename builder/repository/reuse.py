"""Reuse of unchanged artifacts across rebuilds.

An artifact key is the sha256 of everything an ONNX variant depends on: the model's source
files (by content), its signature, export and parity settings, the data (by content),
upstream members' keys and tool versions. No path enters the key, so the same inputs give
the same key in any directory or on any machine. A rebuild reuses a variant whose manifest
record has the same key and whose file is intact.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tritonfleet.builder.repository.manifest import sha256_file, tool_versions
from tritonfleet.builder.repository.plan import ONNX_FILE, CompiledPipeline, variant_name
from tritonfleet.builder.spec import MemberSpec, PipelineSpec


class ArtifactKeys:
    """Artifact keys of one spec and target (file hashes computed once)."""

    def __init__(self, spec: PipelineSpec, target: str):
        self.spec = spec
        self.target = target
        self._file_sha: dict[Path, str] = {}
        self._keys: dict[tuple[str, str], str] = {}

    def _sha(self, path: Path) -> str:
        if path not in self._file_sha:
            self._file_sha[path] = sha256_file(path)
        return self._file_sha[path]

    def key(self, m: MemberSpec | CompiledPipeline, precision: str) -> str:
        if isinstance(m, CompiledPipeline):
            return self.compiled_key(m, precision)
        if (m.name, precision) not in self._keys:
            spec = self.spec
            architecture = m.model.architecture
            if architecture and ".py:" in architecture:  # a file: its content, not its path
                target, _, cls = architecture.rpartition(":")
                architecture = f"sha256:{self._sha(Path(target))}:{cls}"
            data = None
            if spec.data is not None:
                data = {"sha256": self._sha(spec.data.path),
                        "splits": spec.data.model_dump(mode="json", exclude={"path"})}
            payload = {
                "precision": precision, "target": self.target,
                "source": {"kind": m.model.kind, "architecture": architecture, "kwargs": m.model.kwargs,
                           "files": [self._sha(f) for f in m.model.files]},
                "signature": [t.model_dump(mode="json") for t in (*m.inputs, *m.outputs)],
                "opset": spec.opset,
                "export": spec.export.model_dump(mode="json"),
                "upstream": {n: self.key(spec.model(src), "fp32") for n, (src, _) in spec.sources_of(m).items()},
                "parity": {"samples": spec.parity.samples, "data": data,
                           "tolerance": spec.parity.for_precision(precision).model_dump(mode="json")},
                "calibration": spec.precision.calibration.model_dump(mode="json") if precision == "int8" else None,
                "benchmark": [spec.precision.benchmark_batch_size, spec.serving.onnxruntime_threads],
                "tools": tool_versions(),
            }
            blob = json.dumps(payload, sort_keys=True, default=str).encode()
            self._keys[(m.name, precision)] = hashlib.sha256(blob).hexdigest()
        return self._keys[(m.name, precision)]


    def compiled_key(self, c: CompiledPipeline, precision: str) -> str:
        """Key of a compiled pipeline variant: its members' fp32 keys, the fusion as the spec gives it
        (fitted values follow from the members and the data, which the keys hold), the served
        precision (fitted values are fitted on it), the code that merges and checks it, and the
        settings its checks and calibration use."""
        if (c.name, precision) not in self._keys:
            spec = self.spec
            code = [self._sha(Path(path)) for path in _compile_sources()]
            payload = {
                "compiled": c.name, "precision": precision, "target": self.target,
                "members": {n: self.key(spec.model(n), "fp32") for n in c.members},
                "served": {m.name: self.key(m, spec.precision.serve) for m in spec.members
                           if m.name in c.members and spec.precision.serve in spec.precisions_of(m)},
                "fusion": spec.fusion.model_dump(mode="json"), "serve": spec.precision.serve,
                "signature": [t.model_dump(mode="json") for t in (*c.inputs, *c.outputs)],
                "parity": {"samples": spec.parity.samples, "tolerance": spec.parity.for_precision(precision).model_dump(
                    mode="json")},
                "calibration": spec.precision.calibration.model_dump(mode="json") if precision == "int8" else None,
                "benchmark": [spec.precision.benchmark_batch_size, spec.serving.onnxruntime_threads],
                "code": code, "tools": tool_versions(),
            }
            blob = json.dumps(payload, sort_keys=True, default=str).encode()
            self._keys[(c.name, precision)] = hashlib.sha256(blob).hexdigest()
        return self._keys[(c.name, precision)]


def _compile_sources() -> list[Path]:
    """The files a compiled graph and its parity reference come from (the fusion math and its ONNX form)."""
    from tritonfleet.builder import runtime
    from tritonfleet.builder.stages import fusion2onnx, pipeline2onnx

    return [runtime.OPS, Path(fusion2onnx.__file__), Path(pipeline2onnx.__file__)]


def reusable_record(manifest: dict[str, Any], repo: Path, m: MemberSpec, precision: str,
                    key: str) -> dict[str, Any] | None:
    """The manifest record of a variant if it has ``key`` and its file is intact (with its path)."""
    name = variant_name(m, precision)
    rec = manifest["models"].get(name)
    if rec is None or rec.get("artifact_key") != key or not rec.get("variant"):
        return None
    path = Path(repo) / name / str(rec.get("version", 1)) / ONNX_FILE
    if not path.is_file() or sha256_file(path) != rec.get("artifact_sha256"):
        return None
    return {**rec, "path": path}
