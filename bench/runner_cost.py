"""Where a Python-backend member's time goes, and what the runner changes bought, side by side.

    python bench/runner_cost.py [--baseline-runner FILE] [--record]

The local target serves every member with tritonfleet's onnxruntime runner inside Triton's
Python backend. For each model and batch size this script builds the digits members (fp32,
dynamic batching off, so one request is one execution) and measures, on one server:

1. **Where the time goes**, per request, at concurrency 1 (no queueing): Triton's statistics
   give ``compute_input`` (Triton copies the request into the stub's shared memory),
   ``compute_infer`` (the stub's round trip: IPC, the stub's loop and our ``execute()``) and
   ``compute_output`` (Triton takes the outputs back); the runner's own counters
   (``phase_metrics: true``, on a copy of the model) split ``execute()`` into ``inputs``
   (pb tensors -> numpy), ``onnxruntime`` and ``outputs`` (numpy -> pb tensors, responses).
   IPC + stub loop = ``compute_infer`` - the three phases. The same ONNX file timed in an
   in-process onnxruntime session (same thread count) is the floor.
2. **Runner before vs now** (with ``--baseline-runner``, e.g. the runner of an earlier commit:
   ``git show REV:builder/runtime/onnx_model.py > before.py``): the same model served by both
   runners on the same server, throughput at ``--concurrency`` in alternating (ABBA) rounds;
   the ratio is the median of per-round ratios with its range; unstable windows (perf_analyzer's
   rule) are flagged on both sides alike.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

from common import (
    ROOT,
    SPEC_DIR,
    UNSTABLE_RULE,
    Sample,
    bench_parser,
    fmt_ratio,
    headline,
    labelled,
    machine,
    markdown_table,
    publish,
    run_abba,
    today,
)

PHASES = ("inputs", "onnxruntime", "outputs")


def runner_counters(metrics_url: str) -> dict[tuple[str, str], float]:
    """(model, phase) -> microseconds, and (model, "executions") -> count, from the metrics port."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://{metrics_url}/metrics", timeout=10).read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tritonfleet_runner_phase_us_total":
                out[(sample.labels["model"], sample.labels["phase"])] = sample.value
            elif sample.name == "tritonfleet_runner_executions_total":
                out[(sample.labels["model"], "executions")] = sample.value
    return out


def variant_folder(repo: Path, served: Path, model: str, new: str, parameters: dict[str, str] | None = None,
                   runner: Path | None = None) -> None:
    """A copy of ``repo/model`` as ``served/new`` (its served version only, dynamic batching off), with
    extra config parameters or another model.py."""
    from tritonfleet.clients.model_config import parse_pbtxt, to_pbtxt

    config = parse_pbtxt((repo / model / "config.pbtxt").read_text())
    versions = sorted(int(p.name) for p in (repo / model).iterdir() if p.name.isdigit())
    version = config.version_policy.specific.versions[-1] if config.version_policy.HasField("specific") else versions[-1]
    (served / new).mkdir(parents=True)
    shutil.copytree(repo / model / str(version), served / new / "1",
                    ignore=shutil.ignore_patterns("__pycache__"))
    config.name = new
    config.ClearField("version_policy")
    config.ClearField("dynamic_batching")  # one request = one execution
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = value
    (served / new / "config.pbtxt").write_text(to_pbtxt(config))
    if runner is not None:
        shutil.copyfile(runner, served / new / "1" / "model.py")


def build_digits(args, batches: list[int]) -> Path:
    """The digits members, fp32, with a max batch size for every batch measured."""
    from tritonfleet.builder.build import build
    from tritonfleet.builder.spec import load_spec, with_overrides
    from tritonfleet.examples.digits.train import ensure_trained
    from tritonfleet.examples.workdir import artifacts

    ensure_trained(artifacts(ROOT), progress=False)
    spec = with_overrides(load_spec(SPEC_DIR / "digits.yaml"), {
        "serving": {"max_batch_size": max(64, *batches)}, "precision": {"variants": ["fp32"]}})
    out = args.output or Path(tempfile.mkdtemp(prefix="tritonfleet-runner-cost-")) / "model_repository"
    return build(spec, output_dir=out, progress=False).repository


def runner_parameter(folder: Path, key: str, default: str) -> str:
    from tritonfleet.clients.model_config import parse_pbtxt

    config = parse_pbtxt((folder / "config.pbtxt").read_text())
    return config.parameters[key].string_value if key in config.parameters else default


def breakdown(url: str, metrics_url: str, model: str, x: np.ndarray, batch: int, window: float) -> dict:
    from tritonfleet.clients.loadgen import LoadConfig, run_load

    before = runner_counters(metrics_url)
    result = run_load(url, LoadConfig(model, concurrency=1, batch_size=batch, warmup_s=0.5, window_s=window,
                                      max_windows=6), [x])
    after = runner_counters(metrics_url)
    executions = after[(model, "executions")] - before.get((model, "executions"), 0.0)
    phases = {p: (after[(model, p)] - before.get((model, p), 0.0)) / executions for p in PHASES}
    server = result.server[model]
    return {"stable": result.stable, "requests_per_s": result.requests_per_s, "executions": executions,
            "compute_input_us": server.compute_input_us, "compute_infer_us": server.compute_infer_us,
            "compute_output_us": server.compute_output_us, "queue_us": server.queue_us,
            "batch_per_execution": server.batch_per_execution, **{f"{p}_us": v for p, v in phases.items()},
            "ipc_us": server.compute_infer_us - sum(phases.values())}


def in_process_us(onnx: Path, x: np.ndarray, batch: int, threads: int, seconds: float) -> float:
    """Microseconds per session.run of one batch in this process."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    feeds = {name: np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])))}
    for _ in range(20):
        session.run(None, feeds)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, feeds)
        calls += 1
    return 1e6 * (time.perf_counter() - start) / calls


def before_vs_now(url: str, model: str, baseline: str, x: np.ndarray, batch: int, concurrency: int,
                  rounds: int, window: float, max_windows: int) -> dict:
    from tritonfleet.clients.loadgen import LoadConfig, run_load

    def measure(name: str, _round: int) -> Sample:
        res = run_load(url, LoadConfig(name, concurrency=concurrency, batch_size=batch, warmup_s=0.5,
                                       window_s=window, max_windows=max_windows), [x])
        return Sample(res.infer_per_s, res.stable, {"p99_ms": res.latency_ms.get("p99")})

    run = run_abba(measure, [model, baseline], rounds)
    return {"rounds": run.to_dict(), "ratio": run.ratio(model, baseline), "kept": run.kept_text(),
            "now": run.values(model), "before": run.values(baseline)}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, repository="a temporary folder")
    parser.add_argument("--models", default="cnn_small_a,cnn_large")
    parser.add_argument("--batch-sizes", default="1,8,64")
    parser.add_argument("--baseline-runner", type=Path, default=None,
                        help="another onnx_model.py to compare with, served beside the current one")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=4, help="ABBA rounds of before vs now")
    parser.add_argument("--window", type=float, default=2.0, help="seconds per measurement window")
    parser.add_argument("--from-repository", type=Path, default=None,
                        help="take the members from this built repository instead of building the digits spec")
    parser.add_argument("--max-windows", type=int, default=8, help="windows before a run counts as unstable")
    args = parser.parse_args(argv)
    if args.baseline_runner is not None and not args.baseline_runner.is_file():
        parser.error(f"--baseline-runner: file not found: {args.baseline_runner}")

    from tritonfleet.clients.server import TritonServer

    models, batches = args.models.split(","), [int(b) for b in args.batch_sizes.split(",")]
    repo = args.from_repository.resolve() if args.from_repository is not None else build_digits(args, batches)
    served = Path(tempfile.mkdtemp(prefix="tritonfleet-runner-cost-served-"))
    for m in models:  # only what is measured: the model, its timed copy and the baseline copy
        variant_folder(repo, served, m, m)
        variant_folder(repo, served, m, f"{m}_timed", {"phase_metrics": "true"})
        if args.baseline_runner is not None:
            variant_folder(repo, served, m, f"{m}_before", runner=args.baseline_runner)
    x = labelled(repo, "test")[0][0]  # the test split the build recorded
    threads = max(1, int(runner_parameter(served / models[0], "intra_op_threads", "1")))

    raw = {"machine": machine(), "models": models, "batches": batches, "breakdown": [], "before_vs_now": []}
    with TritonServer(served) as server:
        url, metrics_url = server.url("grpc"), server.url("metrics")
        for m in models:
            for b in batches:
                row = breakdown(url, metrics_url, f"{m}_timed", x, b, args.window)
                row.update(model=m, batch=b, in_process_us=in_process_us(served / m / "1" / "model.onnx", x, b,
                                                                         threads, args.window))
                raw["breakdown"].append(row)
                if args.baseline_runner is not None:
                    raw["before_vs_now"].append({"model": m, "batch": b, **before_vs_now(
                        url, m, f"{m}_before", x, b, args.concurrency, args.rounds, args.window, args.max_windows)})
    text = render(raw, args, threads)
    publish(__file__, text, raw, args, argv, "runner_cost", "Where a Python-backend member's time goes",
            headlines=headlines(raw))
    return 0


def render(raw: dict, args, threads: int) -> str:
    def us(v: float) -> str:
        return f"{v:,.0f}"

    rows = []
    for r in raw["breakdown"]:
        total = r["compute_input_us"] + r["compute_infer_us"] + r["compute_output_us"]
        rows.append([r["model"], r["batch"], us(r["compute_input_us"]), us(r["inputs_us"]), us(r["onnxruntime_us"]),
                     us(r["outputs_us"]), us(r["ipc_us"]), us(r["compute_output_us"]), us(total),
                     us(r["in_process_us"]), f"{100 * r['onnxruntime_us'] / total:.0f} %",
                     "yes" if r["stable"] else "**no**"])
    text = (f"{raw['machine']}; onnxruntime CPU, {threads} intra-op thread(s) in the runner and in-process; "
            f"dynamic batching off (one request = one execution); concurrency 1; {today()}\n\n"
            "Microseconds per request (Triton's statistics and the runner's phase counters, same run):\n\n")
    text += markdown_table(["model", "batch", "Triton → stub (compute_input)", "execute: inputs", "execute: onnxruntime",
                            "execute: outputs", "IPC + stub loop", "stub → Triton (compute_output)", "server total",
                            "in-process onnxruntime", "onnxruntime share", "stable"], rows)
    if raw["before_vs_now"]:
        rows = [[r["model"], r["batch"], f"{np.median(r['before']):,.0f}" if r["before"] else "-",
                 f"{np.median(r['now']):,.0f}" if r["now"] else "-", fmt_ratio(r["ratio"]), r["kept"]]
                for r in raw["before_vs_now"]]
        text += (f"\n\nRunner before (`{args.baseline_runner.name}`) vs now, same model and server, concurrency "
                 f"{args.concurrency}, {args.rounds} ABBA rounds of {args.window:g}s windows:\n\n")
        text += markdown_table(["model", "batch", "before samples/s (median)", "now samples/s (median)",
                                "now ÷ before (median [range], n)", "rounds kept"], rows)
        text += f"\n\nRounds: {UNSTABLE_RULE}."
    return text


def headlines(raw: dict) -> list[dict]:
    rows = []
    for r in raw["breakdown"]:
        total = r["compute_input_us"] + r["compute_infer_us"] + r["compute_output_us"]
        rows.append(headline(f"{r['model']} batch {r['batch']}: onnxruntime share of the served member's time",
                             f"{100 * r['onnxruntime_us'] / total:.0f} % ({r['onnxruntime_us']:,.0f} of {total:,.0f} µs;"
                             f" IPC + stub loop {r['ipc_us']:,.0f} µs)", "-", "measured"))
    for r in raw["before_vs_now"]:
        rows.append(headline(f"{r['model']} batch {r['batch']}: runner now ÷ before", fmt_ratio(r["ratio"]), "> 1",
                             "-" if not r["ratio"]["n"] else ("faster" if r["ratio"]["min"] > 1 else
                                                              "no clear change" if r["ratio"]["max"] >= 1 else "slower")))
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
