"""The load generator against the real server: every request accounted for, sane numbers."""

from __future__ import annotations

import re

import pytest

from tritonfleet.clients.errors import UsageError
from tritonfleet.clients.loadgen import LoadConfig, make_batches, run_load


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_concurrency_mode_accounts_for_every_request(triton, digits_data, protocol):
    cfg = LoadConfig("digits", concurrency=4, batch_size=4, warmup_s=0.5, window_s=0.75, max_windows=3,
                     protocol=protocol)
    res = run_load(triton.url(protocol), cfg, [digits_data["x_test"]])
    assert res.errors == 0 and res.error_messages == {}
    assert res.sent == res.completed > res.requests > 0
    assert res.infer_per_s == pytest.approx(res.requests_per_s * 4)
    lat = res.latency_ms
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert 1 <= len(res.windows) <= 3
    assert sum(w.requests for w in res.windows) == res.requests
    # server-side split covers every step of the ensemble, fusion included
    assert {"digits", "digits_fusion", "cnn_small_a", "cnn_small_b", "cnn_small_c"} <= set(res.server)
    for name in ("cnn_small_a", "digits_fusion"):
        step = res.server[name]
        assert step.requests > 0 and step.compute_infer_us > 0


def test_request_rate_mode_offers_the_asked_rate(triton, digits_data):
    cfg = LoadConfig("cnn_small_a", request_rate=100, warmup_s=0.5, window_s=0.7, max_windows=3)
    res = run_load(triton.url("grpc"), cfg, [digits_data["x_test"]])
    assert res.mode == "rate" and res.errors == 0
    assert res.requests_per_s == pytest.approx(100, rel=0.15)


def test_unknown_model_is_a_clear_error(triton):
    from tritonfleet.clients.errors import ServerError

    with pytest.raises(ServerError, match="model 'nope'"):
        run_load(triton.url("grpc"), LoadConfig("nope", warmup_s=0.1, window_s=0.1, max_windows=1, stable_windows=1))


def test_make_batches_cycles_the_dataset(digits_data):
    x = digits_data["x_test"][:10]
    batches = make_batches([x], 4)
    assert [b[0].shape[0] for b in batches] == [4, 4, 4]
    assert (batches[2][0][2:] == x[:2]).all()  # wraps around
    with pytest.raises(UsageError, match=re.escape("load concurrency must be >= 1 (got 0)")):
        LoadConfig("m", concurrency=0)
    with pytest.raises(UsageError, match=re.escape("load max_windows must be >= stable_windows (3) (got 2)")):
        LoadConfig("m", max_windows=2)
