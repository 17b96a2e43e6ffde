"""Tensors, model sources and members of a pipeline spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from tritonfleet.builder.spec.axes import TensorOptions, output_option_problems
from tritonfleet.builder.spec.common import (
    MAX_BATCH_LIMIT,
    Architecture,
    DType,
    ExistingFile,
    ModelName,
    Precision,
    TensorName,
    _Strict,
)


class TensorSpec(TensorOptions):
    """One input or output of a model, shapes *without* the batch dimension; ``-1`` marks a dynamic
    axis (bounds, value constraints: :mod:`tritonfleet.builder.spec.axes`)."""

    name: TensorName
    dtype: DType = "float32"
    shape: tuple[int, ...] = Field(min_length=0, max_length=8)

    @model_validator(mode="after")
    def _check_dims(self) -> TensorSpec:
        if any(d == 0 or d < -1 for d in self.shape):
            raise ValueError(
                f"shape {list(self.shape)} of '{self.name}' must hold positive sizes or -1 "
                "(variable); leave the batch dimension out"
            )
        return self

    def signature(self) -> tuple[str, tuple[int, ...]]:
        return (self.dtype, self.shape)


class ModelSource(_Strict):
    """Where the PyTorch model comes from: exactly one of three forms.

    * ``architecture`` (``package.module:Class`` or ``path/file.py:Class``) plus
      ``kwargs`` and a ``checkpoint`` holding its ``state_dict``;
    * ``torchscript``: a ``torch.jit.save`` file;
    * ``exported_program``: a ``torch.export.save`` file (export it with a dynamic batch).
    """

    architecture: Architecture | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: ExistingFile | None = None
    torchscript: ExistingFile | None = None
    exported_program: ExistingFile | None = None

    @model_validator(mode="after")
    def _exactly_one_form(self) -> ModelSource:
        forms = [
            name
            for name, present in (
                ("architecture", self.architecture is not None or self.checkpoint is not None),
                ("torchscript", self.torchscript is not None),
                ("exported_program", self.exported_program is not None),
            )
            if present
        ]
        if len(forms) != 1:
            raise ValueError(
                "give exactly one model source: 'architecture' + 'checkpoint', "
                f"'torchscript' or 'exported_program' (got {', '.join(forms) or 'none'})"
            )
        if forms == ["architecture"]:
            if self.architecture is None or self.checkpoint is None:
                raise ValueError("'architecture' and 'checkpoint' must be given together")
        elif self.kwargs:
            raise ValueError("'kwargs' only applies to 'architecture'")
        return self

    @property
    def kind(self) -> str:
        if self.torchscript is not None:
            return "torchscript"
        if self.exported_program is not None:
            return "exported_program"
        return "state_dict"

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(p for p in (self.checkpoint, self.torchscript, self.exported_program) if p)


class MemberSpec(_Strict):
    """A model served on its own and, for ``members``, fed into the fusion step."""

    name: ModelName
    model: ModelSource
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    max_batch_size: int | None = Field(default=None, ge=1, le=MAX_BATCH_LIMIT)
    instances: int | None = Field(default=None, ge=1, le=64)
    precisions: list[Precision] | None = Field(default=None, min_length=1)  # default: precision.variants
    # chaining: input name -> "<earlier member>.<its output>"; inputs not listed take the pipeline input
    inputs_from: dict[TensorName, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _unique_tensor_names(self) -> MemberSpec:
        names = [t.name for t in (*self.inputs, *self.outputs)]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"tensor names must be unique within a model: {', '.join(dupes)}")
        if output_option_problems(self.outputs):
            raise ValueError("; ".join(output_option_problems(self.outputs)))
        if self.precisions and len(set(self.precisions)) != len(self.precisions):
            raise ValueError(f"precisions listed twice: {self.precisions}")
        inputs = {t.name for t in self.inputs}
        for name, source in self.inputs_from.items():
            if name not in inputs:
                raise ValueError(f"inputs_from maps '{name}', which is not one of the inputs ({', '.join(inputs)})")
            if source.count(".") != 1 or not all(source.split(".")):
                raise ValueError(f"inputs_from['{name}'] = '{source}' must look like '<member>.<output>'")
        if self.inputs_from and len(self.inputs_from) != len(self.inputs):
            raise ValueError("a chained member takes every input from other members: map all of "
                             f"{', '.join(sorted(inputs))} in inputs_from")
        return self


