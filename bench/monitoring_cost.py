"""What monitoring costs the `digits` ensemble: the same pipeline with and without it, side by side.

    python bench/monitoring_cost.py [--record]
    python bench/monitoring_cost.py --smoke --output DIR   # fp32 sides, 2 short rounds (the test)

Four ensembles over the same three member models, in one repository on one server:
``digits`` (``monitoring`` on: the fusion step counts classes, confidence bins and member
disagreement, and reads the pipeline inputs for their per-sample summaries; counts reach Triton
every ``flush_s``), ``digits_immediate`` (the same with ``flush_s: 0``: one metric call per
changed series on every request, each a stub-to-server round trip), ``digits_monitor_outputs``
(``monitoring: {inputs: false}``: the counters without the input summaries, so the fusion step
gets no copy of the inputs) and ``digits_unmonitored`` (``monitoring: {enabled: false}``).
Throughput at ``--concurrency`` through the load generator in ABBA rounds (every round measures
every side; a round in which one side never met perf_analyzer's stability rule is excluded for
all), per batch size; the ratios are monitored ÷ unmonitored, and ``digits`` ÷
``digits_immediate`` (what handing counts over every ``flush_s`` saves), median of the kept
rounds with their range. The fusion step's compute time per request comes from Triton's
statistics of the same runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common import (
    ROOT,
    SPEC_DIR,
    Sample,
    fmt_ratio,
    goal_verdict,
    headline,
    labelled,
    machine,
    markdown_table,
    median_text,
    publish,
    run_abba,
    serving,
    side_by_side_args,
    today,
)

SIDES = {"digits": {}, "digits_immediate": {"monitoring": {"flush_s": 0}},
         "digits_monitor_outputs": {"monitoring": {"inputs": False}},
         "digits_unmonitored": {"monitoring": {"enabled": False}}}
BASE = "digits_unmonitored"


def parse(argv):
    return side_by_side_args(__doc__, argv, rounds=4)


def build_sides(output: Path | None, smoke: bool = False) -> Path:
    """The four sides into one repository: digits as committed (without its compiled model and
    student) and its variants; with ``smoke``, every side fp32 only and built from digits.yaml."""
    from tritonfleet.builder.build import build
    from tritonfleet.builder.spec import load_spec, with_overrides
    from tritonfleet.examples.digits.train import ensure_trained
    from tritonfleet.examples.workdir import artifacts, build_examples

    repository, sides, extra = output, dict(SIDES), {"precision": {"variants": ["fp32"]}}
    if smoke:
        ensure_trained(artifacts(ROOT, "digits"), progress=False)
    else:
        repository = build_examples(ROOT, ["digits"], output_dir=output, progress=False)["digits"].repository
        sides, extra = {s: c for s, c in SIDES.items() if c}, {}
    base = load_spec(SPEC_DIR / "digits.yaml")
    for name, changes in sides.items():
        spec = with_overrides(base, {"name": name, "serving": {"compile": False}, "distillation": None,
                                     **extra, **changes})
        repository = build(spec, output_dir=repository, progress=False).repository
    return repository


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    from tritonfleet.clients.loadgen import LoadConfig, run_load

    repository = args.repository if args.url else build_sides(args.output, args.smoke)
    missing = [s for s in SIDES if not (repository / s / "config.pbtxt").is_file()]
    if missing:
        raise SystemExit(f"{repository} has no {', '.join(missing)}: run without --url to build them")
    x = labelled(repository)[0][0]
    rows, raw, found = [], [], []
    with serving(repository, args.url) as url:
        for b in (int(v) for v in args.batch_sizes.split(",")):
            def measure(side: str, _round: int, b=b) -> Sample:
                r = run_load(url, LoadConfig(side, concurrency=args.concurrency, batch_size=b,
                                             warmup_s=min(1.0, args.window), window_s=args.window,
                                             max_windows=args.max_windows), [x])
                fusion = r.server.get(f"{side}_fusion")
                return Sample(r.infer_per_s, r.stable and r.errors == 0,
                              {"errors": r.errors, "p99_ms": r.latency_ms.get("p99"),
                               "fusion_compute_us": fusion.compute_us if fusion else None})

            run = run_abba(measure, list(SIDES), args.rounds)
            ratios = {s: run.ratio(s, BASE) for s in SIDES if s != BASE}
            ratios["flush"] = run.ratio("digits", "digits_immediate")
            fusion_us = {s: _median([run.rounds[i][s].extra["fusion_compute_us"] for i in run.kept()]) for s in SIDES}
            raw.append({"batch": b, "ratios": ratios, "fusion_compute_us": fusion_us, "rounds": run.to_dict()})
            found.append((b, ratios))
            rows.append([b, *(median_text(run.values(s)) for s in SIDES), *(fmt_ratio(ratios[s], suffix="x") for s in ratios),
                         *(median_text([fusion_us[s]]) for s in SIDES), run.kept_text()])
    header = ["batch", *(f"`{s}` infer/s" for s in SIDES), *(f"`{s}` ÷ unmonitored" for s in SIDES if s != BASE),
              "`digits` ÷ `digits_immediate`",
              *(f"`{s}` fusion step µs/request" for s in SIDES), "rounds kept"]
    text = (f"{machine()}; local target, the four ensembles share their member models; concurrency "
            f"{args.concurrency}, load generator, {args.rounds} ABBA rounds, {args.window:g} s windows until stable "
            f"(at most {args.max_windows}); {today()}\n\n{markdown_table(header, rows)}\n\n"
            "Infer/s and fusion-step times are medians of the kept rounds; a round in which any side never met the "
            "stability rule (last 3 windows, max/min <= 1.1) is excluded for every side.")
    headlines = [headline(f"monitoring cost, `digits` ÷ unmonitored, batch {b}",
                          f"with input summaries {fmt_ratio(r['digits'], suffix='×')}; counters only "
                          f"{fmt_ratio(r['digits_monitor_outputs'], suffix='×')}; metric calls on every "
                          f"request {fmt_ratio(r['digits_immediate'], suffix='×')}", "-", "measured")
                 for b, r in found]
    headlines += [headline(f"monitoring counts handed to Triton every flush_s ÷ on every request, batch {b}",
                           fmt_ratio(r["flush"], suffix="×"), ">= 1×", goal_verdict(r["flush"], 1.0)) for b, r in found]
    publish(__file__, text, raw, args, argv, "monitoring_cost", "What monitoring costs the digits ensemble", headlines)
    return 0


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.median(values)) if values else None



if __name__ == "__main__":
    raise SystemExit(main())
