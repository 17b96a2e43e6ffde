"""perf_analyzer parsing on the real binary's output, the bench sweep and the report."""

from __future__ import annotations

import re
import threading

import pytest

from tritonfleet.clients.errors import ServerError, UsageError
from tritonfleet.clients.evaluation.bench import BenchReport, ModelBench, describe_models
from tritonfleet.clients.evaluation.report import PLOTS, front_models, pareto_front, render
from tritonfleet.clients.loadgen import LoadConfig, LoadResult, run_load
from tritonfleet.clients.manifest import Manifest
from tritonfleet.clients.perf import PerfAnalyzerConfig, parse_perf_csv, run_perf_analyzer, write_input_data

from test_cli import tritonfleet


def test_perf_analyzer_runs_and_its_csv_parses(triton, digits_data, tmp_path):
    data = write_input_data(tmp_path / "input.json", {"image": digits_data["x_test"]}, samples=16)
    config = PerfAnalyzerConfig("cnn_small_a", triton.url("grpc"), concurrency=(1, 2), input_data=data,
                                measurement_interval_ms=1000, stability_pct=50, max_trials=10)
    results = run_perf_analyzer(config)
    assert [r.concurrency for r in results] == [1, 2]
    for r in results:
        assert r.infer_per_s > 0 and r.requests_per_s == r.infer_per_s
        lat = r.latency_ms
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"]
        step = r.server["cnn_small_a"]
        assert step.compute_infer_us > 0 and step.queue_us >= 0


def test_perf_csv_parser_on_a_rate_sweep():
    text = ("Request Rate,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
            "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency,"
            "Avg latency,request/response,response wait\n"
            "100,800.5,3,226,277,23,236,175,1,916,1126,1205,1421,944,4,926\n")
    (r,) = parse_perf_csv(text, "m", batch_size=8)
    assert r.mode == "rate" and r.request_rate == 100 and r.infer_per_s == 800.5
    assert r.requests_per_s == pytest.approx(800.5 / 8)
    assert r.latency_ms["p99"] == pytest.approx(1.421) and r.server["m"].compute_output_us == 175
    with pytest.raises(ServerError, match="not a perf_analyzer CSV: no 'Inferences/Second' column"):
        parse_perf_csv("a,b\n1,2\n", "m")


def test_perf_analyzer_config_arguments(tmp_path):
    args = PerfAnalyzerConfig("m", "h:1", concurrency=(2, 4, 6), batch_size=4).to_args(tmp_path / "pa", tmp_path / "o")
    assert args[args.index("--concurrency-range") + 1] == "2:6:2" and args[args.index("-b") + 1] == "4"
    message = "perf_analyzer sweeps need evenly spaced values (start:end:step), got [1, 2, 8]"
    with pytest.raises(UsageError, match=re.escape(message)):
        PerfAnalyzerConfig("m", "h:1", concurrency=(1, 2, 8)).to_args(tmp_path / "pa", tmp_path / "o")


def test_load_generator_counts_errors_when_the_model_disappears(triton, digits_data):
    cfg = LoadConfig("cnn_small_b_fp16", concurrency=4, warmup_s=0.3, window_s=0.6, max_windows=4, stable_windows=4)
    with triton.client("grpc") as client:
        timer = threading.Timer(1.0, client.unload_model, args=("cnn_small_b_fp16",))
        timer.start()
        try:
            res = run_load(triton.url("grpc"), cfg, [digits_data["x_test"]])
        finally:
            timer.join()
            client.load_model("cnn_small_b_fp16")
    assert res.requests > 0 and res.errors > 0
    assert res.sent == res.completed
    assert any("cnn_small_b_fp16" in msg or "unavailable" in msg.lower() or "not found" in msg.lower()
               for msg in res.error_messages), res.error_messages


def _run(model: str, conc: int, rate: float, p50: float) -> LoadResult:
    return LoadResult(model, "concurrency", conc, None, 1, 1.0, int(rate), 0, True, rate, rate,
                      {"p50": p50, "p90": p50 * 1.5, "p95": p50 * 1.7, "p99": p50 * 2})


def test_pareto_front_on_a_known_table():
    # (throughput, accuracy): b dominates a; c and d trade off; e duplicates d exactly
    points = [(100, 0.90), (120, 0.95), (300, 0.93), (50, 0.99), (50, 0.99), (310, 0.80)]
    assert pareto_front(points) == [False, True, True, True, True, True]
    assert pareto_front([]) == []


def test_report_renders_every_file(tmp_path):
    models = [
        ModelBench("small", "member", "fp32", "p", 1000, 0.95, 100, [_run("small", 1, 900, 1.0), _run("small", 4, 2000, 2.0)],
                   member="small", max_abs_error=6e-6),
        ModelBench("small_int8", "member", "int8", "p", 400, 0.94, 100, [_run("small_int8", 1, 1000, 0.9)],
                   member="small", max_abs_error=0.25),
        ModelBench("large", "baseline", "fp32", "p", 5000, 0.99, 100, [_run("large", 1, 400, 2.5)]),
        ModelBench("ens", "ensemble", None, "p", None, 0.97, 100, [_run("ens", 1, 300, 3.0)]),
    ]
    report = BenchReport({"date": "d", "machine": "m", "engine": "loadgen", "batch_size": 1, "concurrency": [1, 4],
                          "window_s": 1.0, "url": "u", "dataset": "toy"}, models)
    json_path = report.save(tmp_path / "bench.json")
    again = BenchReport.load(json_path)
    assert [m.model for m in again.models] == ["small", "small_int8", "large", "ens"]
    assert again.models[0].peak.concurrency == 4
    md = render(again, tmp_path / "out")
    text = md.read_text()
    for png in PLOTS:
        assert (tmp_path / "out" / png).stat().st_size > 1000
        assert f"]({png})" in text
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3
    assert [m.model for m in front_models(again)] == ["small", "large"]  # int8 and ens are dominated
    row = next(line for line in text.splitlines() if line.startswith("| large "))
    assert row.rstrip().endswith("| yes |")
    # the int8 variant's drop is measured against its own member's fp32 accuracy: 95% -> 94%
    cells = [c.strip() for c in next(line for line in text.splitlines() if line.startswith("| small_int8 ")).split("|")]
    assert cells[5:7] == ["+1.00", "2.5e-01"]


def test_bench_cli_against_a_running_server(triton, tmp_path):
    out = tmp_path / "bench.json"
    proc = tritonfleet("bench", triton.config.repository, "--url", triton.url("grpc"), "--models",
                       "cnn_small_a,digits_vote", "--concurrency", "1,2", "--window", "0.3", "--out", out,
                       "--no-progress")
    assert proc.returncode == 0, proc.stderr
    report = BenchReport.load(out)
    assert [m.model for m in report.models] == ["cnn_small_a", "digits_vote"]
    assert all(len(m.runs) == 2 and m.accuracy > 0.9 and m.samples == 360 for m in report.models)
    proc = tritonfleet("report", out)
    assert proc.returncode == 0 and "Pareto front:" in proc.stdout
    assert (tmp_path / "report.html").is_file()
    proc = tritonfleet("bench", triton.config.repository, "--url", triton.url("grpc"), "--models", "nope")
    assert proc.returncode == 2 and "--models: nope not in" in proc.stderr


def test_describe_models_reads_the_manifest(local_build):
    _, result = local_build
    described = {m.model: m for m in describe_models(Manifest.read(result.repository))}
    assert "digits_fusion" not in described
    assert described["digits"].kind == "ensemble"
    assert described["cnn_small_a_int8"].precision == "int8" and described["cnn_small_a_int8"].size_bytes > 0
    assert described["cnn_small_a_int8"].member == "cnn_small_a"
    assert 0 < described["cnn_small_a"].max_abs_error < described["cnn_small_a_int8"].max_abs_error
