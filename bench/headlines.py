"""The Headlines table of docs/BENCHMARKS.md, written from what the bench scripts recorded.

    python bench/headlines.py [--record]

Every ``bench/<script>.py --record`` run writes ``docs/bench/<key>.json``: its numbers and the
headline rows it derives from them (question, measured, goal, verdict). This script joins those
rows into one table, in a fixed order; a section that was never recorded says so, and a
recorded section whose script declares no headline points at its section. ``--record``
rewrites the table between the ``<!-- headlines:begin/end -->`` markers (``publish`` does it
after every recorded section, so the table never lags behind the sections).
"""

from __future__ import annotations

import json
from pathlib import Path

from common import BENCHMARKS, RESULTS, bench_parser, markdown_table, replace_block

# key -> (what the section answers, the script that records it), in the table's order
SECTIONS: dict[str, tuple[str, str]] = {
    "precision_served": ("fp16 / int8 accuracy cost through the server", "precision_served.py"),
    "fusion_report": ("fusion cost inside the `digits` ensemble", "fusion_report.py"),
    "ensemble_vs_client": ("server-side ensemble ÷ client-side fusion", "ensemble_vs_client.py"),
    "backend_overhead": ("Python-backend ORT member ÷ in-process ORT", "backend_overhead.py"),
    "runner_cost": ("where a Python-backend member's time goes", "runner_cost.py"),
    "compiled_vs_ensemble": ("compiled pipeline vs ensemble", "compiled_vs_ensemble.py"),
    "tune": ("`tune` on the `digits` ensemble: tuned ÷ default throughput", "tune_digits.py"),
    "loadgen_vs_pa": ("own load generator ÷ perf_analyzer", "loadgen_vs_perf_analyzer.py"),
    "small_vs_large": ("small ensembles vs one large model", "small_vs_large.py"),
    "cascade": ("cascade: escalation, accuracy and throughput per threshold", "cascade_tradeoff.py"),
    "monitoring_cost": ("what monitoring costs the `digits` ensemble", "monitoring_cost.py"),
    "distill": ("distillation: a student vs its ensemble", "distill.py"),
    "soak": ("soak: failures and memory over a long run", "soak.py"),
    "soak_fault": ("soak with a stub killed mid-run", "soak.py --kill-stub-at 0.5 --requests 20000"),
    "gpu_check": ("the GPU path, in-process and served", "gpu_check.py"),
}
HEADER = ["question", "measured", "goal", "verdict", "recorded"]


def load_results(folder: Path | None = None) -> dict[str, dict]:
    folder = RESULTS if folder is None else Path(folder)
    out = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        if isinstance(data, dict) and "key" in data:
            out[data["key"]] = data
    return out


def headline_rows(results: dict[str, dict]) -> list[list[str]]:
    rows = []
    keys = [*SECTIONS, *sorted(k for k in results if k not in SECTIONS)]
    for key in keys:
        data = results.get(key)
        question, script = SECTIONS.get(key, (data.get("title", key) if data else key, ""))
        if data is None:
            rows.append([question, "not recorded yet", "-", "-", f"`python bench/{script} --record`"])
            continue
        when = f"{data.get('date', '?')}, {data.get('machine', '?')}"
        lines = data.get("headlines")
        if not lines:
            rows.append([question, f"recorded; no headline declared (see “{data.get('title', key)}”)", "-", "-", when])
            continue
        rows += [[h["question"], h["measured"], h["goal"], h["verdict"], when] for h in lines]
    return rows


def render(results: dict[str, dict]) -> str:
    return ("Written by `python bench/headlines.py --record` from `docs/bench/*.json` (each section's "
            "`--record` run); verdicts are derived by the scripts from the numbers in their sections.\n\n"
            + markdown_table(HEADER, headline_rows(results)))


def record_headlines(doc_path: Path | None = None, folder: Path | None = None) -> Path:
    """Rewrite the Headlines block of ``doc_path`` (default docs/BENCHMARKS.md)."""
    return replace_block("headlines", render(load_results(folder)), BENCHMARKS if doc_path is None else doc_path)


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser(__doc__, repository=None)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the recorded <key>.json files")
    args = parser.parse_args(argv)
    results = load_results(args.results)
    print(render(results))
    if args.json:
        args.json.write_text(json.dumps(headline_rows(results), indent=2))
    if args.record:
        print(f"recorded in {record_headlines(folder=args.results)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
