"""Ensembles of small models vs one large model of about the same compute, served side by side.

    python bench/small_vs_large.py [--noise 0.2,0.35,0.5] [--record]
    python bench/small_vs_large.py --smoke          # one noise level, 2 seeds, 2 epochs, short rounds

The claim under test (the project's seed): *small ensembles beat one large model on accuracy
and efficiency*. Task: scikit-learn's digits with Gaussian pixel noise, at several noise levels
(so no model saturates it, and to show where the balance tips). Per level:

* **Models, several seeds.** ``--seeds`` independent replicates; each has ``--max-k`` small
  CNNs and one large CNN whose multiply-accumulates per sample are about those of four small
  ones (counted with forward hooks), all trained here on CPU with their own seeds.
* **Accuracy through the server.** Every model is built into one repository and served by
  one local tritonserver; each member's outputs on the validation and test splits come back
  through it. The mean ensemble of the first k small CNNs of a replicate is fused from those
  outputs with the same ``ops.fuse`` the fusion step runs (and checked equal to the served
  ensemble of replicate 0 for every k).
* **Ensemble size chosen on validation.** k (2..max-k) with the best mean validation top-1
  over the replicates (ties: fewer members); the test split only judges it.
* **Confidence intervals.** Test top-1 means over replicates with 95 % bootstrap intervals
  that resample test samples and replicates; the paired difference ensemble − large (same
  samples, replicates resampled per side). An accuracy verdict only where the interval
  excludes zero.
* **Served throughput.** The chosen ensemble (the compiled pipeline, ``serving.compile``,
  when the spec schema has it; else the Triton ensemble) and the large model, ABBA rounds of
  the load generator (windows until perf_analyzer's stability rule holds); the ratio is the
  median of per-round ratios with its min–max.

The claim is **met** at a level only when the ensemble is both more accurate (interval above
zero) and faster (every kept round's ratio above 1); otherwise **missed**, saying why.
Writes a plot (docs/small_vs_large.png with ``--record``).
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
    headline,
    machine,
    markdown_table,
    publish,
    run_abba,
    today,
)

SMALL = {"architecture": "tritonfleet.examples.digits.models:DigitsCNN", "kwargs": {"width": 8, "hidden": 64}}
LARGE = {"architecture": "tritonfleet.examples.digits.models:LargeDigitsCNN", "kwargs": {"width": 16, "hidden": 128}}
SIGNATURE = {"inputs": [{"name": "image", "dtype": "float32", "shape": [1, 8, 8]}],
             "outputs": [{"name": "logits", "dtype": "float32", "shape": [10]}]}
FUSION = {"type": "mean", "activation": "softmax"}
SIDES = ("ensemble", "large")


def parse(argv):
    parser = bench_parser(__doc__, repository=None)
    parser.add_argument("--noise", default="0.2,0.35,0.5", help="std of the Gaussian pixel noise, one study per value")
    parser.add_argument("--seeds", type=int, default=3, help="independently trained replicates of every model")
    parser.add_argument("--max-k", type=int, default=4, help="small CNNs per replicate (ensembles of 2..max-k)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=4, help="ABBA rounds of served throughput")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--window", type=float, default=1.5)
    parser.add_argument("--max-windows", type=int, default=8)
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--serve", choices=("auto", "compiled", "ensemble"), default="auto",
                        help="what serves the chosen ensemble (auto: compiled when serving.compile exists)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep models and repositories here")
    parser.add_argument("--plot", type=Path, default=None,
                        help="plot path (default: docs/small_vs_large.png with --record, else in the workdir)")
    parser.add_argument("--smoke", action="store_true",
                        help="σ=0.5 only, 2 seeds, max-k 2, 2 epochs, 2 rounds of 0.2 s windows, 200 resamples")
    args = parser.parse_args(argv)
    if args.smoke:
        args.noise, args.seeds, args.max_k, args.epochs = "0.5", 2, 2, 2
        args.rounds, args.window, args.max_windows, args.resamples = 2, 0.2, 4, 200
    if args.seeds < 1 or args.max_k < 2 or args.epochs < 1 or args.rounds < 2 or args.window <= 0:
        parser.error("--seeds >= 1, --max-k >= 2, --epochs >= 1, --rounds >= 2 and --window > 0")
    return args


def compile_supported() -> bool:
    """Whether the spec schema has ``serving.compile`` (members + fusion merged into one ONNX graph,
    served as ``<pipeline>_compiled``). TODO(issue 13): once compiled pipelines are merged for good,
    ``--serve auto`` always resolves to ``compiled``; ``ensemble`` stays for comparison."""
    from tritonfleet.builder.spec.options import Serving

    return "compile" in Serving.model_fields


def macs(architecture: str, kwargs: dict) -> int:
    """Multiply-accumulates per sample of Conv2d and Linear layers (forward hooks)."""
    import torch

    from tritonfleet.examples.digits.train import build_model

    model = build_model(architecture, kwargs).eval()
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            total[0] += output.numel() * module.in_channels // module.groups * module.kernel_size[0] * \
                module.kernel_size[1]
        elif isinstance(module, torch.nn.Linear):
            total[0] += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        model(torch.zeros(1, 1, 8, 8))
    for h in handles:
        h.remove()
    return total[0]


def small_name(replicate: int, i: int) -> str:
    return f"s{replicate}_{i}"


def large_name(replicate: int) -> str:
    return f"large_{replicate}"


def member(name: str, arch: dict, artifacts: Path) -> dict:
    return {"name": name, "model": {**arch, "checkpoint": str(artifacts / f"{name}.pt")}, **SIGNATURE}


def spec_for(name: str, members: list[str], artifacts: Path, repo: Path, baselines: list[str] = (),
             compiled: bool = False) -> dict:
    serving = {"max_batch_size": 64, "dynamic_batching": {"max_queue_delay_microseconds": 200}}
    if compiled:
        serving["compile"] = True
    return {
        "name": name, "output_dir": str(repo), "serving": serving, "precision": {"variants": ["fp32"]},
        "members": [member(m, SMALL, artifacts) for m in members],
        "baselines": [member(b, LARGE, artifacts) for b in baselines],
        "fusion": FUSION,
        "data": {"path": str(artifacts / "digits.npz"), "test": {"inputs": "x_test", "labels": "y_test"},
                 "validation": {"inputs": "x_val", "labels": "y_val"}},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    compiled = args.serve == "compiled" or (args.serve == "auto" and compile_supported())
    if compiled and not compile_supported():
        raise SystemExit("--serve compiled: this spec schema has no serving.compile yet; use --serve ensemble")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="tritonfleet-small-vs-large-"))
    plot = args.plot or (ROOT / "docs" / "small_vs_large.png" if args.record else work / "small_vs_large.png")
    small_macs, large_macs = macs(**SMALL), macs(**LARGE)
    studies = [study(work / f"noise_{noise:g}", noise, args, compiled)
               for noise in (float(v) for v in args.noise.split(","))]
    _plot(studies, plot)

    served = "compiled pipeline (`serving.compile`)" if compiled else "Triton ensemble (no `serving.compile` yet)"
    rows, claims = [], []
    for s in studies:
        for k, acc in s["candidates"].items():
            name = "1 small (not a candidate)" if k == 1 else f"mean of {k} small"
            chosen = " ← chosen on validation" if k == s["chosen"] else ""
            rows.append([f"{s['noise']:g}", name + chosen, f"{k * small_macs / 1e3:,.0f}", f"{acc['validation']:.2f}",
                         acc["test"]["text"], s["throughput"]["ensemble"] if k == s["chosen"] else ""])
        rows.append([f"{s['noise']:g}", "large CNN", f"{large_macs / 1e3:,.0f}", f"{s['large']['validation']:.2f}",
                     s["large"]["test"]["text"], s["throughput"]["large"]])
        claims.append([f"{s['noise']:g}", f"mean of {s['chosen']} small", s["difference"]["text"],
                       s["accuracy_verdict"], fmt_ratio(s["ratio"]), s["throughput_verdict"], s["claim"]])
    table = markdown_table(["noise σ", "model", "kMAC/sample", f"validation top-1 % (mean of {args.seeds} seeds)",
                            "test top-1 % [95% CI]", f"served infer/s (batch {args.batch_size}, median of kept rounds)"],
                           rows)
    verdicts = markdown_table(["noise σ", "chosen ensemble", "ensemble − large, test top-1 pt [95% CI]",
                               "more accurate?", "served ensemble ÷ large, median [min–max], n", "faster?",
                               "claim: small ensembles beat one large model"], claims)
    n_test = studies[0]["test_samples"]
    text = (f"{machine()}; digits with Gaussian pixel noise, {n_test} test samples per level; {args.seeds} independently "
            f"trained replicates of every model ({args.max_k} small CNNs and one large CNN each, {args.epochs} epochs); "
            f"local target; served ensemble: {served}; concurrency {args.concurrency}, {args.rounds} ABBA rounds of "
            f"{args.window:g} s windows until stable; {today()}\n\n{table}\n\n{verdicts}\n\n"
            f"![small vs large]({plot.name})\n\n"
            "Accuracy: members' outputs through the server, ensembles fused from them with the fusion step's "
            "`ops.fuse` (checked equal to the served ensembles of replicate 0). The ensemble size is chosen on the "
            "validation split (mean over replicates, ties to fewer members); intervals are 95 % bootstrap percentiles "
            f"over test samples and replicates ({args.resamples} resamples); the difference pairs the test samples. "
            "More accurate / faster: only when the interval excludes zero / every kept round's ratio is above 1. A "
            "throughput round in which either side never met the stability rule (last 3 windows, max/min <= 1.1) is "
            "excluded for both.")
    headlines = [headline(f"small ensembles vs one large model, σ={s['noise']:g} (chosen on validation: "
                          f"{s['chosen']} small)",
                          f"top-1 {s['difference']['text']} pt; throughput {fmt_ratio(s['ratio'])}",
                          "more accurate (CI > 0) and faster (every round > 1)", s["claim"]) for s in studies]
    raw = {"served": "compiled" if compiled else "ensemble", "small_macs": small_macs, "large_macs": large_macs,
           "studies": studies}
    publish(__file__, text, raw, args, argv, "small_vs_large", "Small ensembles vs one large model", headlines)
    return 0


def study(work: Path, noise: float, args, compiled: bool) -> dict:
    """Train, build and serve one noise level; return its numbers and verdicts."""
    from tritonfleet.builder.build import build
    from tritonfleet.builder.runtime import ops
    from tritonfleet.builder.spec import load_spec
    from tritonfleet.clients.evaluation.replicates import (
        accuracy_interval,
        choose_best,
        difference_interval,
        interval_verdict,
    )
    from tritonfleet.clients.infer import TritonClient
    from tritonfleet.clients.loadgen import LoadConfig, run_load
    from tritonfleet.clients.server import TritonServer
    from tritonfleet.examples.digits.train import Recipe, ensure_trained

    artifacts, repo = work / "artifacts", work / "model_repository"
    seeds, ks = range(args.seeds), range(1, args.max_k + 1)
    base = int(round(1000 * noise))  # every model of every level and replicate has its own seed
    recipes = tuple(Recipe(small_name(r, i), SMALL["architecture"], SMALL["kwargs"], seed=base + 100 * r + i,
                           epochs=args.epochs) for r in seeds for i in ks)
    recipes += tuple(Recipe(large_name(r), LARGE["architecture"], LARGE["kwargs"], seed=base + 100 * r + 50,
                            epochs=args.epochs) for r in seeds)
    ensure_trained(artifacts, recipes, noise=noise, progress=False, chain=False)
    specs = {f"ens_{k}": ([small_name(0, i) for i in range(1, k + 1)], [large_name(0)] if k == args.max_k else [])
             for k in ks if k > 1}
    specs.update({f"pool_{r}": ([small_name(r, i) for i in ks], [large_name(r)]) for r in seeds if r > 0})
    for name, (members, baselines) in specs.items():
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec_for(name, members, artifacts, repo, baselines, compiled and
                                                name.startswith("ens_"))))
        build(load_spec(path), spec_path=path, progress=False)
    data = dict(np.load(artifacts / "digits.npz"))
    served_name = {k: (f"ens_{k}_compiled" if compiled else f"ens_{k}") for k in ks if k > 1}

    with TritonServer(repo) as server:
        url = server.url("grpc")
        logits = {}
        with TritonClient(url, protocol="grpc") as client:
            for model in [*(small_name(r, i) for r in seeds for i in ks), *(large_name(r) for r in seeds)]:
                logits[model] = {split: np.asarray(client.infer_batched(model, [data[f"x_{split}"]])["logits"])
                                 for split in ("val", "test")}
            checks = {}
            for k in ks:
                if k == 1:
                    continue
                served = np.asarray(client.infer_batched(served_name[k], [data["x_test"]])["probabilities"])
                fused = ops.fuse(FUSION, [logits[small_name(0, i)]["test"] for i in range(1, k + 1)])["probabilities"]
                checks[served_name[k]] = float(np.abs(served - fused).max())
        bad = {m: d for m, d in checks.items() if not d <= 1e-4}
        if bad:
            raise SystemExit(f"σ={noise:g}: served ensembles differ from their members' fused outputs: {bad}")

        def correct(k: int | None, split: str) -> np.ndarray:
            """[replicates, samples] correctness of the k-ensemble (None: the large model)."""
            labels = data[f"y_{split}"]
            rows = []
            for r in seeds:
                if k is None:
                    pred = logits[large_name(r)][split].argmax(1)
                else:
                    pred = ops.fuse(FUSION, [logits[small_name(r, i)][split] for i in range(1, k + 1)])["class_index"]
                rows.append(np.asarray(pred).reshape(-1) == labels)
            return np.stack(rows)

        boot = {"resamples": args.resamples, "seed": 0}
        candidates = {}
        for k in ks:
            val = correct(k, "val").mean(axis=1)
            test = accuracy_interval(correct(k, "test"), **boot)
            candidates[k] = {"validation": 100 * float(val.mean()), "validation_per_seed": val.tolist(),
                             "test": {**test.to_dict(), "text": test.text()}}
        chosen = choose_best({k: candidates[k]["validation_per_seed"] for k in ks if k > 1})
        large_test = accuracy_interval(correct(None, "test"), **boot)
        large = {"validation": 100 * float(correct(None, "val").mean()), "test": {**large_test.to_dict(),
                                                                                   "text": large_test.text()}}
        diff = difference_interval(correct(chosen, "test"), correct(None, "test"), **boot)

        load = {"concurrency": args.concurrency, "batch_size": args.batch_size, "warmup_s": min(1.0, args.window),
                "window_s": args.window, "max_windows": args.max_windows}
        targets = {"ensemble": served_name[chosen], "large": large_name(0)}

        def measure(side, _round):
            res = run_load(url, LoadConfig(targets[side], **load), [data["x_test"]])
            return Sample(res.infer_per_s, res.stable, {"p50_ms": res.latency_ms.get("p50"),
                                                        "spread": [res.throughput_spread, res.latency_spread]})

        run = run_abba(measure, SIDES, args.rounds)
    ratio = run.ratio("ensemble", "large")
    accuracy_verdict = interval_verdict(diff)
    if not ratio["n"]:
        throughput_verdict = "no verdict: no round kept"
    else:
        throughput_verdict = "higher" if ratio["min"] > 1 else "lower" if ratio["max"] < 1 else "no verdict"
    return {
        "noise": noise, "test_samples": int(len(data["y_test"])), "served_models": targets, "max_abs_diff": checks,
        "candidates": candidates, "chosen": chosen, "large": large,
        "difference": {**diff.to_dict(), "text": diff.text(2, signed=True)},
        "accuracy_verdict": {"higher": "yes", "lower": "no: less accurate"}.get(accuracy_verdict,
                                                                                "no verdict: CI includes 0"),
        "ratio": ratio, "rounds": run.to_dict(),
        "throughput": {side: _med(run.values(side)) for side in SIDES},
        "throughput_verdict": {"higher": "yes", "lower": "no: slower"}.get(throughput_verdict,
                                                                           "no verdict: rounds straddle 1"
                                                                           if ratio["n"] else throughput_verdict),
        "claim": claim(accuracy_verdict, throughput_verdict),
    }


def claim(accuracy: str, throughput: str) -> str:
    """``met`` only when both are shown; else ``missed`` with what was not."""
    if accuracy == "higher" and throughput == "higher":
        return "met"
    why = []
    if accuracy != "higher":
        why.append("less accurate" if accuracy == "lower" else "accuracy not shown higher (CI includes 0)")
    if throughput != "higher":
        why.append("slower" if throughput == "lower" else "throughput not shown higher")
    return "missed: " + ", ".join(why)


def _med(values) -> str:
    return f"{np.median(values):,.0f}" if values else "-"


def _plot(studies: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=110)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, s in enumerate(studies):
        color = f"C{i}"
        ks = sorted(s["candidates"])
        tests = [s["candidates"][k]["test"] for k in ks]
        left.errorbar(ks, [t["estimate"] for t in tests], yerr=[[t["estimate"] - t["low"] for t in tests],
                                                               [t["high"] - t["estimate"] for t in tests]],
                      marker="o", color=color, capsize=3, label=f"σ={s['noise']:g}: mean of k small")
        lt = s["large"]["test"]
        left.axhline(lt["estimate"], color=color, linestyle="--", linewidth=1, label=f"σ={s['noise']:g}: large")
        left.axhspan(lt["low"], lt["high"], color=color, alpha=0.08)
        chosen = s["candidates"][s["chosen"]]["test"]
        for side, acc, marker in (("ensemble", chosen, "o"), ("large", lt, "s")):
            speeds = [s["rounds"]["rounds"][i][side]["value"] for i in s["rounds"]["kept"]]
            if speeds:
                x = float(np.median(speeds))
                right.errorbar(x, acc["estimate"], yerr=[[acc["estimate"] - acc["low"]], [acc["high"] - acc["estimate"]]],
                               xerr=[[x - min(speeds)], [max(speeds) - x]], marker=marker, color=color, capsize=3)
                right.annotate(f"{'ens_' + str(s['chosen']) if side == 'ensemble' else 'large'} σ={s['noise']:g}",
                               (x, acc["estimate"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    left.set(xlabel="k (small CNNs in the ensemble)", ylabel="test top-1 (%), 95% CI",
             title="Accuracy (dashed + band: large CNN)")
    left.set_xticks(sorted({k for s in studies for k in s["candidates"]}))
    left.legend(fontsize=6)
    right.set(xlabel="served throughput (inferences/s): median, range of rounds", ylabel="test top-1 (%), 95% CI",
              title="Chosen ensemble (circles) vs large CNN (squares)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    raise SystemExit(main())
