"""How the members of a pipeline are fused: one class per ``fusion.type``.

The numbers a fusion runs with are checked by the same functions that compute it
(``tritonfleet.builder.runtime.ops``), so the spec and the served math agree on what is valid.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, model_validator

from tritonfleet.builder.runtime import ops
from tritonfleet.builder.spec.common import ModelName, TensorName, _Strict


class FusionOutputs(_Strict):
    probabilities: TensorName = "probabilities"
    class_index: TensorName = "class_index"


class _ClassScores(_Strict):
    """Fusions of per-member class scores ``[classes]`` into probabilities and a class."""

    activation: Literal["softmax", "none"] = "softmax"  # softmax: members output logits
    source: TensorName | None = None  # member output to fuse; default: each member's first
    members: list[ModelName] | None = Field(default=None, min_length=1)  # default: the leaves
    outputs: FusionOutputs = Field(default_factory=FusionOutputs)

    kind: ClassVar[str] = "classification"


def _check_weight_list(weights: list[float] | None) -> None:
    if weights is not None:
        ops.check_weights(weights, len(weights))  # FusionError is a ValueError: pydantic reports it


class MeanFusion(_ClassScores):
    """Arithmetic mean of the members' probabilities (soft voting)."""

    type: Literal["mean"]


class GeometricMeanFusion(_ClassScores):
    """Normalised geometric mean of the members' probabilities."""

    type: Literal["geometric_mean"]


class WeightedMeanFusion(_ClassScores):
    """Weighted mean; ``weights: auto`` fits them on data.validation by ``metric``:
    accuracy -> w_i proportional to accuracy_i; log_loss -> w_i proportional to 1 / log_loss_i."""

    type: Literal["weighted_mean"]
    weights: list[float] | Literal["auto"] = "auto"
    metric: Literal["accuracy", "log_loss"] = "accuracy"

    @model_validator(mode="after")
    def _check(self) -> WeightedMeanFusion:
        _check_weight_list(None if self.weights == "auto" else self.weights)
        return self


class VoteFusion(_ClassScores):
    """Majority vote (``hard``: ties to the higher summed probability, then the lower class)
    or ``soft`` vote (weighted mean of probabilities)."""

    type: Literal["vote"]
    mode: Literal["hard", "soft"] = "hard"
    weights: list[float] | None = None

    @model_validator(mode="after")
    def _check(self) -> VoteFusion:
        _check_weight_list(self.weights)
        return self


class StackingFusion(_ClassScores):
    """Multinomial logistic regression on the members' probabilities, fitted on
    data.validation at build time; coefficients stored as JSON beside the fusion model."""

    type: Literal["stacking"]
    regularization: float = Field(default=1.0, gt=0)  # inverse L2 strength (sklearn's C)
    max_iter: int = Field(default=1000, ge=10, le=100_000)


class RescoreFusion(_ClassScores):
    """The first fused member proposes its ``top_k`` classes, the second re-ranks them:
    ``alpha * p_first + (1 - alpha) * p_second`` on the candidates."""

    type: Literal["rescore"]
    top_k: int = Field(default=3, ge=1)
    alpha: float = Field(default=0.5, ge=0, le=1)


class DetectionTensors(_Strict):
    """Names of the padded detection tensors: members output them, the fusion too."""

    boxes: TensorName = "boxes"    # [K, 4] float (x1, y1, x2, y2)
    scores: TensorName = "scores"  # [K] float
    labels: TensorName = "labels"  # [K] int
    count: TensorName = "count"    # [1] int: valid rows, the rest is padding


class DetectionFusion(_Strict):
    """Weighted boxes fusion (``wbf``) or box averaging (``average``) of detections."""

    type: Literal["detection"]
    method: Literal["wbf", "average"] = "wbf"
    iou_threshold: float = Field(default=0.55, gt=0, lt=1)
    skip_threshold: float = Field(default=0.0, ge=0, le=1)
    weights: list[float] | None = None
    max_detections: int = Field(default=100, ge=1, le=10_000)
    members: list[ModelName] | None = Field(default=None, min_length=1)
    tensors: DetectionTensors = Field(default_factory=DetectionTensors)

    kind: ClassVar[str] = "detection"

    @model_validator(mode="after")
    def _check(self) -> DetectionFusion:
        _check_weight_list(self.weights)
        return self


class StageRef(_Strict):
    """A model a BLS pipeline calls: a member/baseline of this spec, or any model already in
    the repository (e.g. another pipeline's ensemble)."""

    model: ModelName
    version: int = Field(default=-1, ge=-1)
    output: TensorName | None = None  # default: the model's first output
    activation: Literal["softmax", "none"] = "softmax"


class CascadeFusion(_Strict):
    """Early exit (BLS): each stage answers the samples it is confident about
    (top probability >= threshold); the rest go to the next stage."""

    type: Literal["cascade"]
    stages: list[StageRef] = Field(min_length=2, max_length=8)
    thresholds: list[float] = Field(min_length=1)  # one per stage but the last
    outputs: FusionOutputs = Field(default_factory=FusionOutputs)
    stage_output: TensorName = "stage"  # which stage answered each sample

    kind: ClassVar[str] = "bls"

    @model_validator(mode="after")
    def _check(self) -> CascadeFusion:
        if len(self.thresholds) != len(self.stages) - 1:
            raise ValueError(f"{len(self.stages)} stages need {len(self.stages) - 1} thresholds "
                             f"(one per stage but the last), got {len(self.thresholds)}")
        if any(not 0 <= t <= 1 for t in self.thresholds):
            raise ValueError(f"thresholds must be in [0, 1], got {self.thresholds}")
        return self

    @property
    def refs(self) -> list[StageRef]:
        return list(self.stages)


class RouteFusion(_Strict):
    """A/B routing (BLS): ``candidate_fraction`` of requests go to the candidate, the rest
    to the current model; ``shadow`` also sends current-routed requests to the candidate
    without using its answer; ``fallback`` answers with the current model when the candidate
    fails. Decisions and fallbacks are counted as Triton metrics."""

    type: Literal["route"]
    current: StageRef
    candidate: StageRef
    candidate_fraction: float = Field(default=0.1, ge=0, le=1)
    shadow: bool = False
    fallback: bool = True
    outputs: FusionOutputs = Field(default_factory=FusionOutputs)
    route_output: TensorName = "route"  # 0: current, 1: candidate, 2: fallback to current

    kind: ClassVar[str] = "bls"

    @property
    def refs(self) -> list[StageRef]:
        return [self.current, self.candidate]


class ChainOutput(_Strict):
    """No fusion: the pipeline returns one member's outputs (chaining)."""

    type: Literal["none"]
    member: ModelName | None = None  # default: the last member

    kind: ClassVar[str] = "chain"


FusionSpec = Annotated[
    MeanFusion | GeometricMeanFusion | WeightedMeanFusion | VoteFusion | StackingFusion | RescoreFusion
    | DetectionFusion | CascadeFusion | RouteFusion | ChainOutput,
    Field(discriminator="type"),
]
CLASSIFICATION_FUSIONS = ops.CLASSIFICATION_TYPES  # the types ops.fuse computes; tests check the union covers them


