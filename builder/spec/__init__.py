"""The pipeline spec: one validated schema for everything in ``ensemble_configs/*.yaml``.

``load_spec(path)`` -> frozen :class:`PipelineSpec`, or one :class:`SpecError` that lists
every problem with its place in the file. Modules: ``common`` (names, paths), ``models``
(tensors, sources, members), ``fusion``, ``options`` (serving, data, parity, precision,
TensorRT), ``distillation`` (the student of ``tritonfleet distill``), ``pipeline`` (the whole
spec and its cross-checks), ``load`` (YAML, ``extends``, error messages) and ``splits`` (the
labelled data a spec points to).
"""

from tritonfleet.builder.spec.distillation import DistillationSpec, StudentModel
from tritonfleet.builder.spec.fusion import CLASSIFICATION_FUSIONS, FusionSpec, StageRef
from tritonfleet.builder.spec.load import load_spec, parse_spec, with_overrides
from tritonfleet.builder.spec.models import MemberSpec, ModelSource, TensorSpec
from tritonfleet.builder.spec.options import Calibration, DataSpec, ParitySpec, PrecisionSpec, Serving, Tolerance
from tritonfleet.builder.spec.pipeline import PipelineSpec

__all__ = [
    "CLASSIFICATION_FUSIONS", "Calibration", "DataSpec", "DistillationSpec", "FusionSpec", "MemberSpec", "ModelSource",
    "ParitySpec", "PipelineSpec", "PrecisionSpec", "Serving", "StageRef", "StudentModel", "TensorSpec", "Tolerance",
    "load_spec", "parse_spec", "with_overrides",
]
