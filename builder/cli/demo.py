"""Run the whole digits example: train, build, serve, benchmark, report.

Works in WORKDIR (default: the current folder): copies the example specs into
WORKDIR/ensemble_configs (a clone of the repository already has them), trains the example
CNNs on scikit-learn's digits into WORKDIR/examples/digits/artifacts (cached), builds
WORKDIR/model_repository from digits.yaml (members in fp32/fp16/int8, a mean ensemble, a
large baseline) and a few fusion patterns over the same members, starts the local
tritonserver, measures every model through it (top-1 on the test split, throughput and
latency at each concurrency), prints the table, writes WORKDIR/reports and stops the server.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tritonfleet.builder.cli.args import add_progress_arg, add_server_args, subcommand
from tritonfleet.builder.cli.console import console

DEMO_SPECS = ("digits", "digits_weighted", "digits_vote", "digits_stacking", "digits_cascade")


def register(sub) -> None:
    from tritonfleet.builder.cli.bench import add_sweep_args

    parser = subcommand(sub, __doc__, "demo")
    parser.add_argument("--workdir", type=Path, default=Path("."),
                        help="folder for specs, checkpoints, repository and reports (default: .)")
    parser.add_argument("--specs", default=",".join(DEMO_SPECS),
                        help=f"example specs to build (default: {','.join(DEMO_SPECS)})")
    parser.add_argument("--output", type=Path, default=None,
                        help="repository folder (default: WORKDIR/model_repository)")
    parser.add_argument("--reports", type=Path, default=None, help="report folder (default: WORKDIR/reports)")
    add_sweep_args(parser)
    parser.set_defaults(concurrency=[1, 8])
    add_progress_arg(parser)
    add_server_args(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tritonfleet.builder.cli.bench import print_bench, run_bench
    from tritonfleet.builder.cli.build import print_build
    from tritonfleet.clients.evaluation.report import front_models, render
    from tritonfleet.examples.digits.train import ensure_trained
    from tritonfleet.examples.workdir import artifacts, build_examples

    out = console()
    workdir = args.workdir.resolve()
    names = [n.strip() for n in args.specs.split(",") if n.strip()]

    out.rule("[bold]1. train the example models")
    for name, meta in ensure_trained(artifacts(workdir), progress=args.progress).items():
        out.print(f"  {name:12s} PyTorch test accuracy {meta['test_accuracy']:.4f}")

    out.rule("[bold]2. build the model repository")
    results = build_examples(workdir, names, output_dir=args.output, progress=args.progress)
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
    reports = args.reports or workdir / "reports"
    path = report.save(reports / "bench.json")

    out.rule("[bold]4. report")
    md = render(report, reports)
    out.print(f"Pareto front (accuracy vs throughput): {', '.join(m.model for m in front_models(report))}")
    out.print(f"report: {md}\n        {md.with_suffix('.html')}\nresults: {path}")
    return 1 if args.require_stable and report.unstable else 0
