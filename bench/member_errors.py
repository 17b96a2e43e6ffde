"""Member errors inside an ensemble on tritonserver 2.51: the cause, measured, and the fix.

    python bench/member_errors.py [--errors 100] [--record]
    python bench/member_errors.py --smoke          # a few errors, two scenarios: checks the script

Part 1, Triton alone. A generated repository of tiny Python-backend models -- ``fail`` answers
every request with an error, ``ok`` answers (both after a set delay) -- and ensembles over them:

* ``failing member first``: ``fail`` (at once) beside ``ok`` (200 ms): the failing step answers
  while its sibling still runs;
* ``failing member last``: ``fail`` (200 ms) beside ``ok`` (at once);
* ``failing last step``: ``ok`` then ``fail`` (nothing runs beside the failing step);
* ``member called directly``: requests to ``fail`` itself.

Part 2, tritonfleet (not with --smoke). The two-member text pipeline of
``tritonfleet.examples.conformance.member_errors`` (one member fails in onnxruntime on ids
beyond its vocabulary, its slower sibling does not), built, served as built (members hand their
errors on to the fusion step) and with that wiring taken out of the ensemble's config (what
tritonserver 2.51 does with a plain ensemble).

For each: N requests that fail, then the requests the server still counts in flight when it is
stopped (its own log line ``... has K in-flight inferences``), the seconds it takes to stop (it
waits up to --exit-timeout for requests in flight, 30 s as Triton's default), and the growth of
its resident memory over the N requests. --record writes docs/RELIABILITY.md's section between
<!-- reliability_member_errors:begin/end -->.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from soak import record_reliability

from common import bench_parser, machine, markdown_table, today

MODEL = '''import json, time
import numpy as np
import triton_python_backend_utils as pb_utils
class TritonPythonModel:
    def initialize(self, args):
        p = {k: v["string_value"] for k, v in json.loads(args["model_config"])["parameters"].items()}
        self.delay, self.fail = float(p["delay_ms"]) / 1e3, p["fail"] == "true"
    def execute(self, requests):
        time.sleep(self.delay)
        if self.fail:
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError("failed on purpose")) for _ in requests]
        return [pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy())])
                for r in requests]
'''
IN_FLIGHT = re.compile(r"'([^']+)' \(version \d+\) has (\d+) in-flight inferences")
SCENARIOS = {  # name -> (model to call, what it shows)
    "failing member first": ("ens_fail_first", "fail (0 ms) beside ok (200 ms)"),
    "failing member last": ("ens_fail_last", "fail (200 ms) beside ok (0 ms)"),
    "failing last step": ("ens_tail", "ok (0 ms), then fail (0 ms)"),
    "member called directly": ("fail_fast", "fail (0 ms), no ensemble"),
}
SMOKE = ("failing member first", "member called directly")


def write_triton_repository(root: Path) -> Path:
    def model(name: str, fail: bool, delay_ms: int) -> None:
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / "model.py").write_text(MODEL)
        (root / name / "config.pbtxt").write_text(
            f'name: "{name}"\nbackend: "python"\nmax_batch_size: 8\n'
            'input { name: "x" data_type: TYPE_FP32 dims: 4 }\noutput { name: "y" data_type: TYPE_FP32 dims: 4 }\n'
            'instance_group { count: 1 kind: KIND_CPU }\n'
            f'parameters {{ key: "delay_ms" value {{ string_value: "{delay_ms}" }} }}\n'
            f'parameters {{ key: "fail" value {{ string_value: "{str(fail).lower()}" }} }}\n')

    def ensemble(name: str, steps: list[tuple[str, str, str]], outputs: list[str]) -> None:
        (root / name / "1").mkdir(parents=True)
        (root / name / "1" / ".keep").write_text("")
        step = "\n".join(f'  step {{ model_name: "{m}" model_version: -1 input_map {{ key: "x" value: "{i}" }} '
                         f'output_map {{ key: "y" value: "{o}" }} }}' for m, i, o in steps)
        outs = "\n".join(f'output {{ name: "{o}" data_type: TYPE_FP32 dims: 4 }}' for o in outputs)
        (root / name / "config.pbtxt").write_text(
            f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: 8\n'
            f'input {{ name: "x" data_type: TYPE_FP32 dims: 4 }}\n{outs}\nensemble_scheduling {{\n{step}\n}}\n')

    model("fail_fast", True, 0)
    model("fail_slow", True, 200)
    model("ok_fast", False, 0)
    model("ok_slow", False, 200)
    ensemble("ens_fail_first", [("fail_fast", "x", "a"), ("ok_slow", "x", "b")], ["a", "b"])
    ensemble("ens_fail_last", [("fail_slow", "x", "a"), ("ok_fast", "x", "b")], ["a", "b"])
    ensemble("ens_tail", [("ok_fast", "x", "m"), ("fail_fast", "m", "a")], ["a"])
    return root


def without_handing_on(repository: Path, pipeline: str) -> Path:
    """A copy of a built repository whose ensemble does not wire the members' errors to the fusion
    step: each member then fails as a plain Triton model does."""
    copy = Path(tempfile.mkdtemp(prefix="member-errors-plain-")) / "model_repository"
    shutil.copytree(repository, copy)
    from tritonfleet.clients.model_config import parse_pbtxt, to_pbtxt

    config = copy / pipeline / "config.pbtxt"
    proto = parse_pbtxt(config.read_text())
    for step in proto.ensemble_scheduling.step:
        step.output_map.pop("tritonfleet_error", None)
        for key in [k for k in step.input_map if k.startswith("member_error_")]:
            step.input_map.pop(key)
    config.write_text(to_pbtxt(proto))
    return copy


def measure(repository: Path, model: str, requests: list, exit_timeout: int) -> dict:
    """Send ``requests`` (each must fail), then stop the server: what is left in flight, how long
    stopping takes, how the server's memory grew."""
    from tritonfleet.clients.errors import ServerError
    from tritonfleet.clients.infer import TritonClient
    from tritonfleet.clients.loadgen.soak import process_tree_rss
    from tritonfleet.clients.server import TritonServer

    server = TritonServer(repository, model_control_mode="explicit", extra_args=[f"--exit-timeout-secs={exit_timeout}"])
    server.start()
    errors, message = 0, ""
    try:
        with TritonClient(server.url("grpc"), timeout=30) as client:
            try:  # warm-up: one failing request before memory is measured
                client.infer(model, requests[0])
            except ServerError:
                errors += 1
            rss_before = process_tree_rss(server.pid)
            for request in requests:
                try:
                    client.infer(model, request)
                except ServerError as exc:
                    errors += 1
                    message = str(exc).split(": ", 1)[-1]
            rss_after = process_tree_rss(server.pid)
    finally:
        started = time.monotonic()
        server.stop(timeout=exit_timeout + 30)
        stop_s = time.monotonic() - started
    in_flight = [int(n) for _, n in IN_FLIGHT.findall(server.logs())]
    return {"requests": len(requests) + 1, "errors": errors, "message": message,
            "in_flight_at_stop": max(in_flight, default=0), "stop_s": stop_s,
            "rss_before_mib": rss_before / 2**20, "rss_after_mib": rss_after / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, repository=None)
    parser.add_argument("--errors", type=int, default=None, help="failing requests per scenario (default 100; smoke 3)")
    parser.add_argument("--exit-timeout", type=int, default=None,
                        help="tritonserver --exit-timeout-secs (default 30, Triton's own; smoke 3)")
    parser.add_argument("--smoke", action="store_true", help="two Triton-only scenarios, a few errors each")
    args = parser.parse_args(argv)
    if args.smoke and args.record:
        parser.error("--smoke runs are not recorded")
    n = args.errors or (3 if args.smoke else 100)
    exit_timeout = args.exit_timeout or (3 if args.smoke else 30)

    import numpy as np

    rows, raw = [], {}
    work = Path(tempfile.mkdtemp(prefix="member-errors-"))
    try:
        repo = write_triton_repository(work / "triton")
        x = np.zeros((1, 4), np.float32)
        for name, (model, shape) in SCENARIOS.items():
            if args.smoke and name not in SMOKE:
                continue
            raw[name] = measure(repo, model, [x] * n, exit_timeout)
            rows.append((name, shape, raw[name]))
        if not args.smoke:
            from tritonfleet.builder.build import build
            from tritonfleet.builder.spec import load_spec
            from tritonfleet.examples.conformance import member_errors as case

            spec = case.write_spec(work / "pipeline", work / "pipeline" / "model_repository")
            built = build(load_spec(spec), progress=False).repository
            bad = [case.requests(False, seed=i) for i in range(n)]
            for name, repository in (("tritonfleet pipeline, as built", built),
                                     ("tritonfleet pipeline, errors not handed on",
                                      without_handing_on(built, case.PIPELINE))):
                raw[name] = measure(repository, case.PIPELINE, bad, exit_timeout)
                rows.append((name, f"{case.FAILING} fails in onnxruntime beside {case.SIBLING}", raw[name]))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    table = markdown_table(
        ["scenario", "steps", "requests failed", "left in flight at stop", "stop s", "RSS MiB before → after"],
        [[name, shape, f"{r['errors']} of {r['requests']}", r["in_flight_at_stop"], f"{r['stop_s']:.1f}",
          f"{r['rss_before_mib']:,.0f} → {r['rss_after_mib']:,.0f}"] for name, shape, r in rows])
    goal = [f"`{name}`: {'met' if r['in_flight_at_stop'] == 0 and r['stop_s'] < 5 else 'MISSED'}"
            for name, _, r in rows if name.startswith("tritonfleet pipeline, as built")]
    text = (f"{machine()}; tritonserver from nvidia-pytriton; --exit-timeout-secs={exit_timeout}; {n + 1} requests "
            f"per scenario that make a step fail (the first one warms up; memory is measured after it); {today()}\n\n{table}\n\n"
            + (f"Goal (0 requests left in flight, stopped in under 5 s): {'; '.join(goal)}\n\n" if goal else "")
            + "Error seen by the client, per scenario: "
            + "; ".join(f"{name}: `{r['message'][:160]}`" for name, _, r in rows))
    print(text)
    if args.json:
        import json

        args.json.write_text(json.dumps(raw, indent=2))
    if args.record:
        command = " ".join(["python bench/member_errors.py", *(argv if argv is not None else sys.argv[1:])])
        print(f"recorded in {record_reliability('reliability_member_errors', text, command)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
