"""tritonfleet tune on the digits ensemble: the tuned config's throughput ÷ the default's, side by side.

    python bench/tune_digits.py [--record] [--smoke] [--url URL --repository REPO]

1. Builds the digits example (or takes the running server ``--url`` serving ``--repository``, in
   explicit model-control mode) and runs ``tune`` on the ``digits`` ensemble with ``--dry-run``
   (nothing committed): the members and the fusion step tuned jointly, under the default's p99.
2. On one server (a fresh one, or ``--url``), measures the default and the winner side by side
   in ABBA rounds: each side loaded through explicit model control with its config, checked to
   answer like the default, then measured with the load generator at the same concurrency,
   batch and windows (perf_analyzer's stability rule; a round in which either side is unstable
   is excluded for both). The ratio is the median of the per-round throughput ratios with its
   range; the p99 of each side is its median over the kept rounds.

The goal (issue 13): the tuned config's throughput ÷ the default's, at equal or better p99. When
the default is already best on this machine the report says so, and the rounds then compare it
with the best other candidate measured, so the margin shows. ``--smoke`` is a quick run for the
tests (tiny budget, windows and rounds; its numbers mean nothing).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path

from common import (
    ROOT,
    UNSTABLE_RULE,
    Sample,
    add_server_args,
    bench_parser,
    check_server_args,
    fmt_ratio,
    goal_verdict,
    headline,
    machine,
    markdown_table,
    publish,
    run_abba,
    serving,
    today,
)

TARGET = "digits"
SIDES = ("default", "tuned")


def parse(argv):
    parser = bench_parser(__doc__)
    add_server_args(parser)
    parser.add_argument("--budget", type=int, default=8, help="tune's candidate budget (default 8)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--window", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--max-windows", type=int, default=10)
    parser.add_argument("--stability-percentage", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=6, help="side-by-side ABBA rounds (default 6)")
    parser.add_argument("--smoke", action="store_true", help="tiny budget, windows and rounds (for the tests)")
    args = parser.parse_args(argv)
    check_server_args(parser, args)
    if args.smoke:
        args.budget, args.window, args.warmup, args.max_windows, args.rounds = 2, 0.3, 0.2, 3, 2
        args.concurrency, args.stability_percentage = 4, 50.0
    return args


def side_by_side(url: str, repo: Path, result, other, args):
    """ABBA rounds of the default and ``other`` (a measured candidate) on the server at ``url``."""
    from tritonfleet.builder.lifecycle.tune.measure import CandidateServer, LoadSettings
    from tritonfleet.builder.lifecycle.tune.run import measurement_inputs

    default = result.search.default.settings
    inputs, source = measurement_inputs(repo, TARGET)
    load = LoadSettings(args.concurrency, args.batch_size, args.warmup, args.window, args.max_windows,
                        args.stability_percentage)
    candidates = CandidateServer(url, repo, TARGET, result.models, default, inputs, load)

    def measure(side, _round) -> Sample:
        m = candidates.measure(default if side == "default" else other.settings)
        if m.problem:
            raise SystemExit(f"{side} side: {m.problem}")
        return Sample(m.throughput, m.valid, {"p99_ms": m.p99_ms, "p50_ms": m.p50_ms, "errors": m.errors})

    try:
        candidates.check()  # the default's answers: every later load must give the same
        return run_abba(measure, SIDES, args.rounds), source
    finally:
        try:
            candidates.restore()  # the repository's configs again (a --url server stays as it was)
        finally:
            candidates.close()


def p99(run, side) -> float:
    values = [run.rounds[i][side].extra["p99_ms"] for i in run.kept()]
    return statistics.median(values) if values else float("nan")


def report(result, other, run, source: str, args) -> tuple[str, dict, list[dict]]:
    from tritonfleet.builder.lifecycle.tune.report import rows

    search = result.search
    table = rows(result)
    ratio = run.ratio("tuned", "default")
    p99_default, p99_tuned = p99(run, "default"), p99(run, "tuned")
    equal_or_better = p99_tuned <= p99_default
    if not search.improved:
        verdict = "the default is already best on this machine"
    else:
        judged = goal_verdict(ratio, 1.0)
        verdict = judged if judged != "met" or equal_or_better else "missed: worse p99 side by side"
    lines = [f"{machine()}; the bundled tritonserver 2.51 (Python-backend members), concurrency {args.concurrency}, "
             f"batch {args.batch_size}, {args.window:g} s windows until stable (at most {args.max_windows}), inputs: "
             f"{source}; {today()}", "",
             f"**Search** (`tritonfleet tune REPO {TARGET} --dry-run --budget {args.budget}`, tuned jointly: "
             f"{', '.join(result.models)}): {search.stopped}.", "",
             markdown_table(list(table[0]), [list(r.values()) for r in table]), "",
             f"Decision: {result.decision}.", ""]
    if search.improved and search.decision()[0]:
        lines.append(f"**Side by side**, the winner (#{other.index}: {other.label}) against the default, "
                     f"{args.rounds} ABBA rounds on one server:")
    elif search.improved:
        lines.append(f"**Side by side**, the best candidate the search found (#{other.index}: {other.label}; tune "
                     f"would not commit it, see the decision) against the default, {args.rounds} ABBA rounds on one "
                     "server:")
    else:
        lines.append(f"**The default is already best on this machine.** Side by side, for the margin: the best other "
                     f"candidate (#{other.index}: {other.label}) against the default, {args.rounds} ABBA rounds:")
    per_round = [[i + 1, "AB" if i % 2 == 0 else "BA", f"{r['default'].value:,.0f}", f"{r['tuned'].value:,.0f}",
                  f"{r['tuned'].value / r['default'].value:.2f}" if r["default"].value else "-",
                  f"{r['default'].extra['p99_ms']:.2f}", f"{r['tuned'].extra['p99_ms']:.2f}",
                  "yes" if i in run.kept() else "no"] for i, r in enumerate(run.rounds)]
    lines += ["", markdown_table(["round", "order", "default infer/s", "tuned infer/s", "ratio", "default p99 ms",
                                  "tuned p99 ms", "kept"], per_round), "",
              f"Tuned ÷ default throughput: **{fmt_ratio(ratio, suffix='×')}** (median [min–max] of the kept rounds); "
              f"p99 {p99_tuned:.2f} ms vs {p99_default:.2f} ms (medians): "
              + ("equal or better." if equal_or_better else "**worse** side by side."),
              f"{run.note()}. Verdict (the ratio > 1 in every kept round, at equal or better p99): {verdict}."]
    raw = {"decision": result.decision, "improved": search.improved, "winner": search.winner.index,
           "compared": other.index, "label": other.label, "models": result.models, "ratio": ratio,
           "p99_default_ms": p99_default, "p99_tuned_ms": p99_tuned, "verdict": verdict, "unstable_rule": UNSTABLE_RULE,
           "candidates": [{"index": t.index, "label": t.label, "measurement": t.measurement.to_dict(),
                           "verdict": search.verdict(t)} for t in search.trials],
           "rounds": run.to_dict()}
    measured = (fmt_ratio(ratio, suffix="×") + f", p99 {p99_tuned:.2f} vs {p99_default:.2f} ms"
                if search.improved else f"default already best ({len(search.trials)} candidates)")
    headlines = [headline("`tune` on the `digits` ensemble: tuned ÷ default throughput", measured,
                          "> 1× at equal or better p99 (or: the default is best)", verdict)]
    return "\n".join(lines), raw, headlines


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    from tritonfleet.builder.lifecycle.tune import TuneOptions, tune

    if args.url:
        repo = args.repository.resolve()
    else:
        from tritonfleet.examples.workdir import build_examples

        repo = build_examples(ROOT, [TARGET], output_dir=args.output, progress=False)[TARGET].repository
    options = TuneOptions(budget=args.budget, concurrency=args.concurrency, batch_size=args.batch_size,
                          warmup_s=args.warmup, window_s=args.window, max_windows=args.max_windows,
                          stability_pct=args.stability_percentage, dry_run=True, url=args.url, progress=False)
    out = Path(tempfile.mkdtemp(prefix="tune-digits-"))
    try:
        result = tune(repo, TARGET, options, output=out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    search = result.search
    others = [t for t in search.trials[1:] if t.measurement.problem is None]
    other = search.winner if search.improved else max(
        others, key=lambda t: (t.measurement.valid, t.measurement.throughput), default=None)
    if other is None:
        raise SystemExit(f"no candidate besides the default could be measured: {result.decision}")
    with serving(repo, args.url, model_control_mode="explicit", load_models=[TARGET]) as url:
        run, source = side_by_side(url, repo, result, other, args)
    text, raw, headlines = report(result, other, run, source, args)
    publish(__file__, text, raw, args, argv, key="tune", title="`tune` on the digits ensemble", headlines=headlines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
