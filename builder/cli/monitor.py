"""Watch a running Triton server: traffic, latency, failures, class distribution and drift.

Scrapes the server's metrics endpoint every --interval seconds and shows, per model, Triton's
request rate, mean/p99 latency, queue time per request and failures by reason, and per
tritonfleet pipeline the requests it answered, its errors by reason, its predicted-class
distribution against the build's reference profile (manifest.json), member disagreement and
drift scores (PSI per input summary, KS on confidence) with their thresholds and alerts.
--once --json prints one result for scripts; --alert-rules writes Prometheus alerting rules
for the same conditions (no server needed).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path

from tritonfleet.builder.cli.args import (
    existing_dir,
    existing_file,
    positive_float,
    positive_int,
    subcommand,
)
from tritonfleet.builder.cli.console import console, err_console, fmt


def register(sub) -> None:
    parser = subcommand(sub, __doc__, "monitor")
    parser.add_argument("repository", type=Path, nargs="?", default=Path("model_repository"),
                        help="model repository the server serves (default: ./model_repository)")
    parser.add_argument("--url", default=None, help="the server's HTTP address host:port (its metrics are read at "
                                                    "host:8002 unless --metrics-url says otherwise)")
    parser.add_argument("--metrics-url", default=None, help="the metrics endpoint, host:port or URL (default: "
                                                            "from --url)")
    parser.add_argument("--interval", type=positive_float, default=2.0,
                        help="seconds between scrapes; with --once, the window measured (default 2)")
    parser.add_argument("--once", action="store_true", help="scrape twice, --interval apart, print once and exit")
    parser.add_argument("--json", dest="json_out", default=None, metavar="OUT|-",
                        help="with --once: write the result as JSON to OUT (- for stdout)")
    parser.add_argument("--labels", type=existing_file, default=None,
                        help="true labels of served requests for live accuracy: JSON {request id: label} (matched "
                             "by id) or a JSON list / one label per line (matched by order); needs --prediction-log")
    parser.add_argument("--prediction-log", type=existing_dir, default=None,
                        help="folder the server's pipelines log their answers to (the server runs with "
                             "TRITONFLEET_PREDICTION_LOG=DIR, e.g. tritonfleet serve --prediction-log DIR)")
    parser.add_argument("--alert-rules", type=Path, default=None, metavar="OUT.yaml",
                        help="write Prometheus alerting rules for these thresholds and exit")
    group = parser.add_argument_group("thresholds")
    group.add_argument("--psi-threshold", type=positive_float, default=0.2, help="PSI per input summary (default 0.2)")
    group.add_argument("--ks-threshold", type=positive_float, default=0.2, help="KS on confidence, in (0, 1] "
                                                                                "(default 0.2)")
    group.add_argument("--min-samples", type=positive_int, default=100,
                       help="drift is judged on at least this many samples (default 100)")
    group.add_argument("--drift-window", type=positive_float, default=600.0,
                       help="seconds of traffic drift is judged on (default 600); until the monitor has run that "
                            "long, and with --once, everything the server counted")
    group.add_argument("--queue-threshold-ms", type=positive_float, default=50.0,
                       help="average queue time per request (default 50 ms)")
    group.add_argument("--failure-rate", type=positive_float, default=0.01,
                       help="share of failed requests (default 0.01)")
    parser.set_defaults(run=run)


def thresholds_of(args: argparse.Namespace):
    from tritonfleet.clients.evaluation.monitor import Thresholds

    return Thresholds(psi=args.psi_threshold, ks=args.ks_threshold, min_samples=args.min_samples,
                      queue_ms=args.queue_threshold_ms, failure_rate=args.failure_rate)


def run(args: argparse.Namespace) -> int:
    from tritonfleet.clients.errors import UsageError

    thresholds = thresholds_of(args)
    if args.alert_rules is not None:
        return write_rules(args, thresholds)
    if args.json_out is not None and not args.once:
        raise UsageError("--json prints one result: use it with --once")
    if args.labels is not None and args.prediction_log is None:
        raise UsageError("--labels needs --prediction-log DIR: the folder the server logs its answers to")
    from tritonfleet.clients.manifest import Manifest

    manifest = Manifest.read(args.repository)
    url = metrics_address(args)
    if args.once:
        result = once(manifest, url, args, thresholds)
        if args.json_out is not None:
            text = json.dumps(result, indent=2, sort_keys=True)
            if args.json_out == "-":
                sys.stdout.write(text + "\n")
            else:
                Path(args.json_out).write_text(text + "\n", encoding="utf-8")
                console().print(f"monitor: {args.json_out}")
        else:
            console().print(render(result))
        return 0
    return live(manifest, url, args, thresholds)


def metrics_address(args: argparse.Namespace) -> str:
    from tritonfleet.clients.errors import UsageError
    from tritonfleet.clients.metrics import metrics_url

    if args.metrics_url:
        return metrics_url(args.metrics_url)
    if args.url:
        host = args.url.split("://")[-1].split("/")[0].rsplit(":", 1)[0]
        return metrics_url(f"{host}:8002")
    raise UsageError("say where the server is: --metrics-url host:port (tritonfleet serve prints it as 'metrics'), "
                     "or --url host:port for a server with the default metrics port 8002")


def accuracy_of(manifest, args: argparse.Namespace) -> dict | None:
    from tritonfleet.clients.evaluation.monitor import live_accuracy, read_labels, read_prediction_log

    if args.labels is None:
        return None
    labels = read_labels(args.labels)
    return {name: live_accuracy(read_prediction_log(Path(args.prediction_log) / f"{name}.jsonl"), labels)
            for name in manifest.pipelines if (Path(args.prediction_log) / f"{name}.jsonl").is_file()}


def once(manifest, url: str, args: argparse.Namespace, thresholds) -> dict:
    from tritonfleet.clients.evaluation.monitor import dashboard
    from tritonfleet.clients.metrics import scrape

    first = scrape(url)
    time.sleep(args.interval)
    now = scrape(url)
    return dashboard(manifest, now, previous=first, base=None, thresholds=thresholds,
                     accuracy=accuracy_of(manifest, args))


def live(manifest, url: str, args: argparse.Namespace, thresholds) -> int:
    from rich.live import Live

    from tritonfleet.clients.errors import ServerError
    from tritonfleet.clients.evaluation.monitor import dashboard
    from tritonfleet.clients.metrics import scrape

    stop = threading.Event()
    previous_handler = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    history: deque = deque()
    previous = None
    try:
        with Live(console=console(), auto_refresh=False, transient=False) as screen:
            while not stop.is_set():
                try:
                    now = scrape(url)
                except ServerError as exc:
                    screen.update(f"[red]{exc}[/]", refresh=True)
                    stop.wait(args.interval)
                    continue
                history.append(now)
                while len(history) > 1 and now.time - history[1].time >= args.drift_window:
                    history.popleft()
                base = history[0] if now.time - history[0].time >= args.drift_window else None
                result = dashboard(manifest, now, previous=previous, base=base, thresholds=thresholds,
                                   accuracy=accuracy_of(manifest, args))
                screen.update(render(result, url), refresh=True)
                previous = now
                stop.wait(args.interval)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return 0


def render(result: dict, url: str | None = None):
    """The dashboard as rich renderables."""
    from rich.console import Group
    from rich.table import Table

    window = f"last {result['window_s']:.1f} s" if result.get("window_s") else "totals"
    models = Table(title=f"Triton models ({window}){' — ' + url if url else ''}", title_justify="left")
    for col in ("model", "requests", "req/s", "mean ms", "p50 ms", "p99 ms", "queue ms/req", "pending", "failures"):
        models.add_column(col, justify="left" if col == "model" else "right", no_wrap=col == "model")
    for name, m in sorted(result["models"].items()):
        w = m["window"]
        failures = ", ".join(f"{r} {n}" for r, n in sorted(m["failures"].items()) if n) or "0"
        models.add_row(name, f"{m['requests']:,}", fmt(w["rate"], ",.1f"), fmt(w["mean_ms"], ".2f"),
                       fmt(m["p50_ms"], ".2f"), fmt(m["p99_ms"], ".2f"), fmt(w["queue_ms"], ".3f"), str(m["pending"]),
                       failures)
    parts = [models]
    t = result["thresholds"]
    pipes = Table(title=f"tritonfleet pipelines (drift thresholds: PSI {t['psi']:g}, KS {t['ks']:g}, "
                        f"at least {t['min_samples']} samples)", title_justify="left")
    for col in ("pipeline", "requests", "req/s", "errors", "classes (live / reference %)", "disagree",
                "drift", "accuracy"):
        pipes.add_column(col, justify="left" if col in ("pipeline", "classes (live / reference %)", "drift") else "right")
    for name, p in sorted(result["pipelines"].items()):
        errors = ", ".join(f"{r} {n}" for r, n in sorted(p["errors"].items()) if n) or "0"
        classes = p["classes"]
        shares = classes["shares"] or []
        ref = classes["reference"] or []
        cls = " ".join(f"{c}:{100 * s:.0f}" + (f"/{100 * ref[c]:.0f}" if c < len(ref) else "")
                       for c, s in enumerate(shares)) or "-"
        d = p["drift"]
        drift_parts = [f"{k} {v:.3f}" for k, v in d["psi"].items() if v is not None]
        if d["ks_confidence"] is not None:
            drift_parts.append(f"KS {d['ks_confidence']:.3f}")
        drift = ("; ".join(drift_parts) or "-") + ("" if d["judged"] else f" (n={d['samples']}, not judged)")
        if d["alerts"]:
            drift = f"[bold red]{drift}[/]"
        acc = p.get("accuracy")
        disagree = p["disagreement"]["rate"]
        pipes.add_row(name, f"{p['requests']:,}", fmt(p["window"]["rate"], ",.1f"), errors, cls,
                      fmt(disagree, ".3f"), drift,
                      f"{acc['accuracy']:.4f} (n={acc['samples']})" if acc and acc["accuracy"] is not None else "-")
    parts.append(pipes)
    if result["alerts"]:
        lines = [f"[bold red]ALERT[/] {a['alert']} {a.get('pipeline') or a.get('model')}"
                 f"{' ' + a['input'] + '.' + a['stat'] if 'input' in a else ''}: {a['value']:g} > {a['threshold']:g}"
                 for a in result["alerts"]]
        parts.append("\n".join(lines))
    else:
        parts.append("[green]no alerts[/]")
    return Group(*parts)


def write_rules(args: argparse.Namespace, thresholds) -> int:
    import yaml

    from tritonfleet.builder.lifecycle.alert_rules import RuleOptions, alert_rules, duration
    from tritonfleet.builder.lifecycle.deploy.promql import promtool, promtool_check
    from tritonfleet.clients.errors import UsageError
    from tritonfleet.clients.manifest import Manifest, ManifestError

    bins = 10
    try:  # the most bins of any monitored quantity in the repository, when there is one
        manifest = Manifest.read(args.repository)
        found = [m.bins for p in manifest.pipelines.values() if (m := p.monitoring) is not None and m.bins]
        bins = max(found, default=bins)
    except ManifestError:
        pass
    rules = alert_rules(RuleOptions(thresholds=thresholds, bins=bins, drift_window=duration(args.drift_window)))
    if promtool() is not None:
        problems = promtool_check(rules["groups"])
        if problems:
            raise UsageError("promtool rejects the generated rules (a bug): " + "; ".join(problems))
        checked = "checked by promtool"
    else:
        checked = "not checked: promtool not found"
    out = Path(args.alert_rules)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Prometheus alerting rules written by 'tritonfleet monitor --alert-rules'\n"
                   + yaml.safe_dump(rules, sort_keys=False, width=120), encoding="utf-8")
    count = sum(len(g["rules"]) for g in rules["groups"])
    err_console().print(f"alert rules: {out} ({count} rules, {checked}); use them with 'tritonfleet deploy "
                        f"--alert-rules {out}' or load them into Prometheus")
    return 0
