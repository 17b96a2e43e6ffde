"""perf_analyzer's stability rule in the load generator, perf_analyzer's own windows, and the
flag in the JSON, the report and the CLI (issue 12 item 1).

The rule (perf_analyzer's documentation): over the last 3 windows, max/min <= 1 + 10% for
throughput *and* for latency; only those windows are reported; a run that never met it says so.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest

from tritonfleet.clients.evaluation.bench import BenchReport, ModelBench
from tritonfleet.clients.evaluation.report import render
from tritonfleet.clients.loadgen import LoadConfig, LoadResult, WindowStats, run_load
from tritonfleet.clients.loadgen.results import Recorder
from tritonfleet.clients.loadgen.windows import is_stable, measure_windows, spread
from tritonfleet.clients.perf import PerfAnalyzerConfig, parse_perf_windows

from test_cli import tritonfleet


def windows(rates, latencies=None) -> list[WindowStats]:
    latencies = latencies or [2.0] * len(rates)
    return [WindowStats(float(i), 1.0, int(r), 0, float(r), float(lat)) for i, (r, lat) in enumerate(zip(rates, latencies))]


def test_within_ten_percent_of_the_mean_is_not_stable():
    # 100, 106, 112: every window within ±6% of the mean (106), but max/min = 1.12 > 1.1
    rates = [100.0, 106.0, 112.0]
    assert all(abs(r / (sum(rates) / 3) - 1) <= 0.10 for r in rates)
    assert not is_stable(windows(rates), 3, 10.0)
    assert is_stable(windows([100.0, 105.0, 109.0]), 3, 10.0)  # max/min 1.09


def test_latency_alone_can_make_a_run_unstable():
    assert not is_stable(windows([100.0, 100.0, 100.0], [1.0, 1.0, 1.12]), 3, 10.0)
    assert is_stable(windows([100.0, 100.0, 100.0], [1.0, 1.05, 1.09]), 3, 10.0)


def test_only_the_last_three_windows_count():
    wild_start = windows([20.0, 300.0, 100.0, 101.0, 104.0])
    assert is_stable(wild_start, 3, 10.0)
    assert not is_stable(windows([100.0, 101.0, 104.0, 300.0]), 3, 10.0)  # a wild last window
    assert not is_stable(windows([100.0, 100.0]), 3, 10.0)  # fewer windows than the rule needs
    assert not is_stable(windows([100.0, 100.0, 100.0], [1.0, math.nan, 1.0]), 3, 10.0)  # a window with no answer
    assert not is_stable(windows([100.0, 0.0, 100.0]), 3, 10.0)
    assert spread([1.0, 2.0]) == 2.0 and spread([]) == math.inf


def _drive(stats: list[WindowStats], max_windows: int) -> list[WindowStats]:
    feed = iter(stats)
    gen = measure_windows(lambda start, end: next(feed), 0.0, max_windows, 3, 10.0, 0.0)
    waits = 0
    try:
        next(gen)
        while True:
            waits += 1
            gen.send(None)
    except StopIteration as stop:
        assert waits == len(stop.value)  # one wait per window
        return stop.value


def test_measurement_stops_at_the_first_stable_triple_and_keeps_every_window():
    stats = windows([50.0, 90.0, 100.0, 106.0, 112.0, 104.0, 103.0, 500.0])
    got = _drive(stats, max_windows=10)
    # triples: (50,90,100) 2.0; (90,100,106) 1.18; (100,106,112) 1.12; (106,112,104) 1.077 -> stop at 6
    assert [w.requests_per_s for w in got] == [50.0, 90.0, 100.0, 106.0, 112.0, 104.0]
    never = windows([100.0, 130.0] * 5)
    assert len(_drive(never, max_windows=6)) == 6 and not is_stable(_drive(never, max_windows=6), 3, 10.0)


def test_the_result_reports_only_the_last_three_windows():
    recorder = Recorder()
    # 5 one-second windows with 10, 50, 20, 21, 22 requests of 5 ms each (window 1 is a wild one)
    counts = [10, 50, 20, 21, 22]
    for w, n in enumerate(counts):
        for i in range(n):
            end = w + (i + 0.5) / n
            recorder.records.append((end - 0.005, end, True))
    recorder.records.append((3.2, 3.3, False))  # one error inside the reported span
    stats = [recorder.window(float(w), float(w + 1)) for w in range(5)]
    assert [s.requests for s in stats] == counts
    cfg = LoadConfig("m", warmup_s=0, window_s=1.0, max_windows=5)
    res = recorder.result(cfg, stats, is_stable(stats, 3, 10.0), {}, "test")
    assert res.stable and res.reported_windows == 3 and len(res.windows) == 5
    assert res.requests == 63 and res.errors == 1 and res.seconds == pytest.approx(3.0)
    assert res.requests_per_s == pytest.approx(21.0)
    assert res.throughput_spread == pytest.approx(22 / 20)
    assert res.latency_ms["p50"] == pytest.approx(5.0)
    assert LoadResult.from_dict(json.loads(json.dumps(res.to_dict()))).stable is True


PA_OUTPUT = """*** Measurement Settings ***
  Measurement window: 300 msec

Request concurrency: 2
  Pass [1] throughput: 931.214 infer/sec. Avg latency: 2140 usec (std 2141 usec).
  Pass [2] throughput: 668.433 infer/sec. Avg latency: 2985 usec (std 2549 usec).
  Pass [3] throughput: 906.038 infer/sec. Avg latency: 2155 usec (std 2149 usec).
  Pass [4] throughput: 1035.56 infer/sec. Avg latency: 1953 usec (std 1633 usec).
Failed to obtain stable measurement within 4 measurement windows for concurrency 2. Please try to increase the \
--measurement-interval.
Failed to obtain stable measurement.
"""


def test_an_unstable_perf_analyzer_level_is_reported_flagged_from_its_last_windows():
    (block,) = parse_perf_windows(PA_OUTPUT, 0.3, batch_size=2)
    assert block.level == 2 and block.unstable and len(block.windows) == 4
    res = block.unstable_result(PerfAnalyzerConfig("m", "u", concurrency=(2,), batch_size=2))
    assert res.stable is False and res.concurrency == 2 and res.engine == "perf_analyzer"
    assert res.infer_per_s == pytest.approx((668.433 + 906.038 + 1035.56) / 3)
    assert res.requests_per_s == pytest.approx(res.infer_per_s / 2)
    assert res.throughput_spread == pytest.approx(1035.56 / 668.433)
    assert res.latency_ms["mean"] == pytest.approx((2.985 + 2.155 + 1.953) / 3)


def test_perf_analyzer_flags_an_unstable_level_against_the_real_server(triton):
    from tritonfleet.clients.perf import run_perf_analyzer

    cfg = PerfAnalyzerConfig("cnn_small_a", triton.url("grpc"), concurrency=(2,), measurement_interval_ms=200,
                             stability_pct=0.001, max_trials=3)
    (res,) = run_perf_analyzer(cfg)  # max/min <= 1.00001 over 3 windows: never met
    assert res.stable is False and len(res.windows) == 3 and res.infer_per_s > 0
    assert res.throughput_spread > 1.00001 or res.latency_spread > 1.00001


def test_load_generator_flags_a_run_that_never_met_the_rule(triton, digits_data):
    cfg = LoadConfig("cnn_small_a", concurrency=2, warmup_s=0.2, window_s=0.2, max_windows=4, stability_pct=0.001)
    res = run_load(triton.url("grpc"), cfg, [digits_data["x_test"]])
    assert not res.stable and len(res.windows) == 4 and res.reported_windows == 3  # ran every window
    assert res.throughput_spread > 1.00001 or res.latency_spread > 1.00001
    assert res.to_dict()["stable"] is False


def _report(stable_flags) -> BenchReport:
    runs = [LoadResult("m", "concurrency", c, None, 1, 1.0, 100, 0, ok, 100.0 * c, 100.0 * c, {"p50": 1.0, "p99": 2.0})
            for c, ok in zip(itertools.count(1), stable_flags)]
    return BenchReport({"date": "d", "machine": "x", "engine": "loadgen", "batch_size": 1, "concurrency": [1, 2],
                        "window_s": 1.0, "url": "u"}, [ModelBench("m", "member", "fp32", accuracy=0.9, runs=runs)])


def test_the_report_shows_unstable_runs(tmp_path):
    md = render(_report([True, False]), tmp_path / "bad").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| m "))
    assert "| NO at 2 |" in row
    assert "**Unstable:** m@2 never met perf_analyzer's stability rule" in md
    assert "Unstable:</strong> m@2" in (tmp_path / "bad" / "report.html").read_text()
    md = render(_report([True, True]), tmp_path / "good").read_text()
    assert "| yes |" in next(line for line in md.splitlines() if line.startswith("| m ")) and "Unstable" not in md


def test_bench_cli_flags_instability_and_require_stable_exits_1(triton, tmp_path):
    out = tmp_path / "bench.json"
    proc = tritonfleet("bench", triton.config.repository, "--url", triton.url("grpc"), "--models", "cnn_small_a",
                       "--concurrency", "2", "--window", "0.2", "--max-windows", "3", "--stability-pct", "0.001",
                       "--require-stable", "--out", out, "--no-progress")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "no at 2" in proc.stdout and "cnn_small_a@2 never met the stability rule" in proc.stdout
    data = json.loads(out.read_text())
    assert data["models"][0]["runs"][0]["stable"] is False and data["meta"]["stability_pct"] == 0.001
    proc = tritonfleet("report", out)
    assert proc.returncode == 0 and "unstable measurements" in proc.stdout
    assert "| NO at 2 |" in (tmp_path / "report.md").read_text()
