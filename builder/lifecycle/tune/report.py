"""tune's table (markdown and JSON) and plot of every candidate.

The JSON holds everything a later look needs: the target, the goal as it was resolved, each
candidate's settings per model and measurement, its verdict, the decision and what was
committed. The plot puts every candidate's p99 latency against its throughput; the default
is a square, the winner a star, unusable candidates (unstable, errors, failed to load) are
hollow, and the p99 budget is a vertical line.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

PLOT = "tune.png"
TABLE = "tune.md"
DATA = "tune.json"


def rows(result) -> list[dict[str, str]]:
    """One row per candidate, in measurement order."""
    search = result.search
    out = []
    for trial in search.trials:
        m = trial.measurement
        out.append({
            "#": str(trial.index),
            "candidate": trial.label,
            "infer/s": f"{m.throughput:,.0f}" if m.throughput else "-",
            "p50 ms": f"{m.p50_ms:.2f}" if math.isfinite(m.p50_ms) else "-",
            "p99 ms": f"{m.p99_ms:.2f}" if math.isfinite(m.p99_ms) else "-",
            "stable": "yes" if m.stable else "no",
            "errors": str(m.errors),
            "verdict": search.verdict(trial),
        })
    return out


def markdown(result) -> str:
    search, goal = result.search, result.search.goal
    table = rows(result)
    header = list(table[0])
    lines = [f"# tritonfleet tune {result.target}", "",
             f"- repository: `{result.repository.name}`; tuned: {', '.join(result.models)}",
             f"- load: concurrency {result.options['concurrency']}, batch {result.options['batch_size']}, windows "
             f"{result.options['window_s']} s (at most {result.options['max_windows']}), stable when the last 3 are "
             f"within {result.options['stability_pct']:g}% (perf_analyzer's rule)",
             f"- objective: {goal.objective}; p99 budget: "
             + (f"{goal.latency_budget_ms:.2f} ms" if goal.latency_budget_ms is not None else "none")
             + ("" if result.options.get("latency_budget_ms") else " (the default's p99)")
             + f"; a candidate must beat the best so far by more than {goal.min_gain:.0%}",
             f"- search: {len(search.trials)} of {search.budget} candidates; {search.stopped}",
             f"- decision: {result.decision}", ""]
    if result.committed:
        lines += ["- committed: " + ", ".join(f"{c.model} v{c.previous} -> v{c.version}" for c in result.committed)
                  + f" (`tritonfleet rollback {result.repository.name} {result.target}` serves the default again)", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(r[h] for h in header) + " |" for r in table]
    if search.skipped:
        lines += ["", "Not searched:", *(f"- {s}" for s in search.skipped)]
    for note in result.notes:
        lines += ["", f"Note: {note}"]
    return "\n".join(lines) + "\n"


def to_dict(result) -> dict[str, Any]:
    search = result.search
    return {
        "repository": str(result.repository), "target": result.target, "models": list(result.models),
        "ensemble": result.ensemble, "options": result.options,
        "goal": {"objective": search.goal.objective, "latency_budget_ms": search.goal.latency_budget_ms,
                 "min_gain": search.goal.min_gain},
        "budget": search.budget, "stopped": search.stopped, "skipped": list(search.skipped),
        "decision": result.decision, "improved": search.improved, "winner": search.winner.index,
        "committed": [{"model": c.model, "previous": c.previous, "version": c.version} for c in result.committed],
        "notes": list(result.notes),
        "candidates": [{"index": t.index, "label": t.label, "coordinate": list(t.coordinate),
                        "settings": {name: s.to_dict() for name, s in t.settings.items()},
                        "measurement": t.measurement.to_dict(), "verdict": search.verdict(t)}
                       for t in search.trials],
    }


def plot(result, path: Path) -> Path:
    from matplotlib.figure import Figure

    search = result.search
    fig = Figure(figsize=(7.5, 4.8), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    measured = [t for t in search.trials if math.isfinite(t.measurement.p99_ms) and t.measurement.throughput > 0]
    for t in measured:
        m = t.measurement
        usable = m.valid
        ax.scatter(m.p99_ms, m.throughput, s=36, marker="o", zorder=3,
                   facecolors="C0" if usable else "none", edgecolors="C0" if usable else "gray")
        ax.annotate(str(t.index), (m.p99_ms, m.throughput), fontsize=7, xytext=(4, 3), textcoords="offset points")
    default, winner = search.default.measurement, search.winner.measurement
    if math.isfinite(default.p99_ms):
        ax.scatter(default.p99_ms, default.throughput, s=110, marker="s", facecolors="none", edgecolors="black",
                   linewidths=1.5, zorder=4, label="default (#0)")
    if search.improved and math.isfinite(winner.p99_ms):
        ax.scatter(winner.p99_ms, winner.throughput, s=220, marker="*", color="C3", zorder=5,
                   label=f"winner (#{search.winner.index})")
    if search.goal.latency_budget_ms is not None:
        ax.axvline(search.goal.latency_budget_ms, color="C1", linestyle="--", linewidth=1, label="p99 budget")
    ax.scatter([], [], s=36, facecolors="none", edgecolors="gray", label="unstable / errors (never chosen)")
    ax.set(xlabel="p99 latency (ms)", ylabel="throughput (inferences/s)",
           title=f"tune {result.target}: {len(search.trials)} candidates at concurrency "
                 f"{result.options['concurrency']}, batch {result.options['batch_size']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    return path


def write(result, folder: Path) -> list[Path]:
    """tune.md, tune.json and tune.png in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / TABLE).write_text(markdown(result), encoding="utf-8")
    (folder / DATA).write_text(json.dumps(to_dict(result), indent=2, default=str) + "\n", encoding="utf-8")
    return [folder / TABLE, folder / DATA, plot(result, folder / PLOT)]
