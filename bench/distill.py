"""Distillation: one student CNN against the ensemble it learnt from, served side by side.

    python bench/distill.py [--noise 0,0.2,0.35,0.5] [--record]
    python bench/distill.py --smoke [--artifacts DIR]   # checks the script end to end, measures nothing

Per noise level σ (0: scikit-learn's digits as they are; 0.2, 0.35, 0.5: the noisy-digits levels of
bench/small_vs_large.py, Gaussian pixel noise added by the example's ``make_splits``): train the
three small CNNs of ``ensemble_configs/digits.yaml`` on that data, build its ``digits`` ensemble
(mean of softmaxes; fp32 members, the cnn_large baseline left out), run ``tritonfleet distill`` on
the same spec (its ``StudentCNN``, trained on ``data.train`` against the built ensemble's own
probabilities), serve both from one tritonserver and measure through it:

* accuracy: test top-1 of the student and of the ensemble; the difference (student − ensemble, in
  points) with a paired bootstrap 95% interval and the exact McNemar p-value (the same samples answer
  both, ``tritonfleet.clients.evaluation.stats``);
* throughput: served samples/s of each at the same concurrency and batch size, in ABBA rounds
  (ensemble, student, student, ensemble, ...; each run under perf_analyzer's stability rule), ratio
  student ÷ ensemble per round: median [min–max] (``bench/common.py``).

Goal (issue 14): the student within 0.5 pt of the ensemble's test top-1 — the point estimate
decides, the interval says how sure that is with 360 test samples — at >= 2.5x its served
throughput (every kept round must reach it). A student that did not learn (validation top-1 below
the worst member's) is not served by ``distill``; its level is reported as missed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import yaml

from common import (
    ROOT,
    Sample,
    bench_parser,
    fmt_ratio,
    goal_verdict,
    headline,
    machine,
    markdown_table,
    publish,
    run_abba,
    today,
)

SPEC = ROOT / "ensemble_configs" / "digits.yaml"
MEMBERS = ("cnn_small_a", "cnn_small_b", "cnn_small_c")
ACCURACY_GOAL_PT, SPEED_GOAL = 0.5, 2.5


def spec_for(artifacts: Path, repo: Path, epochs: int | None) -> dict:
    """digits.yaml with its files in ``artifacts``, fp32 members only, the baseline left out."""
    raw = yaml.safe_load(SPEC.read_text())
    for m in raw["members"]:
        m["model"]["checkpoint"] = str(artifacts / Path(m["model"]["checkpoint"]).name)
    raw.update(baselines=[], output_dir=str(repo), precision={"variants": ["fp32"]})
    raw["serving"].pop("compile", None)  # the teacher is the Triton ensemble itself
    raw["data"]["path"] = str(artifacts / "digits.npz")
    raw["distillation"]["precisions"] = ["fp32"]
    if epochs:
        raw["distillation"]["epochs"] = epochs
    return raw


def level(work: Path, noise: float, artifacts: Path | None, args) -> dict:
    """Train, build, distil, serve and measure one noise level."""
    from tritonfleet.builder.build import build
    from tritonfleet.builder.lifecycle.distill import distill
    from tritonfleet.builder.spec import load_spec
    from tritonfleet.clients.evaluation.accuracy import predicted_classes
    from tritonfleet.clients.evaluation.stats import accuracy_gain
    from tritonfleet.clients.infer import TritonClient
    from tritonfleet.clients.loadgen import LoadConfig, run_load
    from tritonfleet.clients.server import TritonServer
    from tritonfleet.examples.digits.train import RECIPES, ensure_trained

    artifacts = artifacts or work / "artifacts"
    ensure_trained(artifacts, tuple(r for r in RECIPES if r.name in MEMBERS), noise=noise, progress=False)
    path = work / "digits.yaml"
    path.write_text(yaml.safe_dump(spec_for(artifacts, work / "model_repository", args.epochs), sort_keys=False))
    spec = load_spec(path)
    repo = build(spec, spec_path=path, progress=False).repository
    taught = distill(spec, spec_path=path, force=args.smoke, progress=False)
    row = {"noise": noise, "student": taught.student, "learnt": taught.learnt, "student_val": taught.student_val,
           "members_val": taught.members_val, "epochs": taught.history[-1].epoch}
    if taught.refused:
        return {**row, "verdict": f"missed: the student did not learn (val top-1 {taught.student_val:.4f} < "
                                  f"{taught.worst_member[1]:.4f}, {taught.worst_member[0]})"}
    from tritonfleet.builder.spec.splits import load_split

    test = load_split(spec, "test")
    x = test.inputs[0]
    with TritonServer(repo) as server:
        url = server.url("grpc")
        with TritonClient(url) as client:
            correct = {side: predicted_classes(client.infer_batched(model, x)) == test.labels
                       for side, model in (("ensemble", spec.name), ("student", taught.student))}

        def measure(side: str, _round: int) -> Sample:
            model = spec.name if side == "ensemble" else taught.student
            r = run_load(url, LoadConfig(model, concurrency=args.concurrency, batch_size=args.batch_size,
                                         warmup_s=args.warmup, window_s=args.window, max_windows=args.max_windows), [x])
            return Sample(r.infer_per_s, r.stable and r.errors == 0, {"errors": r.errors})

        rounds = run_abba(measure, ["ensemble", "student"], args.rounds)
    gain = accuracy_gain(correct["ensemble"], correct["student"], seed=0)
    speed = rounds.ratio("student", "ensemble")
    accuracy_met = gain.gain_pt >= -ACCURACY_GOAL_PT
    speed_verdict = goal_verdict(speed, SPEED_GOAL)
    if accuracy_met and speed_verdict.startswith("no verdict"):
        both = "no verdict: throughput never stable"
    else:
        both = "met" if accuracy_met and speed_verdict == "met" else "missed"
    return {**row, "accuracy": gain.to_dict(), "throughput": {
                "ensemble": float(np.median(rounds.values("ensemble"))) if rounds.kept() else None,
                "student": float(np.median(rounds.values("student"))) if rounds.kept() else None,
                "ratio": speed, "rounds": rounds.to_dict(), "kept": rounds.kept_text()},
            "accuracy_verdict": "met" if accuracy_met else "missed", "speed_verdict": speed_verdict,
            "verdict": both}


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, repository=None)
    parser.add_argument("--noise", default="0,0.2,0.35,0.5", help="std of the Gaussian pixel noise, one run per value")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default: digits.yaml's)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4, help="ABBA rounds of ensemble vs student")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--window", type=float, default=2.0, help="seconds per measurement window")
    parser.add_argument("--max-windows", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=None, help="keep models and repositories here")
    parser.add_argument("--artifacts", type=Path, default=None,
                        help="already trained digits artifacts for σ=0 (default: train them in the workdir)")
    parser.add_argument("--smoke", action="store_true",
                        help="σ=0 only, 3 epochs (added with --force), tiny windows, 2 rounds: checks the script")
    args = parser.parse_args(argv)
    if args.smoke:
        args.noise, args.epochs = "0", args.epochs or 3
        args.rounds, args.warmup, args.window, args.max_windows = 2, 0.2, 0.25, 3
    if args.smoke and args.record:
        parser.error("--smoke measures nothing worth recording")

    work = args.workdir or Path(tempfile.mkdtemp(prefix="tritonfleet-distill-"))
    rows = []
    for noise in (float(v) for v in args.noise.split(",")):
        folder = work / f"noise_{noise:g}"
        folder.mkdir(parents=True, exist_ok=True)
        rows.append(level(folder, noise, args.artifacts if noise == 0 else None, args))

    table = markdown_table(
        ["noise σ", "ensemble top-1", "student top-1", "student − ensemble (pt) [95% CI]", "McNemar p",
         "ensemble samples/s", "student samples/s", "student ÷ ensemble", "rounds kept", "goal"],
        [_cells(r) for r in rows])
    lines = [_verdict_line(r) for r in rows]
    text = (f"{machine()}; digits (360 test samples per level) with Gaussian pixel noise σ; teacher: the `digits` "
            f"ensemble (mean of 3 small CNNs, fp32); student: `StudentCNN` distilled by `tritonfleet distill` "
            f"(digits.yaml's distillation block{f', {args.epochs} epochs' if args.epochs else ''}); local target, "
            f"batch {args.batch_size}, concurrency {args.concurrency}, {args.rounds} ABBA rounds of {args.window:g}s "
            f"windows (stability: last 3 windows within 10%); {today()}\n\n{table}\n\n"
            f"Goal: student within {ACCURACY_GOAL_PT} pt of the ensemble's test top-1 (point estimate) at >= "
            f"{SPEED_GOAL}x its served throughput (every kept round).\n\n" + "\n".join(f"- {v}" for v in lines))
    if args.smoke:
        text = "SMOKE RUN (3 epochs, tiny windows): checks the script, measures nothing\n\n" + text
    heads = [headline(f"Distilled student vs its ensemble (digits, σ={r['noise']:g})", _measured(r),
                      f"within {ACCURACY_GOAL_PT} pt at >= {SPEED_GOAL}x", r["verdict"]) for r in rows]
    publish(__file__, text, {"levels": rows}, args, argv, "distill", "Distillation: a student vs its ensemble",
            headlines=heads)
    return 0


def _measured(r: dict) -> str:
    if "accuracy" not in r:
        return "student not served (did not learn)"
    return (f"{r['accuracy']['gain_pt']:+.2f} pt [{r['accuracy']['ci_pt'][0]:+.2f}, {r['accuracy']['ci_pt'][1]:+.2f}], "
            f"{fmt_ratio(r['throughput']['ratio'], suffix='x')}")


def _cells(r: dict) -> list:
    if "accuracy" not in r:
        return [f"{r['noise']:g}", "-", "-", "-", "-", "-", "-", "-", "-", r["verdict"]]
    a, t = r["accuracy"], r["throughput"]
    def rate(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    return [f"{r['noise']:g}", f"{a['current_accuracy']:.4f}", f"{a['candidate_accuracy']:.4f}",
            f"{a['gain_pt']:+.2f} [{a['ci_pt'][0]:+.2f}, {a['ci_pt'][1]:+.2f}]", f"{a['p_value']:.3f}",
            rate(t["ensemble"]), rate(t["student"]), fmt_ratio(t["ratio"], suffix="x"), t["kept"], r["verdict"]]


def _verdict_line(r: dict) -> str:
    if "accuracy" not in r:
        return f"σ={r['noise']:g}: {r['verdict']}"
    a = r["accuracy"]
    return (f"σ={r['noise']:g}: accuracy {r['accuracy_verdict']} (student {a['gain_pt']:+.2f} pt vs the ensemble, "
            f"95% CI [{a['ci_pt'][0]:+.2f}, {a['ci_pt'][1]:+.2f}]), throughput {r['speed_verdict']} "
            f"({fmt_ratio(r['throughput']['ratio'], suffix='x')} vs goal {SPEED_GOAL}x): goal {r['verdict']}")


if __name__ == "__main__":
    raise SystemExit(main())
