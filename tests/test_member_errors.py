"""A member that fails inside an ensemble (docs/RELIABILITY.md, "Member errors inside an ensemble").

tritonserver 2.51 loses track of an ensemble request when one member step fails while a sibling
step still runs (the request stays in flight for good: shutdown waits its 30 s exit timeout).
Local runners therefore hand their errors on to the ensemble's final step. The pipeline here has a
member that fails in onnxruntime (ids beyond its vocabulary) beside a slower sibling that does
not; without the handing-on, about one error in seven stays in flight on this machine.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from tritonfleet.builder.build import build
from tritonfleet.builder.repository.plan import plan_pipeline
from tritonfleet.builder.spec import load_spec
from tritonfleet.clients.errors import ServerError
from tritonfleet.clients.infer import TritonClient
from tritonfleet.clients.loadgen.soak import process_tree_rss
from tritonfleet.clients.server import TritonServer
from tritonfleet.examples.conformance import member_errors as case

from conftest import ROOT

# onnxruntime's own words, then ours: the member, the ensemble, the step
GATHER = (r"onnxruntime: \[ONNXRuntimeError\] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running "
          r"Gather node\. Name:'[^']+' Status Message: indices element out of data bounds, idx=\d+ must be within "
          r"the inclusive range \[-500,499\]")


@pytest.fixture(scope="module")
def member_error_pipeline(tmp_path_factory):
    folder = tmp_path_factory.mktemp("member-errors")
    spec = load_spec(case.write_spec(folder, folder / "model_repository"))
    return spec, build(spec, progress=False)


def test_local_ensembles_hand_member_errors_to_the_fusion_step(member_error_pipeline):
    spec, _ = member_error_pipeline
    local = {p.config.name: p.config for p in plan_pipeline(spec, "local")}
    steps = {s.model_name: s for s in local[case.PIPELINE].ensemble_steps}
    for k, member in enumerate((case.FAILING, case.SIBLING)):
        assert steps[member].output_map["tritonfleet_error"] == f"{member}__tritonfleet_error"
        assert steps[f"{case.PIPELINE}_fusion"].input_map[f"member_error_{k}"] == f"{member}__tritonfleet_error"
        assert [t.name for t in local[member].outputs] == ["logits", "tritonfleet_error", "tritonfleet_raise"]
    fusion_inputs = {t.name: t.optional for t in local[f"{case.PIPELINE}_fusion"].inputs}
    assert fusion_inputs == {"scores_0": False, "scores_1": False, "member_error_0": True, "member_error_1": True}
    ngc = {p.config.name: p.config for p in plan_pipeline(spec, "ngc")}  # members of other backends: nothing to wire
    assert all("tritonfleet_error" not in s.output_map for s in ngc[case.PIPELINE].ensemble_steps)


def test_after_100_member_errors_through_an_ensemble_the_server_is_healthy_and_stops_quickly(member_error_pipeline):
    _, result = member_error_pipeline
    bad = [case.requests(False, seed=i) for i in range(100)]
    good = case.requests(True, batch=3)
    server = TritonServer(result.repository, model_control_mode="explicit")
    server.start()
    try:
        with TritonClient(server.url("grpc"), timeout=20) as client:
            expected = client.infer(case.PIPELINE, good)["probabilities"]
            for request in bad[:10]:  # warm-up: every code path once, before memory is measured
                with pytest.raises(ServerError):
                    client.infer(case.PIPELINE, request)
            rss_before = process_tree_rss(server.pid)
            messages = []
            for request in bad:
                with pytest.raises(ServerError) as info:
                    client.infer(case.PIPELINE, request)
                messages.append(str(info.value))
                np.testing.assert_allclose(client.infer(case.PIPELINE, good)["probabilities"], expected, atol=1e-6)
            rss_after = process_tree_rss(server.pid)
            with pytest.raises(ServerError) as direct:  # called directly, the member fails as it always did
                client.infer(case.FAILING, bad[0])
            assert client.infer(case.SIBLING, bad[0])["logits"].shape == (1, 5)
        url = server.url("grpc")
        for message in messages:  # one error each, naming the ensemble, the failing member and onnxruntime's cause
            assert re.fullmatch(f"model '{case.PIPELINE}' at {re.escape(url)}: in ensemble '{case.PIPELINE}', "
                                f"member '{case.FAILING}': {GATHER}", message), message
        assert re.fullmatch(f"model '{case.FAILING}' at {re.escape(url)}: {GATHER}", str(direct.value)), direct.value
        # the 200 requests above hold no memory: within 5% (allocator noise) of the warmed-up server
        assert rss_after <= rss_before * 1.05, (rss_before / 2**20, rss_after / 2**20)
    finally:
        started = time.monotonic()
        code = server.stop()
        stopped_in = time.monotonic() - started
    # no request is left in flight: the server exits at once instead of waiting its 30 s exit timeout
    assert stopped_in < 5.0, (stopped_in, server.logs(tail=20))
    assert code == 0 and not re.search(r"has [1-9]\d* in-flight inferences", server.logs())


def test_member_errors_script_smoke_run_shows_the_request_left_in_flight(tmp_path):
    """bench/member_errors.py on Triton alone: a member failing beside a running sibling leaves
    every request in flight; the same model called directly leaves none."""
    out = tmp_path / "member_errors.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "member_errors.py"), "--smoke", "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    data = json.loads(out.read_text())
    first, direct = data["failing member first"], data["member called directly"]
    assert first["errors"] == first["requests"] == direct["errors"] == direct["requests"] == 4
    assert first["in_flight_at_stop"] == 4 and direct["in_flight_at_stop"] == 0
    assert first["message"] == "in ensemble 'ens_fail_first', failed on purpose"
    assert "| failing member first | fail (0 ms) beside ok (200 ms) | 4 of 4 | 4 |" in proc.stdout
