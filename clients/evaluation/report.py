"""Render a :class:`BenchReport`: markdown, a self-contained HTML page and PNG plots.

* ``throughput_vs_concurrency.png`` and ``latency_vs_concurrency.png`` (p50 solid, p99
  dashed), one line per model;
* ``pareto.png``: accuracy against peak throughput for every model (members, precision
  variants, ensembles, pipelines), the Pareto front (no other model is both at least as
  accurate and at least as fast, and better in one) drawn as a line;
* ``report.md`` (references the PNGs) and ``report.html`` (PNGs embedded, one file).

Plots use matplotlib's object API (``Figure``), so rendering changes no global state.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path

from tritonfleet.clients.evaluation.accuracy import drop_points
from tritonfleet.clients.evaluation.bench import BenchReport, ModelBench

PLOTS = ("throughput_vs_concurrency.png", "latency_vs_concurrency.png", "pareto.png")
KIND_STYLE = {"member": ("o", "tab:blue"), "baseline": ("s", "tab:orange"), "ensemble": ("D", "tab:green"),
              "pipeline": ("^", "tab:purple"), "student": ("*", "tab:red")}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """``True`` for each (throughput, accuracy) point that no other point dominates."""
    flags = []
    for i, (x, y) in enumerate(points):
        dominated = any(
            (ox >= x and oy >= y) and (ox > x or oy > y)
            for j, (ox, oy) in enumerate(points) if j != i
        )
        flags.append(not dominated)
    return flags


def _rows(report: BenchReport) -> list[dict]:
    measured = [m for m in report.models if m.peak is not None and m.accuracy is not None]
    front = dict(zip((m.model for m in measured),
                     pareto_front([(m.peak.infer_per_s, m.accuracy) for m in measured])))
    fp32 = {m.member: m.accuracy for m in report.models if m.member and m.precision == "fp32"}
    rows = []
    for m in report.models:
        peak = m.peak
        reference = fp32.get(m.member) if m.precision not in (None, "fp32") else None
        drop = drop_points(reference, m.accuracy)
        rows.append({
            "model": m.model, "kind": m.kind, "precision": m.precision or "-",
            "accuracy": "-" if m.accuracy is None else f"{m.accuracy:.4f}",
            "drop": "-" if drop is None else f"{drop:+.2f}",
            "error": "-" if m.max_abs_error is None else f"{m.max_abs_error:.1e}",
            "size": "-" if not m.size_bytes else f"{m.size_bytes / 1024:,.0f} KB",
            "peak": "-" if peak is None else f"{peak.infer_per_s:,.0f}",
            "at": "-" if peak is None else str(peak.concurrency),
            "p50": "-" if peak is None or "p50" not in peak.latency_ms else f"{peak.latency_ms['p50']:.2f}",
            "p99": "-" if peak is None or "p99" not in peak.latency_ms else f"{peak.latency_ms['p99']:.2f}",
            "errors": str(sum(r.errors for r in m.runs)),
            "stable": stability(m),
            "pareto": "yes" if front.get(m.model) else "",
        })
    return rows


COLUMNS = [("model", "model"), ("kind", "kind"), ("precision", "precision"), ("accuracy", "top-1"),
           ("drop", "drop vs fp32 (pt)"), ("error", "max abs err vs PyTorch"), ("size", "size"),
           ("peak", "peak infer/s"), ("at", "at concurrency"), ("p50", "p50 ms"),
           ("p99", "p99 ms"), ("errors", "errors"), ("stable", "stable"), ("pareto", "Pareto front")]
UNSTABLE_NOTE = ("never met perf_analyzer's stability rule (last 3 windows, max/min <= 1.1 for throughput and latency); "
                 "their numbers are those last 3 windows, not a stable measurement")


def stability(m: ModelBench) -> str:
    """``yes``, ``-`` (not measured) or ``NO at 1,8``: the concurrencies whose run was unstable."""
    if not m.runs:
        return "-"
    unstable = [str(r.concurrency) for r in m.runs if not r.stable]
    return "yes" if not unstable else f"NO at {','.join(unstable)}"


def _figure(width=7.5, height=4.5):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, ax, path: Path, legend_size: int = 6, legend_columns: int = 2, **labels) -> None:
    """Label, grid, legend and write one plot."""
    ax.set(**labels)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size, ncol=legend_columns)
    fig.tight_layout()
    fig.savefig(path)


def _plot_sweeps(report: BenchReport, out: Path) -> None:
    fig, ax = _figure()
    for m in report.models:
        if m.runs:
            ax.plot([r.concurrency for r in m.runs], [r.infer_per_s for r in m.runs], marker="o", label=m.model)
    _save(fig, ax, out / PLOTS[0], xlabel="concurrency (requests in flight)", ylabel="throughput (inferences/s)",
          title="Throughput vs concurrency")

    fig, ax = _figure()
    for i, m in enumerate(m for m in report.models if m.runs):
        color = f"C{i % 10}"
        xs = [r.concurrency for r in m.runs]
        ax.plot(xs, [r.latency_ms.get("p50", float("nan")) for r in m.runs], color=color, marker="o", label=m.model)
        ax.plot(xs, [r.latency_ms.get("p99", float("nan")) for r in m.runs], color=color, linestyle="--")
    _save(fig, ax, out / PLOTS[1], xlabel="concurrency (requests in flight)",
          ylabel="latency (ms): p50 solid, p99 dashed", title="Latency vs concurrency")


def _plot_pareto(report: BenchReport, out: Path) -> None:
    measured = [m for m in report.models if m.peak is not None and m.accuracy is not None]
    fig, ax = _figure(8, 5)
    flags = pareto_front([(m.peak.infer_per_s, m.accuracy) for m in measured])
    for m, on_front in zip(measured, flags):
        marker, color = KIND_STYLE.get(m.kind, ("x", "gray"))
        ax.scatter(m.peak.infer_per_s, 100 * m.accuracy, marker=marker, color=color, s=60 if on_front else 25,
                   edgecolors="black" if on_front else "none", zorder=3)
        ax.annotate(m.model, (m.peak.infer_per_s, 100 * m.accuracy), fontsize=6, xytext=(3, 3),
                    textcoords="offset points")
    front = sorted((m.peak.infer_per_s, 100 * m.accuracy) for m, f in zip(measured, flags) if f)
    if front:
        ax.step([p[0] for p in front], [p[1] for p in front], where="pre", color="black", linewidth=1,
                label="Pareto front", zorder=2)
    for kind, (marker, color) in KIND_STYLE.items():
        if any(m.kind == kind for m in measured):
            ax.scatter([], [], marker=marker, color=color, label=kind)
    _save(fig, ax, out / PLOTS[2], legend_size=7, legend_columns=1,
          xlabel="peak throughput (inferences/s)", ylabel="top-1 accuracy (%)",
          title="Accuracy vs throughput (outlined: on the Pareto front)")


def _markdown(report: BenchReport, rows: list[dict]) -> str:
    meta = report.meta
    lines = [
        "# tritonfleet benchmark report", "",
        f"- date: {meta.get('date')}; machine: {meta.get('machine')}",
        f"- client: {meta.get('engine')}, batch {meta.get('batch_size')}, concurrency {meta.get('concurrency')}, "
        f"{meta.get('window_s')}s windows; server: {meta.get('url')}",
        f"- accuracy: {meta.get('dataset', 'not measured (no labelled split)')}", "",
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join(" --- " for _ in COLUMNS) + "|",
        *("| " + " | ".join(row[key] for key, _ in COLUMNS) + " |" for row in rows),
        *(["", f"**Unstable:** {', '.join(report.unstable)} {UNSTABLE_NOTE}."] if report.unstable else []),
        "", "![Accuracy vs throughput](pareto.png)", "",
        "![Throughput vs concurrency](throughput_vs_concurrency.png)", "",
        "![Latency vs concurrency](latency_vs_concurrency.png)", "",
    ]
    return "\n".join(lines)


def _html(report: BenchReport, rows: list[dict], out: Path) -> str:
    meta = report.meta
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(row[k])}</td>" for k, _ in COLUMNS) + "</tr>" for row in rows)
    unstable = (f"<p><strong>Unstable:</strong> {html.escape(', '.join(report.unstable))} {html.escape(UNSTABLE_NOTE)}.</p>"
                if report.unstable else "")
    images = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,'
        f'{base64.b64encode((out / name).read_bytes()).decode()}"></figure>' for name in (PLOTS[2], *PLOTS[:2])
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tritonfleet benchmark report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;font-size:13px}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
img{{max-width:100%}}</style></head><body><h1>tritonfleet benchmark report</h1>
<p>{html.escape(str(meta.get('date')))} &middot; {html.escape(str(meta.get('machine')))} &middot;
client {html.escape(str(meta.get('engine')))}, batch {meta.get('batch_size')},
concurrency {html.escape(str(meta.get('concurrency')))} &middot; accuracy:
{html.escape(str(meta.get('dataset', 'not measured')))}</p>
<table><tr>{head}</tr>{body}</table>{unstable}{images}</body></html>"""


def render(report: BenchReport, out_dir: Path) -> Path:
    """Write the report files into ``out_dir``; returns the path of ``report.md``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = _rows(report)
    _plot_sweeps(report, out)
    _plot_pareto(report, out)
    (out / "report.md").write_text(_markdown(report, rows))
    (out / "report.html").write_text(_html(report, rows, out))
    return out / "report.md"


def front_models(report: BenchReport) -> list[ModelBench]:
    measured = [m for m in report.models if m.peak is not None and m.accuracy is not None]
    flags = pareto_front([(m.peak.infer_per_s, m.accuracy) for m in measured])
    return [m for m, f in zip(measured, flags) if f]
