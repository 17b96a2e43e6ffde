"""Run the whole digits example: train, build, serve, benchmark, report.

Trains the example CNNs on scikit-learn's digits (cached after the first run), builds
model_repository/ from ensemble_configs/digits.yaml (members in fp32/fp16/int8, a mean
ensemble, a large baseline) and a few fusion patterns over the same members, starts the
local tritonserver, measures every model through it (top-1 accuracy on the test split,
throughput and latency at each concurrency), prints the table, writes the report and stops
the server.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.cli.args import add_progress_arg, add_server_args
from builder.cli.console import console

DEMO_SPECS = ("digits", "digits_weighted", "digits_vote", "digits_stacking", "digits_cascade")


def register(sub) -> None:
    from builder.cli.bench import add_sweep_args

    parser = sub.add_parser("demo", help=__doc__.splitlines()[0], description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", default=",".join(DEMO_SPECS),
                        help=f"example specs to build (default: {','.join(DEMO_SPECS)})")
    parser.add_argument("--output", type=Path, default=None, help="repository folder (default: model_repository/)")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="report folder (default: reports/)")
    add_sweep_args(parser)
    parser.set_defaults(concurrency=[1, 8])
    add_progress_arg(parser)
    add_server_args(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from builder.cli.bench import print_bench, run_bench
    from builder.cli.build import print_build
    from clients.report import front_models, render
    from examples.build_all import build_examples, example_specs
    from examples.digits.train import DEFAULT_ARTIFACTS, ensure_trained

    out = console()
    names = [n.strip() for n in args.specs.split(",") if n.strip()]
    missing = [p for p in example_specs(names) if not p.is_file()]
    if missing:
        from builder.errors import SpecError

        raise SpecError(f"example spec not found: {missing[0]}; run the demo from a clone of the repository")

    out.rule("[bold]1. train the example models")
    for name, meta in ensure_trained(DEFAULT_ARTIFACTS, progress=args.progress).items():
        out.print(f"  {name:12s} PyTorch test accuracy {meta['test_accuracy']:.4f}")

    out.rule("[bold]2. build the model repository")
    results = build_examples(names, output_dir=args.output, progress=args.progress)
    print_build(results[names[0]])
    for name in names[1:]:
        r = results[name]
        fitted = ""
        if "weights" in r.fitted:
            fitted = ", fitted weights " + " ".join(f"{w:.3f}" for w in r.fitted["weights"])
        elif "train_accuracy" in r.fitted:
            fitted = f", stacker fitted on data.validation (accuracy there {r.fitted['train_accuracy']:.4f})"
        out.print(f"  {name}: {len(r.models)} models ({len(r.problems)} problems{fitted})")
    repository = results[names[0]].repository

    out.rule("[bold]3. serve and benchmark")
    built = sorted({p.config.name for r in results.values() for p in r.models if p.kind != "fusion"})
    report = run_bench(args, repository, only=built)
    print_bench(report)
    path = report.save(args.reports / "bench.json")

    out.rule("[bold]4. report")
    md = render(report, args.reports)
    out.print(f"Pareto front (accuracy vs throughput): {', '.join(m.model for m in front_models(report))}")
    out.print(f"report: {md}\n        {md.with_suffix('.html')}\nresults: {path}")
    return 0
