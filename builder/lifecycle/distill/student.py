"""Build a trained student into the repository beside its teacher, with the build's own steps.

The student becomes one more model of a *derived* spec (the pipeline's spec with the student
as a baseline, :func:`student_spec`), so it goes through exactly what a member goes through:
fp32 ONNX export checked against its PyTorch model at every probed size, the precision
variants (fp16, calibrated int8) checked the same way, accuracy and in-process speed, TorchScript
and TensorRT variants where the spec asks for them, and reuse of unchanged variants. Only the
student's models are written (kind ``student``), in one journaled commit whose owner is the
student itself (``manifest.json``: ``pipelines[<student>]`` with a ``student`` record naming its
teacher), so:

* the ensemble and its members are never touched, and ``tritonfleet build`` of the pipeline's
  spec keeps the student (another owner's models are left alone);
* a re-distilled student with other weights becomes version N+1 of the same models; the same
  weights change nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tritonfleet.builder.build import (
    BuildResult,
    BuildState,
    MemberBuild,
    Planned,
    Skip,
    _engine_plan,
    failed_variants,
    model_steps,
)
from tritonfleet.builder.errors import RepositoryError
from tritonfleet.builder.repository.journal import recover
from tritonfleet.builder.repository.plan import ModelPlan, engine_config, member_config, torch_config, variant_name
from tritonfleet.builder.repository.records import member_files, pipeline_record
from tritonfleet.builder.repository.reuse import ArtifactKeys
from tritonfleet.builder.repository.writer import RepositoryWriter
from tritonfleet.builder.spec import MemberSpec, PipelineSpec, with_overrides
from tritonfleet.builder.spec.splits import SPLITS, load_split, parity_probes
from tritonfleet.builder.steps import BuildStep, run_steps
from tritonfleet.clients.manifest import read_manifest_dict
from tritonfleet.clients.vocabulary import ArtifactFormat, ModelKind

OUTPUT = "logits"


def student_output(spec: PipelineSpec) -> str:
    """The student's one output: class logits ``[classes]`` (renamed if an input has that name)."""
    return OUTPUT if OUTPUT not in {t.name for t in spec.inputs} else f"student_{OUTPUT}"


def student_spec(spec: PipelineSpec, checkpoint: Path) -> tuple[PipelineSpec, MemberSpec]:
    """The pipeline's spec with the student (trained weights in ``checkpoint``) as one more
    baseline (and no distillation block: the student is a model of it now), and the student's
    member spec in it."""
    d = spec.distillation
    name = d.student_name(spec.name)
    student = {
        "name": name,
        "model": {"architecture": d.student.architecture, "kwargs": dict(d.student.kwargs),
                  "checkpoint": str(Path(checkpoint).resolve())},
        "inputs": [t.model_dump(mode="json", exclude_unset=True) for t in spec.inputs],
        "outputs": [{"name": student_output(spec), "dtype": "float32", "shape": [spec.num_classes]}],
        "precisions": d.precisions,
    }
    baselines = [b.model_dump(mode="json", exclude_unset=True) for b in spec.baselines]
    derived = with_overrides(spec, {"baselines": [*baselines, student], "distillation": None},
                             source="distillation.student")
    return derived, derived.model(name)


class WriteStudent(BuildStep[BuildState]):
    """Stage every built variant of the student with its manifest record."""

    name = "write student"

    def __init__(self, writer: RepositoryWriter, member: MemberSpec, record: Mapping[str, Any]):
        self.writer, self.member, self.record = writer, member, dict(record)

    def run(self, state: BuildState):
        spec, m, target = state.spec, self.member, state.target
        build = state.members[m.name]
        plans = [ModelPlan(ModelKind.STUDENT, member_config(spec, m, target, s.precision), m.name, s.precision)
                 for s in build.stats]
        plans += [ModelPlan(ModelKind.STUDENT, engine_config(spec, m, p), m.name, p, ArtifactFormat.PLAN)
                  for p in build.engines]
        plans += [ModelPlan(ModelKind.STUDENT, torch_config(spec, m, target, p), m.name, p, ArtifactFormat.TORCHSCRIPT)
                  for p in build.torch]
        for plan in plans:
            stats = next((s for s in build.stats if s.precision == plan.precision), None) \
                if plan.format == ArtifactFormat.ONNX else None
            files, record = member_files(plan, build.artifacts(plan.format)[plan.precision], stats, target)
            self.writer.add_model(plan, files, record={**record, "student": self.record})
        return Planned(plans)


def student_steps(state: BuildState, m: MemberSpec, manifest: dict[str, Any], writer: RepositoryWriter,
                  record: Mapping[str, Any]) -> list[BuildStep]:
    """The build's steps for one model (as :func:`tritonfleet.builder.build.plan_steps` makes them),
    then :class:`WriteStudent`."""
    engines = _engine_plan(state.spec, state.target)
    steps = model_steps(state, m, manifest, writer, engines)
    if isinstance(engines, str):
        steps.append(Skip("tensorrt engines", engines))
    steps.append(WriteStudent(writer, m, record))
    return steps


def build_student(spec: PipelineSpec, checkpoint: Path, repository: Path, target: str, record: Mapping[str, Any],
                  *, spec_path: Path | None = None, progress: bool = True) -> BuildResult:
    """Build the student whose weights are in ``checkpoint`` into ``repository`` (see the module
    docstring); ``record`` is what the manifest keeps about its distillation."""
    repo = Path(repository).resolve()
    recover(repo)
    derived, m = student_spec(spec, checkpoint)
    owner = m.name
    splits = {name: load_split(derived, name) for name in SPLITS}
    names = [variant_name(m, p) for p in derived.precisions_of(m)]
    with RepositoryWriter(repo, owner) as writer:
        writer.check_names(names)
        state = BuildState(derived, target, writer.staging / ".work", splits, parity_probes(derived), {},
                           ArtifactKeys(derived, target))
        state.members[m.name] = MemberBuild(m, "distillation.student")
        try:
            steps = student_steps(state, m, read_manifest_dict(repo), writer, record)
            results = run_steps(steps, state, progress=progress, title=f"build student {m.name} ({target})")
            shutil.rmtree(state.work, ignore_errors=True)
            owner_record = {**pipeline_record(spec, target, repo, spec_path, splits, {}, {}), "student": dict(record)}
            removed = writer.commit(owner_record)
        except OSError as exc:  # disk full, permissions: the journal restores the repository
            recover(repo)
            raise RepositoryError(
                f"could not write while adding the student to {repo}: {exc.strerror or exc} "
                f"({exc.filename or 'a temporary file'}); nothing was changed. Free space or fix permissions "
                "and distil again."
            ) from None
    build = state.members[m.name]
    failed = failed_variants(steps, results, derived.precision.optional)
    return BuildResult(repo, owner, target, state.plans, {m.name: build.parity}, {m.name: build.stats}, {}, {},
                       results, removed, writer.actions, None, failed, ArtifactFormat(derived.formats.serve))
