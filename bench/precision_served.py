"""Precision variants through the server: the accuracy each fp16 / int8 variant costs.

    python bench/precision_served.py [--record]
    python bench/precision_served.py --smoke          # one member's variants

Builds the digits example (every member and the baseline in fp32, fp16 and Q/DQ int8, each
checked against PyTorch by the build), serves it with the local tritonserver and measures top-1
on the test split *through the server* for every variant. The accuracy cost of a variant is
its drop against the same model's fp32 (points; positive = worse), with a 95 % paired
bootstrap interval over the test samples (both answer the same samples). Goals: fp16 <= 0.1 pt,
int8 <= 1.0 pt. **met** when the whole interval is within the goal, **missed** when it is all
above, otherwise no verdict (the test set cannot tell). Max abs error vs PyTorch and the file
size come from the build's manifest.
"""

from __future__ import annotations

import numpy as np

from common import (
    add_server_args,
    bench_parser,
    check_server_args,
    example_repository,
    headline,
    labelled,
    machine,
    markdown_table,
    publish,
    serving,
    today,
)

GOALS = {"fp16": 0.1, "int8": 1.0}  # accuracy cost vs fp32, points


def parse(argv):
    parser = bench_parser(__doc__)
    add_server_args(parser)
    parser.add_argument("--models", default=None, help="fp32 models whose variants to measure (default: all)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--smoke", action="store_true", help="cnn_small_a's variants, 200 resamples")
    args = parser.parse_args(argv)
    check_server_args(parser, args)
    if args.smoke:
        args.models, args.resamples = "cnn_small_a", 200
    return args


def verdict(low: float, high: float, goal: float) -> str:
    if high <= goal:
        return "met"
    if low > goal:
        return "missed"
    return "no verdict: CI straddles the goal"


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)

    from tritonfleet.clients.evaluation.accuracy import predicted_classes
    from tritonfleet.clients.evaluation.bench import describe_models
    from tritonfleet.clients.evaluation.replicates import accuracy_interval, difference_interval
    from tritonfleet.clients.infer import TritonClient
    from tritonfleet.clients.manifest import Manifest

    repository = example_repository(args, ["digits"])
    inputs, labels = labelled(repository)
    described = [m for m in describe_models(Manifest.read(repository)) if m.member and m.precision]
    wanted = set(args.models.split(",")) if args.models else {m.member for m in described}
    models = [m for m in described if m.member in wanted]
    if not models:
        raise SystemExit(f"{repository}: no precision variants of {', '.join(sorted(wanted))}")
    boot = {"resamples": args.resamples, "seed": 0}
    correct = {}
    with serving(repository, args.url) as url, TritonClient(url, protocol="grpc") as client:
        for m in models:
            correct[m.model] = predicted_classes(client.infer_batched(m.model, inputs)) == labels
    fp32 = {m.member: m.model for m in models if m.precision == "fp32"}
    rows, raw, found = [], [], {p: [] for p in GOALS}
    for m in sorted(models, key=lambda m: (m.member, m.precision != "fp32", m.precision)):
        acc = accuracy_interval(correct[m.model], **boot)
        entry = {"model": m.model, "member": m.member, "kind": m.kind, "precision": m.precision,
                 "accuracy": acc.to_dict(), "max_abs_error": m.max_abs_error, "size_bytes": m.size_bytes}
        drop_text, judged, differ = "-", "-", "-"
        if m.precision != "fp32" and m.member in fp32:
            changed = int(np.sum(correct[fp32[m.member]] != correct[m.model]))
            differ = f"{changed} of {len(labels)}"
            drop = difference_interval(correct[fp32[m.member]], correct[m.model], **boot)  # fp32 − variant
            goal = GOALS.get(m.precision)
            judged = verdict(drop.low, drop.high, goal) if goal is not None else "-"
            drop_text = drop.text(2, signed=True)
            entry.update(drop=drop.to_dict(), verdict=judged, right_or_wrong_changed=changed)
            if goal is not None:
                found[m.precision].append((m.member, drop_text, judged))
        raw.append(entry)
        rows.append([m.model, m.kind, m.precision, acc.text(2), drop_text, differ,
                     "-" if m.max_abs_error is None else f"{m.max_abs_error:.1e}",
                     "-" if not m.size_bytes else f"{m.size_bytes / 1024:,.0f} KB", judged])
    table = markdown_table(["model", "kind", "precision", "test top-1 % [95% CI]", "drop vs fp32, pt [95% CI]",
                            "samples right in one, wrong in the other",
                            "max abs err vs PyTorch (build)", "size", "goal"], rows)
    text = (f"{machine()}; local target, gRPC; top-1 on the digits test split ({len(labels)} samples) through the "
            f"server; {args.resamples} bootstrap resamples; {today()}\n\n{table}\n\n"
            "Drop = fp32 top-1 − variant top-1 of the same model, paired over the test samples (positive: the "
            "variant is worse); the interval resamples the test samples, so it is [0, 0] when no sample changed "
            "from right to wrong or back (the next column counts them). Goals: "
            f"{', '.join(f'{p} <= {g:g} pt' for p, g in GOALS.items())}; met when the whole interval is within the "
            "goal. Max abs error: the build's parity check against PyTorch fp32 (int8 "
            "is judged by top-1 agreement there, and by the drop here).")
    headlines = []
    for precision, rows_ in found.items():
        if rows_:
            verdicts = {v for _, _, v in rows_}
            overall = (f"{verdicts.pop()} for all {len(rows_)}" if len(verdicts) == 1 else
                       "; ".join(f"{member}: {v}" for member, _, v in rows_))
            headlines.append(headline(f"{precision} accuracy cost ({len(rows_)} models, through the server)",
                                      "; ".join(f"{member} {d}" for member, d, _ in rows_),
                                      f"<= {GOALS[precision]:g} pt", overall))
    publish(__file__, text, raw, args, argv, "precision_served", "Precision variants through the server", headlines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
