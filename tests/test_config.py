"""config.pbtxt generation through Triton's schema, and ensemble graph checks."""

from __future__ import annotations

import pytest
from google.protobuf import json_format

from tritonfleet.builder.errors import SpecError
from tritonfleet.builder.repository.config import DynamicBatchingConfig, EnsembleStep, ModelConfig, TensorConfig
from tritonfleet.builder.repository.ensemble import check_ensemble
from tritonfleet.clients.model_config import parse_pbtxt, tensors_of

IMAGE = TensorConfig("image", "float32", (1, 8, 8))
LOGITS = TensorConfig("logits", "float32", (10,))


def _member(name: str, outputs=(LOGITS,)) -> ModelConfig:
    return ModelConfig(name=name, backend="python", inputs=(IMAGE,), outputs=tuple(outputs), max_batch_size=8)


def _fusion(n: int = 2, dtype: str = "float32") -> ModelConfig:
    return ModelConfig(
        name="fuse", backend="python", max_batch_size=8,
        inputs=tuple(TensorConfig(f"scores_{i}", dtype, (10,)) for i in range(n)),
        outputs=(TensorConfig("probabilities", "float32", (10,)),),
    )


PROBABILITIES = (TensorConfig("probabilities", "float32", (10,)),)


def _ensemble(steps, outputs=PROBABILITIES) -> ModelConfig:
    return ModelConfig(name="ens", platform="ensemble", inputs=(IMAGE,), outputs=tuple(outputs),
                       max_batch_size=8, instance_kind=None, ensemble_steps=tuple(steps))


def _good_steps():
    return [
        EnsembleStep("a", {"image": "image"}, {"logits": "a_out"}),
        EnsembleStep("b", {"image": "image"}, {"logits": "b_out"}),
        EnsembleStep("fuse", {"scores_0": "a_out", "scores_1": "b_out"}, {"probabilities": "probabilities"}),
    ]


def _models(**overrides):
    models = {"a": _member("a"), "b": _member("b"), "fuse": _fusion()}
    models.update(overrides)
    return models


def test_pbtxt_round_trips_through_the_schema():
    cfg = ModelConfig(
        name="m", backend="python", inputs=(IMAGE,), outputs=(LOGITS,), max_batch_size=16,
        instance_count=2, dynamic_batching=DynamicBatchingConfig((4, 8), 150), parameters={"k": "v"},
    )
    proto = parse_pbtxt(cfg.to_pbtxt())
    assert proto.name == "m" and proto.backend == "python" and proto.max_batch_size == 16
    assert tensors_of(proto, "input") == {"image": ("float32", (1, 8, 8))}
    assert tensors_of(proto, "output") == {"logits": ("float32", (10,))}
    assert proto.instance_group[0].count == 2
    assert list(proto.dynamic_batching.preferred_batch_size) == [4, 8]
    assert proto.dynamic_batching.max_queue_delay_microseconds == 150
    assert proto.parameters["k"].string_value == "v"
    assert json_format.MessageToDict(proto, preserving_proto_field_name=True) == json_format.MessageToDict(
        cfg.to_proto(), preserving_proto_field_name=True
    )


def test_max_batch_size_zero_is_written_explicitly():
    cfg = ModelConfig(name="m", backend="python", inputs=(IMAGE,), outputs=(LOGITS,), max_batch_size=0,
                      dynamic_batching=DynamicBatchingConfig())
    text = cfg.to_pbtxt()
    assert "max_batch_size: 0" in text
    assert "dynamic_batching" not in text  # batching needs max_batch_size > 0


def test_schema_rejects_what_triton_would_reject():
    bad = ModelConfig(name="m", backend="python", inputs=(IMAGE,), outputs=(LOGITS,), instance_kind="KIND_TPU")
    with pytest.raises(json_format.ParseError, match="KIND_TPU"):
        bad.to_pbtxt()


def test_valid_ensemble_returns_run_order():
    assert check_ensemble(_ensemble(_good_steps()), _models()) == ["a", "b", "fuse"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda s, m: s.__setitem__(0, EnsembleStep("zz", {"image": "image"}, {"logits": "a_out"})),
         "step 0 uses model 'zz', which the repository does not hold"),
        (lambda s, m: s.__setitem__(2, EnsembleStep("fuse", {"scores_0": "a_out"}, {"probabilities": "probabilities"})),
         "step 2 ('fuse') leaves its input 'scores_1' unfed"),
        (lambda s, m: s.__setitem__(0, EnsembleStep("a", {"img": "image"}, {"logits": "a_out"})),
         "step 0 ('a') maps 'img', which is not one of its inputs (image)"),
        (lambda s, m: s.__setitem__(1, EnsembleStep("b", {"image": "image"}, {"logits": "a_out"})),
         "tensor 'a_out' is produced twice: by a.logits and by b.logits"),
        (lambda s, m: s.__setitem__(1, EnsembleStep("b", {"image": "nowhere"}, {"logits": "b_out"})),
         "b.image reads tensor 'nowhere', which nothing produces"),
        (lambda s, m: s.__setitem__(0, EnsembleStep("a", {"image": "image"}, {"probs": "a_out"})),
         "step 0 ('a') maps output 'probs', which it does not produce (logits)"),
    ],
)
def test_broken_ensembles_are_named(mutate, message):
    steps = _good_steps()
    mutate(steps, None)
    with pytest.raises(SpecError) as info:
        check_ensemble(_ensemble(steps), _models())
    assert message in str(info.value)


def test_dtype_and_shape_mismatch_name_both_ends():
    models = _models(b=_member("b", outputs=(TensorConfig("logits", "float32", (12,)),)),
                     fuse=_fusion(dtype="float16"))
    with pytest.raises(SpecError) as info:
        check_ensemble(_ensemble(_good_steps()), models)
    msg = str(info.value)
    assert "tensor 'a_out': a.logits produces float32[10] but fuse.scores_0 expects float16[10]" in msg
    assert "tensor 'b_out': b.logits produces float32[12] but fuse.scores_1 expects float16[10]" in msg


def test_cycle_and_unproduced_output():
    models = _models(a=ModelConfig(name="a", backend="python", inputs=(TensorConfig("x", "float32", (10,)),),
                                   outputs=(LOGITS,), max_batch_size=8),
                     b=ModelConfig(name="b", backend="python", inputs=(TensorConfig("x", "float32", (10,)),),
                                   outputs=(LOGITS,), max_batch_size=8))
    steps = [EnsembleStep("a", {"x": "b_out"}, {"logits": "a_out"}),
             EnsembleStep("b", {"x": "a_out"}, {"logits": "b_out"})]
    with pytest.raises(SpecError, match=r"steps a, b wait on each other \(a cycle\)"):
        check_ensemble(_ensemble(steps, outputs=()), models)
    with pytest.raises(SpecError, match="ensemble output 'probabilities' is produced by no step"):
        check_ensemble(_ensemble(_good_steps()[:2]), _models())


def test_variable_dims_are_compatible():
    var = _member("a", outputs=(TensorConfig("logits", "float32", (-1,)),))
    assert check_ensemble(_ensemble(_good_steps()), _models(a=var)) == ["a", "b", "fuse"]
