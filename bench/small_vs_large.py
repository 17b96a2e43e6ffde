"""Ensembles of small models vs one large model of about the same compute, served side by side.

    python bench/small_vs_large.py [--noise 0.2,0.35,0.5] [--record]

Task: scikit-learn's digits with Gaussian pixel noise, at several noise levels (so that no
model saturates it, and to show where the balance tips).
Models, trained here on CPU: four small CNNs (different seeds) and one large CNN whose
multiply-accumulates per sample are about those of the four together (counted with
forward hooks). Pipelines: the first small CNN alone, mean ensembles of its first k = 2, 3,
4 small CNNs, and the large CNN; all built into one repository (members shared) and served
by one local tritonserver. For each: top-1 accuracy on the test split through the server
and throughput/latency at the same concurrency and batch size. Writes a plot and prints a
verdict line, whichever way it comes out.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml

from common import ROOT, bench_parser, machine, markdown_table, publish, today

SMALL = {"architecture": "tritonfleet.examples.digits.models:DigitsCNN", "kwargs": {"width": 8, "hidden": 64}}
LARGE = {"architecture": "tritonfleet.examples.digits.models:LargeDigitsCNN", "kwargs": {"width": 16, "hidden": 128}}
SIGNATURE = {"inputs": [{"name": "image", "dtype": "float32", "shape": [1, 8, 8]}],
             "outputs": [{"name": "logits", "dtype": "float32", "shape": [10]}]}


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


def member(name: str, arch: dict, artifacts: Path) -> dict:
    return {"name": name, "model": {**arch, "checkpoint": str(artifacts / f"{name}.pt")}, **SIGNATURE}


def spec_for(name: str, members: list[str], artifacts: Path, repo: Path, baselines: list[str] = ()) -> dict:
    return {
        "name": name, "output_dir": str(repo),
        "serving": {"max_batch_size": 64, "dynamic_batching": {"max_queue_delay_microseconds": 200}},
        "members": [member(m, SMALL, artifacts) for m in members],
        "baselines": [member(b, LARGE, artifacts) for b in baselines],
        "fusion": {"type": "mean", "activation": "softmax"},
        "data": {"path": str(artifacts / "digits.npz"), "test": {"inputs": "x_test", "labels": "y_test"},
                 "validation": {"inputs": "x_val", "labels": "y_val"}},
    }


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, repository=None)
    parser.add_argument("--noise", default="0.2,0.35,0.5", help="std of the Gaussian pixel noise, one run per value")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--window", type=float, default=1.5)
    parser.add_argument("--workdir", type=Path, default=None, help="keep models and repository here")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "small_vs_large.png")
    args = parser.parse_args(argv)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="tritonfleet-small-vs-large-"))
    small_macs, large_macs = macs(**SMALL), macs(**LARGE)
    results, verdicts, trained_acc = [], [], {}
    for noise in (float(v) for v in args.noise.split(",")):
        rows, trained = study(work / f"noise_{noise:g}", noise, small_macs, large_macs, args)
        results += rows
        verdicts.append(verdict(noise, rows))
        trained_acc[noise] = {n: round(m["test_accuracy"], 4) for n, m in trained.items()}

    _plot(results, args.plot)
    table = markdown_table(
        ["noise σ", "pipeline", "models", "kMAC/sample", "test top-1", f"infer/s (batch {args.batch_size})",
         "p50 ms", "p99 ms"],
        [[f"{r['noise']:g}", r["model"], r["k"] or "1 (large)", f"{r['macs'] / 1e3:,.0f}", f"{r['accuracy']:.4f}",
          f"{r['infer_per_s']:,.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}"] for r in results],
    )
    text = (f"{machine()}; digits with Gaussian pixel noise, 360 test samples per level; local target, "
            f"concurrency {args.concurrency}; {today()}\n\n{table}\n\n![small vs large]({args.plot.name})\n\n"
            + "\n".join(f"- {v}" for v in verdicts))
    publish(__file__, text, {"results": results, "trained_test_accuracy": trained_acc}, args, argv, 'small_vs_large',
            'Small ensembles vs one large model')
    return 0


def study(work: Path, noise: float, small_macs: int, large_macs: int, args) -> tuple[list[dict], dict]:
    """Train, build and serve one noise level; return its result rows."""
    from tritonfleet.builder.build import build
    from tritonfleet.builder.spec import load_spec
    from tritonfleet.builder.spec.splits import load_split
    from tritonfleet.clients.evaluation.measure import measure_models
    from tritonfleet.clients.loadgen import LoadConfig
    from tritonfleet.clients.server import TritonServer
    from tritonfleet.examples.digits.train import Recipe, ensure_trained

    artifacts, repo = work / "artifacts", work / "model_repository"
    smalls = [f"small_{i}" for i in range(1, 5)]
    recipes = tuple(Recipe(n, SMALL["architecture"], SMALL["kwargs"], seed=10 + i) for i, n in enumerate(smalls)) + (
        Recipe("large", LARGE["architecture"], LARGE["kwargs"], seed=20),)
    trained = ensure_trained(artifacts, recipes, noise=noise, progress=False)
    for name, k in (("ens_2", 2), ("ens_3", 3), ("ens_4", 4)):
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec_for(name, smalls[:k], artifacts, repo, ["large"] if k == 4 else [])))
        build(load_spec(path), spec_path=path, progress=False)
    test = load_split(load_spec(work / "ens_4.yaml"), "test")
    entries = [("small_1", 1, small_macs), ("ens_2", 2, 2 * small_macs), ("ens_3", 3, 3 * small_macs),
               ("ens_4", 4, 4 * small_macs), ("large", None, large_macs)]
    load = LoadConfig(model="", concurrency=args.concurrency, batch_size=args.batch_size, warmup_s=1.0,
                      window_s=args.window, max_windows=6)
    with TritonServer(repo) as server:
        measured = measure_models(server.url("grpc"), [(n, "pipeline") for n, _, _ in entries], test.inputs,
                                  test.labels, load)
    rows = [{"noise": noise, "model": n, "k": k, "macs": c, "accuracy": r.accuracy, "infer_per_s": r.load.infer_per_s,
             "p50_ms": r.load.latency_ms["p50"], "p99_ms": r.load.latency_ms["p99"]}
            for (n, k, c), r in zip(entries, measured)]
    return rows, trained


def verdict(noise: float, rows: list[dict]) -> str:
    best = max((r for r in rows if r["k"] and r["k"] > 1), key=lambda r: (r["accuracy"], r["infer_per_s"]))
    large = next(r for r in rows if r["model"] == "large")
    gap = 100 * (best["accuracy"] - large["accuracy"])
    speed = best["infer_per_s"] / large["infer_per_s"]
    more = "more" if gap > 0 else "less" if gap < 0 else "as"
    both = "beat" if gap > 0 and speed >= 1 else "do not beat"
    return (f"σ={noise:g}: the best ensemble ({best['model']}, {best['accuracy']:.4f}) is {more} accurate than the "
            f"large model ({large['accuracy']:.4f}, {gap:+.2f} points) at {speed:.2f}x its throughput "
            f"({best['infer_per_s']:,.0f} vs {large['infer_per_s']:,.0f} infer/s): small ensembles {both} one large "
            "model on both counts here.")


def _plot(results: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=110)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for i, noise in enumerate(sorted({r["noise"] for r in results})):
        rows = [r for r in results if r["noise"] == noise]
        ens = [r for r in rows if r["k"]]
        large = next(r for r in rows if not r["k"])
        color = f"C{i}"
        left.plot([r["k"] for r in ens], [100 * r["accuracy"] for r in ens], marker="o", color=color,
                  label=f"σ={noise:g}: mean of k small")
        left.axhline(100 * large["accuracy"], color=color, linestyle="--", linewidth=1, label=f"σ={noise:g}: large")
        right.plot([r["infer_per_s"] for r in ens], [100 * r["accuracy"] for r in ens], marker="o", color=color)
        right.scatter(large["infer_per_s"], 100 * large["accuracy"], marker="s", color=color, s=50)
        for r in rows:
            right.annotate(r["model"], (r["infer_per_s"], 100 * r["accuracy"]), fontsize=6, xytext=(3, 3),
                           textcoords="offset points")
    left.set(xlabel="k (small CNNs in the ensemble)", ylabel="test top-1 (%)", title="Accuracy (dashed: large CNN)")
    left.set_xticks([1, 2, 3, 4])
    left.legend(fontsize=6)
    right.set(xlabel="served throughput (inferences/s)", ylabel="test top-1 (%)",
              title="Accuracy vs throughput (squares: large CNN)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


if __name__ == "__main__":
    raise SystemExit(main())
