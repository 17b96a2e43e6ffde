"""The ``distillation:`` block of a pipeline spec: one student model trained on the ensemble's
own served probabilities (``tritonfleet distill SPEC``).

```yaml
distillation:
  student:
    architecture: tritonfleet.examples.digits.models:StudentCNN   # or path/to/file.py:Class
    kwargs: {width: 16}
  name: digits_student      # default: <pipeline>_student
  temperature: 4.0          # soft targets: teacher probabilities sharpened/flattened at T
  alpha: 0.7                # weight of the soft-label term; 1 - alpha on the hard labels
  epochs: 40
  batch_size: 64
  learning_rate: 0.003
  seed: 0
  precisions: [fp32, fp16]  # default: precision.variants
```

The student trains on ``data.train`` (inputs and labels) and is judged on ``data.validation``
(labels); the pipeline itself must be a classification ensemble, which ``distill`` checks
against the built repository (a spec that ``extends`` this one may be a cascade).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from tritonfleet.builder.spec.common import Architecture, ModelName, Precision, _Strict


class StudentModel(_Strict):
    """The student's architecture: ``package.module:Class`` or ``path/to/file.py:Class`` (as members
    name theirs) and the keyword arguments it is built with; its weights are what distill trains."""

    architecture: Architecture
    kwargs: dict[str, Any] = Field(default_factory=dict)


class DistillationSpec(_Strict):
    student: StudentModel
    name: ModelName | None = None  # the student's model name; default <pipeline>_student
    temperature: float = Field(default=4.0, gt=0, le=100)
    alpha: float = Field(default=0.7, ge=0, le=1)
    epochs: int = Field(default=40, ge=1, le=100_000)
    batch_size: int = Field(default=64, ge=1, le=1 << 20)
    learning_rate: float = Field(default=3e-3, gt=0, le=10)
    weight_decay: float = Field(default=1e-4, ge=0, le=1)
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    precisions: list[Precision] | None = Field(default=None, min_length=1)  # default: precision.variants

    @model_validator(mode="after")
    def _check(self) -> DistillationSpec:
        if self.precisions and len(set(self.precisions)) != len(self.precisions):
            raise ValueError(f"precisions listed twice: {self.precisions}")
        return self

    def student_name(self, pipeline: str) -> str:
        return self.name or f"{pipeline}_student"


def distillation_problems(spec: Any) -> list[str]:
    """Cross-checks of ``spec.distillation`` against the rest of a :class:`PipelineSpec` (data and
    names); the fusion kind is checked by ``distill`` itself (see the module docstring)."""
    d = spec.distillation
    if d is None:
        return []
    problems = []
    data = spec.data
    for split, why in (("train", "the student trains on it"), ("validation", "the student is judged on it")):
        s = getattr(data, split, None) if data is not None else None
        if s is None or s.labels is None:
            problems.append(f"distillation needs data.{split} with inputs and labels ({why})")
    name = d.student_name(spec.name)
    taken = {m.name for m in spec.all_models} | {spec.name, f"{spec.name}_fusion", f"{spec.name}_guard"}
    if name in taken:
        problems.append(f"distillation.name '{name}' clashes with a model of the pipeline; choose another name")
    return problems
