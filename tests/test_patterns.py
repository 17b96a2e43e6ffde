"""Every fusion pattern through the real server: its output equals the numpy reference
computed by ``ops.py`` from the members' outputs, which are also fetched through Triton."""

from __future__ import annotations

import json
import re
import urllib.request

import numpy as np
import pytest

from tritonfleet.builder.runtime import ops
from tritonfleet.clients.errors import ServerError
from tritonfleet.clients.model_config import parse_pbtxt

N = 48


def served_params(repo, model: str, key: str) -> dict:
    config = parse_pbtxt((repo / model / "config.pbtxt").read_text())
    params = json.loads(config.parameters[key].string_value)
    extra = repo / model / "1" / "params.json"
    if extra.is_file():
        params.update(json.loads(extra.read_text()))
    return params


@pytest.fixture(scope="module")
def client(triton):
    with triton.client("grpc") as c:
        yield c


@pytest.fixture(scope="module")
def x(digits_data):
    return digits_data["x_test"][:N]


def _logits(client, names, x):
    return [client.infer(n, x)["logits"] for n in names]


@pytest.mark.parametrize("pipeline", ["digits", "digits_geometric", "digits_weighted", "digits_vote",
                                      "digits_stacking", "digits_rescore"])
def test_classification_pipelines_equal_the_numpy_reference(repository, client, x, pipeline):
    spec, result = repository[pipeline]
    params = served_params(result.repository, spec.fusion_model_name, "fusion")
    expected = ops.fuse(params, _logits(client, [m.name for m in spec.fused_members], x))
    out = client.infer(pipeline, x)
    assert out["probabilities"].shape == (N, 10) and out["class_index"].shape == (N, 1)
    np.testing.assert_allclose(out["probabilities"], expected["probabilities"], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(out["class_index"], expected["class_index"])


def test_weighted_fusion_uses_the_weights_fitted_on_validation(repository):
    spec, result = repository["digits_weighted"]
    params = served_params(result.repository, spec.fusion_model_name, "fusion")
    assert params["weights"] == result.fitted["weights"]
    assert pytest.approx(sum(params["weights"])) == 1.0 and len(params["weights"]) == 3
    assert result.fitted["metric"] == "log_loss" and len(result.fitted["scores"]) == 3


def test_stacking_coefficients_are_data(repository):
    spec, result = repository["digits_stacking"]
    folder = result.repository / spec.fusion_model_name / "1"
    stored = json.loads((folder / "params.json").read_text())
    assert np.asarray(stored["coef"]).shape == (30, 10) and len(stored["intercept"]) == 10
    assert not [p for p in folder.iterdir() if p.suffix in (".pkl", ".pickle", ".joblib")]


def test_chained_pipeline(repository, client, x):
    spec, _ = repository["digits_chain"]
    features = client.infer("digits_backbone", x)["features"]
    assert features.shape == (N, 64)
    heads = [client.infer(h, {"features": features})["logits"] for h in ("digits_head_a", "digits_head_b")]
    expected = ops.fuse({"type": "mean"}, heads)
    out = client.infer("digits_chain", x)
    np.testing.assert_allclose(out["probabilities"], expected["probabilities"], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(out["class_index"], expected["class_index"])


def test_detection_fusion(repository, client, detection_artifacts):
    spec, result = repository["detection_wbf"]
    images = np.load(detection_artifacts / "images.npz")["x_val"][:8]
    raw = [client.infer(m.name, images) for m in spec.fused_members]
    counts = np.stack([r["count"].ravel() for r in raw])
    assert counts.shape == (3, 8) and len(np.unique(counts)) > 1  # variable counts per image
    params = served_params(result.repository, spec.fusion_model_name, "fusion")
    expected = ops.fuse_detections(params, *[[r[k] for r in raw] for k in ("boxes", "scores", "labels", "count")])
    out = client.infer("detection_wbf", images)
    assert out["boxes"].shape == (8, 16, 4) and out["count"].shape == (8, 1)
    for key in ("boxes", "scores", "labels", "count"):
        np.testing.assert_allclose(out[key], expected[key], atol=1e-5, err_msg=key)


@pytest.mark.parametrize("threshold", [None, 0.0, 0.99, 1.0])
def test_cascade_escalates_exactly_the_unconfident_samples(repository, client, x, threshold):
    spec, _ = repository["digits_cascade"]
    t = spec.fusion.thresholds[0] if threshold is None else threshold
    small, large = _logits(client, ["cnn_small_a", "cnn_large"], x)
    escalate = ops.escalate_mask(ops.softmax(small), t)
    expected = np.where(escalate[:, None], ops.softmax(large), ops.softmax(small))
    import tritonclient.grpc as grpcclient

    raw = grpcclient.InferenceServerClient(client.url)
    tensor = grpcclient.InferInput("image", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    params = None if threshold is None else {"threshold": threshold}
    out = raw.infer("digits_cascade", [tensor], parameters=params)
    np.testing.assert_array_equal(out.as_numpy("stage")[:, 0], escalate.astype(np.int64))
    np.testing.assert_allclose(out.as_numpy("probabilities"), expected, atol=1e-6, rtol=0)
    if threshold == 0.0:
        assert not escalate.any()


def _route_counts(triton) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://{triton.url('metrics')}/metrics").read().decode()
    pattern = r'tritonfleet_route_total\{pipeline="digits_route",route="(\w+)"\} ([0-9.e+]+)'
    return {route: float(value) for route, value in re.findall(pattern, text)}


def test_route_splits_shadows_and_counts(triton, client, x):
    before = _route_counts(triton)
    current, candidate = _logits(client, ["cnn_small_b", "cnn_small_c"], x[:4])
    routes = []
    for _ in range(20):
        out = client.infer("digits_route", x[:4])
        route = int(out["route"][0, 0])
        routes.append(route)
        assert (out["route"] == route).all()
        np.testing.assert_allclose(out["probabilities"], ops.softmax(candidate if route == 1 else current), atol=1e-6)
    after = _route_counts(triton)
    sent_to_candidate = routes.count(1)
    assert sent_to_candidate == 5  # 25% of any 20 consecutive requests, exactly
    assert after["candidate"] - before["candidate"] == sent_to_candidate
    assert after["current"] - before["current"] == 20 - sent_to_candidate
    assert after["shadow"] - before["shadow"] == 20 - sent_to_candidate  # every current-routed request
    assert after["fallback"] == before["fallback"]


def test_route_falls_back_when_the_candidate_fails(triton, client, x):
    current = ops.softmax(client.infer("cnn_small_b", x[:4])["logits"])
    client.unload_model("cnn_small_c")
    try:
        before = _route_counts(triton)
        outs = [client.infer("digits_route", x[:4]) for _ in range(8)]
        after = _route_counts(triton)
    finally:
        client.load_model("cnn_small_c")
    routes = [int(o["route"][0, 0]) for o in outs]
    assert routes.count(2) == 2 and 1 not in routes  # both candidate turns fell back
    for out in outs:  # every answer came from the current model
        np.testing.assert_allclose(out["probabilities"], current, atol=1e-6)
    assert after["fallback"] - before["fallback"] == 2
    assert after["shadow_error"] - before["shadow_error"] == 6  # shadows failed, answers did not
    assert client.infer("digits_route", x[:4])["probabilities"].shape == (4, 10)  # candidate back


def test_fusion_rejects_nan_with_a_clear_error(client, x):
    bad = x[:2].copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ServerError, match="fusion: member 0 scores hold NaN or inf values"):
        client.infer("digits_vote", bad)
