"""The words a repository is described with, defined once for the spec, the builder and
the clients: precisions, artifact formats and model kinds."""

from __future__ import annotations

from enum import Enum
from typing import Literal

# Lowest precision last; fp32 is the reference every other variant is compared with.
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
Precision = Literal["fp32", "fp16", "int8"]


class _Word(str, Enum):
    """A str enum that prints and formats as its value (``f"{ArtifactFormat.ONNX}"`` is ``onnx``)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class ArtifactFormat(_Word):
    """What a model's version folder holds, i.e. how Triton runs it."""

    ONNX = "onnx"          # model.onnx: onnxruntime (ngc) or the Python-backend onnxruntime runner (local)
    PLAN = "plan"          # model.plan: a TensorRT engine (ngc)
    TORCHSCRIPT = "torchscript"  # model.pt: Triton's PyTorch backend (ngc) or the Python-backend torch runner (local)
    FUSION = "python"      # a Python-backend fusion step (model.py + ops.py)
    ENSEMBLE = "ensemble"  # platform: ensemble (no files)
    BLS = "bls"            # a Python-backend pipeline that calls other models (cascade, route)


class ModelKind(_Word):
    """The role of a model in its pipeline."""

    MEMBER = "member"
    BASELINE = "baseline"
    STUDENT = "student"    # a single model distilled from an ensemble (tritonfleet distill)
    FUSION = "fusion"
    ENSEMBLE = "ensemble"
    PIPELINE = "pipeline"
    COMPILED = "compiled"  # the whole pipeline as one ONNX graph (serving.compile), beside its ensemble


