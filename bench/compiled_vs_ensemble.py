"""A compiled pipeline (members + fusion in ONE ONNX graph) vs its Triton ensemble and vs fusion in the client.

    python bench/compiled_vs_ensemble.py [--record]
    python bench/compiled_vs_ensemble.py --smoke          # two short rounds of each comparison

Builds ``ensemble_configs/digits.yaml`` (``serving.compile: true``) and serves it on the local target,
or uses a running server (``--url``) and its repository (``--repository``). First, on the test split
the build recorded, the compiled model's outputs are compared with the ensemble's through the server
(max |difference| of the probabilities, identical class indices). Then, side by side in ABBA rounds
(A B | B A | A B ...), at ``--concurrency``:

* at ``--batch-sizes``: ``digits_compiled`` vs the ``digits`` ensemble, both driven by the project's
  load generator (gRPC callback engine), each run over its last 3 windows;
* at ``--client-batch-sizes``: ``digits_compiled`` vs client-side fusion (the client calls the
  ensemble's members concurrently and fuses their outputs with the same ``ops.fuse`` and the
  parameters the ensemble's fusion step reads, as bench/ensemble_vs_client.py does), both through
  the same asyncio gRPC client code and windows.

Windows repeat until perf_analyzer's stability rule holds (last 3 windows, max/min <= 1.1 for
throughput and latency); a round in which either side never met it is excluded for both. A ratio is
the median of the kept rounds' ratios with their min–max; a goal is met only when every kept round
reaches it. Goals (issue 13): compiled ÷ ensemble >= 2.5x at batch 1 and >= 1.5x at batch 8
(concurrency 8); compiled ÷ client-side fusion >= 3x at batch 1; outputs within 1e-5 and identical
class indices on the test split.
"""

from __future__ import annotations

import asyncio

import numpy as np
from asyncio_sides import CLIENT_SIDE, measure_side

from common import (
    Sample,
    example_repository,
    fmt_ratio,
    fusion_step,
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

PIPELINE = "digits"
COMPILED = f"{PIPELINE}_compiled"
GOALS = {("ensemble", 1): 2.5, ("ensemble", 8): 1.5, ("client_side", 1): 3.0}
MAX_DIFF = 1e-5


def parse(argv):
    return side_by_side_args(__doc__, argv, rounds=6, smoke_batch_sizes=None, add=lambda parser: parser.add_argument(
        "--client-batch-sizes", default="1", help="compiled vs client-side fusion at these"))


# --------------------------------------------------------------------------- the output check
def compare_outputs(url: str, x: np.ndarray, labels: np.ndarray) -> dict:
    """Compiled vs ensemble through the server on the whole test split."""
    from tritonfleet.clients.infer import TritonClient

    with TritonClient(url) as client:
        ensemble = client.infer_batched(PIPELINE, x)
        compiled = client.infer_batched(COMPILED, x)
    diff = float(np.abs(compiled["probabilities"] - ensemble["probabilities"]).max())
    same = bool(np.array_equal(compiled["class_index"], ensemble["class_index"]))
    return {"samples": len(x), "max_abs_diff": diff, "class_index_identical": same,
            "verdict": "met" if diff <= MAX_DIFF and same else "missed",
            "top1_compiled": float(np.mean(compiled["class_index"][:, 0] == labels)),
            "top1_ensemble": float(np.mean(ensemble["class_index"][:, 0] == labels))}


# --------------------------------------------------------------------------- the two kinds of rounds
def loadgen_side(url: str, model: str, batch: int, x: np.ndarray, args) -> Sample:
    """One model through the load generator (gRPC callback engine), windows until stable."""
    from tritonfleet.clients.loadgen import LoadConfig, run_load

    r = run_load(url, LoadConfig(model, concurrency=args.concurrency, batch_size=batch, warmup_s=min(1.0, args.window),
                                 window_s=args.window, max_windows=args.max_windows), [x])
    return Sample(r.infer_per_s, r.stable, {"errors": r.errors, "windows": len(r.windows),
                                            "spread": [r.throughput_spread, r.latency_spread],
                                            "p50_ms": r.latency_ms.get("p50")})


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    from tritonfleet.clients.loadgen import make_batches
    from tritonfleet.clients.manifest import Manifest

    repository = example_repository(args, [PIPELINE])
    if COMPILED not in Manifest.read(repository).models:
        raise SystemExit(f"{repository} has no model '{COMPILED}': build {PIPELINE} with serving.compile: true "
                         "(or tritonfleet build --compile)")
    (x, *_), labels = labelled(repository, pipeline=PIPELINE)
    _, params, members = fusion_step(repository, PIPELINE)
    plans = [("ensemble", int(b)) for b in args.batch_sizes.split(",") if b.strip()] + \
            [("client_side", int(b)) for b in args.client_batch_sizes.split(",") if b.strip()]
    rows, raw = [], {"outputs": None, "comparisons": []}
    found = []
    with serving(repository, args.url) as url:
        raw["outputs"] = outputs = compare_outputs(url, x, labels)
        for other, b in plans:
            if other == "ensemble":
                models = {"compiled": COMPILED, "ensemble": PIPELINE}
                run = run_abba(lambda side, _r, b=b, models=models: loadgen_side(url, models[side], b, x, args),
                               ("compiled", "ensemble"), args.rounds)
                how, label = "load generator", f"`{PIPELINE}` ensemble"
            else:
                batches = [bt[0] for bt in make_batches([x], b)]
                models = {"compiled": COMPILED, "client_side": CLIENT_SIDE}
                run = run_abba(lambda side, _r, batches=batches, models=models: asyncio.run(measure_side(
                    url, models[side], batches, params, members, args.concurrency, args.window, args.max_windows)),
                    ("compiled", "client_side"), args.rounds)
                how, label = "asyncio client", "client-side fusion"
            ratio = run.ratio("compiled", other)
            goal = GOALS.get((other, b))
            judged = goal_verdict(ratio, goal) if goal is not None else "no goal"
            found.append((other, b, ratio, goal, judged))
            raw["comparisons"].append({"versus": other, "batch": b, "concurrency": args.concurrency, "ratio": ratio,
                                       "goal": goal, "verdict": judged, "rounds": run.to_dict()})
            rows.append([label, how, b, args.concurrency, median_text(run.values("compiled")), median_text(run.values(other)),
                         fmt_ratio(ratio, suffix="x"), run.kept_text(), f">= {goal:g}x: {judged}" if goal else "-"])
    table = markdown_table(["compiled vs", "client", "batch", "concurrency", f"`{COMPILED}` infer/s", "other infer/s",
                            "compiled ÷ other, median [min–max], n", "rounds kept", "goal"], rows)
    check = (f"Outputs on the test split ({outputs['samples']} samples, through the server): compiled vs ensemble "
             f"max |Δ probabilities| {outputs['max_abs_diff']:.2e}, class indices "
             f"{'identical' if outputs['class_index_identical'] else 'DIFFERENT'} (goal <= {MAX_DIFF:g} and identical: "
             f"{outputs['verdict']}); top-1 {outputs['top1_compiled']:.4f} (ensemble {outputs['top1_ensemble']:.4f}).")
    text = (f"{machine()}; `{PIPELINE}` on the local target: `{COMPILED}` is one Python-backend onnxruntime model "
            f"(the {len(members)} members and the {params['type']} fusion in one ONNX graph), the ensemble "
            f"{len(members)} member models + a fusion step; {args.rounds} ABBA rounds per row, {args.window:g} s "
            f"windows until stable (at most {args.max_windows}); {today()}\n\n{table}\n\n{check}\n\n"
            "Infer/s are medians of the kept rounds; a round in which either side never met the stability rule "
            "(last 3 windows, max/min <= 1.1) is excluded for both. Verdict: met only when every kept round reaches "
            "the goal.")
    headlines = [headline(f"compiled ÷ {'Triton ensemble' if other == 'ensemble' else 'client-side fusion'}, "
                          f"batch {b}", fmt_ratio(ratio, suffix="×"), f">= {goal:g}×", judged)
                 for other, b, ratio, goal, judged in found if goal is not None]
    headlines.append(headline("compiled vs ensemble outputs (test split)",
                              f"max |Δ| {outputs['max_abs_diff']:.1e}, class indices "
                              f"{'identical' if outputs['class_index_identical'] else 'different'}",
                              f"<= {MAX_DIFF:g}, identical", outputs["verdict"]))
    publish(__file__, text, raw, args, argv, "compiled_vs_ensemble", "Compiled pipeline vs ensemble", headlines)
    return 0 if outputs["verdict"] == "met" else 1



if __name__ == "__main__":
    raise SystemExit(main())
