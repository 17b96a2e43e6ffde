"""``tritonfleet distill SPEC``: teach one student model the built ensemble's answers.

1. The teacher is the pipeline's ensemble **as built in the repository** (:mod:`.teacher`): its
   served member files and fusion step, run in-process. Its members must be what the spec
   describes (their artifact keys match), else the command asks for a build first.
2. The student (``distillation.student``) trains on ``data.train`` against the teacher's soft
   targets at ``temperature`` mixed with the hard labels (:mod:`.loss`, :mod:`.train`); its
   weights go to ``WORKDIR/<student>.pt`` (a ``state_dict``) with ``<student>.json`` beside it.
   ``WORKDIR`` defaults to ``.tritonfleet/distill`` beside the repository.
3. A student whose validation top-1 is below the worst member's did not learn: it is reported
   and **not** added (the repository is untouched) unless ``force``.
4. Otherwise it is built into the repository as a model of its own, kind ``student``, with its
   precision variants (:mod:`.student`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tritonfleet.builder.build import BuildResult
from tritonfleet.builder.errors import RepositoryError, SpecError
from tritonfleet.builder.lifecycle.distill.loss import soft_targets
from tritonfleet.builder.lifecycle.distill.student import build_student, student_output
from tritonfleet.builder.lifecycle.distill.teacher import load_teacher, teacher_fingerprint
from tritonfleet.builder.lifecycle.distill.train import EpochStats, TrainOptions, predict, top1, train_student
from tritonfleet.builder.repository.journal import recover
from tritonfleet.builder.repository.manifest import sha256_file, write_json_atomic
from tritonfleet.builder.repository.plan import variant_name
from tritonfleet.builder.repository.reuse import ArtifactKeys
from tritonfleet.builder.spec import PipelineSpec
from tritonfleet.builder.spec.splits import load_split
from tritonfleet.builder.stages.load_torch import instantiate
from tritonfleet.clients.manifest import read_manifest_dict

WORKDIR = Path(".tritonfleet") / "distill"  # beside the repository


@dataclass
class DistillResult:
    student: str
    repository: Path
    teacher: str
    teacher_val: float
    teacher_test: float | None
    members_val: dict[str, float]        # served member model -> validation top-1
    student_val: float                   # the trained PyTorch student
    student_test: float | None
    history: list[EpochStats]
    checkpoint: Path
    learnt: bool                         # validation top-1 >= the worst member's
    build: BuildResult | None = None     # None: refused (did not learn, no --force)
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def worst_member(self) -> tuple[str, float]:
        name = min(self.members_val, key=lambda k: (self.members_val[k], k))
        return name, self.members_val[name]

    @property
    def refused(self) -> bool:
        return self.build is None


def default_workdir(repository: Path) -> Path:
    return Path(repository).resolve().parent / WORKDIR


def distill(spec: PipelineSpec, *, repository: Path | None = None, epochs: int | None = None,
            workdir: Path | None = None, force: bool = False, spec_path: Path | None = None,
            progress: bool = True) -> DistillResult:
    d = spec.distillation
    if d is None:
        raise SpecError(f"{spec_path or spec.name}: the spec has no 'distillation:' block; add one with the student's "
                        "architecture (see the README, 'Distillation')")
    if spec.fusion_kind != "classification":
        raise SpecError(f"distillation learns from an ensemble's fused class probabilities; '{spec.name}' is a "
                        f"{spec.fusion.type} pipeline (use a spec with a classification fusion: mean, weighted_mean, "
                        "geometric_mean, vote, stacking, rescore)")
    repo = Path(repository).resolve() if repository else spec.output_dir
    recover(repo)
    manifest = read_manifest_dict(repo)
    teacher = load_teacher(repo, spec.name)
    target = manifest["pipelines"][spec.name].get("target") or spec.target
    check_built_from(spec, manifest, repo, target)
    name = d.student_name(spec.name)

    train, val, test = (load_split(spec, s) for s in ("train", "validation", "test"))
    taught = teacher.run(train.inputs)
    on_val = teacher.run(val.inputs)
    on_test = teacher.run(test.inputs) if test is not None and test.labels is not None else None
    members_val = {m: top1(scores, val.labels) for m, scores in on_val.scores.items()}
    teacher_val = float((on_val.classes == val.labels).mean())
    teacher_test = float((on_test.classes == test.labels).mean()) if on_test is not None else None

    options = TrainOptions(epochs or d.epochs, d.batch_size, d.learning_rate, d.weight_decay, d.seed,
                           d.temperature, d.alpha)
    model, history = train_student(
        lambda: instantiate(d.student.architecture, d.student.kwargs, "distillation.student"),
        train.inputs, soft_targets(taught.probabilities, d.temperature), train.labels, val.inputs, val.labels,
        options, progress=progress, title=f"distil {name} from {spec.name}")
    student_val = top1(predict(model, val.inputs), val.labels)
    student_test = top1(predict(model, test.inputs), test.labels) if on_test is not None else None
    worst = min(members_val.values())
    learnt = student_val >= worst

    folder = Path(workdir).resolve() if workdir else default_workdir(repo)
    checkpoint = save_checkpoint(model, folder, name)
    record = {
        "teacher": {"pipeline": spec.name, "fingerprint": teacher.fingerprint, "versions": teacher.versions,
                    "fusion": teacher.fusion.get("type"), "val_accuracy": teacher_val, "test_accuracy": teacher_test},
        "members_val_accuracy": members_val,
        "architecture": spec.portable_dump()["distillation"]["student"]["architecture"],
        "kwargs": dict(d.student.kwargs),
        "training": {**options.__dict__, "split": "data.train", "samples": len(train)},
        "val_accuracy": student_val, "test_accuracy": student_test,
        "learnt": learnt, "forced": force and not learnt,
        "checkpoint_sha256": sha256_file(checkpoint),
        "output": student_output(spec),
    }
    write_json_atomic(checkpoint.with_suffix(".json"), {
        **record, "checkpoint": checkpoint.name, "repository": os.path.relpath(repo, folder),
        "history": [h.to_dict() for h in history]})
    result = DistillResult(name, repo, spec.name, teacher_val, teacher_test, members_val, student_val, student_test,
                           history, checkpoint, learnt, record=record)
    if not learnt and not force:
        return result
    result.build = build_student(spec, checkpoint, repo, target, record, spec_path=spec_path, progress=progress)
    return result


def save_checkpoint(model: Any, folder: Path, name: str) -> Path:
    """``folder/<name>.pt``: the student's ``state_dict`` (``torch.load(..., weights_only=True)``)."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.pt"
    partial = path.with_suffix(".pt.partial")
    torch.save(model.state_dict(), partial)
    os.replace(partial, path)
    return path


def check_built_from(spec: PipelineSpec, manifest: dict[str, Any], repo: Path, target: str) -> None:
    """The members the repository serves for ``spec.name`` were built from this spec (same artifact
    keys: files, settings, data), so the teacher is the ensemble the spec describes."""
    keys = ArtifactKeys(spec, target)
    served = manifest["pipelines"][spec.name].get("served") or {}
    for m in spec.members:
        precision = (served.get(m.name) or {}).get("precision", "fp32")
        record = manifest["models"].get(variant_name(m, precision)) or {}
        if record.get("artifact_key") != keys.key(m, precision):
            raise RepositoryError(
                f"member '{m.name}' in {repo} was not built from this spec as it is now (other checkpoint, data or "
                "settings); build it first ('tritonfleet build SPEC'), so the teacher is the ensemble the spec describes")


def stale_students(repository: Path, pipeline: str) -> list[str]:
    """One line per student in ``repository`` that learnt from an earlier state of ``pipeline``'s
    ensemble (its members, their served versions or its fusion changed since)."""
    manifest = read_manifest_dict(Path(repository))
    lines = []
    for owner, record in sorted(manifest["pipelines"].items()):
        teacher = (record.get("student") or {}).get("teacher") or {}
        if teacher.get("pipeline") != pipeline:
            continue
        if teacher_fingerprint(Path(repository), pipeline) != teacher.get("fingerprint"):
            lines.append(f"student '{owner}' learnt from an earlier '{pipeline}' ensemble (its members or fusion "
                         "changed since); it is kept as it is: run 'tritonfleet distill' on the spec again to retrain it")
    return lines


def student_summary(result: DistillResult) -> dict[str, Any]:
    """What the command prints, as plain data (also for tests and the bench script)."""
    name, acc = result.worst_member
    return {"student": result.student, "teacher": result.teacher, "teacher_val": result.teacher_val,
            "teacher_test": result.teacher_test, "members_val": result.members_val, "worst_member": [name, acc],
            "student_val": result.student_val, "student_test": result.student_test, "learnt": result.learnt,
            "refused": result.refused, "checkpoint": str(result.checkpoint),
            "history": [h.to_dict() for h in result.history]}


__all__ = ["DistillResult", "default_workdir", "distill", "stale_students", "student_summary"]
