"""Helpers for the bench/ scripts: import path, ABBA rounds and ratios, docs/BENCHMARKS.md sections.

* :func:`abba_rounds` / :func:`run_abba`: every ratio is measured side by side, in alternating
  rounds (A B, B A, A B, ...), so drift on the machine hits both sides alike;
  :class:`AbbaRun` keeps each round's values and stability flags and applies one rule to
  unstable rounds (:data:`UNSTABLE_RULE`); :func:`ratio_summary` is the median of per-round
  ratios with its min, max and count.
* :func:`publish` prints a script's text; with ``--record`` it rewrites the script's section
  of docs/BENCHMARKS.md, writes the numbers and the script's headline rows to
  ``docs/bench/<key>.json`` and rewrites the Headlines table from every such file
  (``bench/headlines.py``), so no number in the doc is typed by hand.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENCHMARKS = ROOT / "docs" / "BENCHMARKS.md"
RESULTS = ROOT / "docs" / "bench"  # <key>.json per recorded section: numbers + headline rows


def import_project_from_clone() -> None:
    """Make ``tritonfleet`` importable from this clone when it is not installed (a GPU host that got
    the repository and a few wheels, no network to ``pip install -e .``): a ``tritonfleet`` package
    whose subpackages are this clone's folders, as pyproject's package-dir maps them."""
    import importlib.util
    import types

    if importlib.util.find_spec("tritonfleet") is not None:
        return
    package = types.ModuleType("tritonfleet")
    package.__path__ = []
    sys.modules["tritonfleet"] = package
    for name, folder in (("builder", "builder"), ("clients", "clients"), ("examples", "examples")):
        spec = importlib.util.spec_from_file_location(f"tritonfleet.{name}", ROOT / folder / "__init__.py",
                                                      submodule_search_locations=[str(ROOT / folder)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        setattr(package, name, module)
SPEC_DIR = ROOT / "ensemble_configs"  # the clone is the examples' workdir (tritonfleet.examples.workdir)


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def today() -> str:
    return f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}"


def record_section(key: str, title: str, text: str, command: str, doc_path: Path | None = None) -> Path:
    """Replace (or append) the section between ``<!-- key:begin/end -->`` markers."""
    path = BENCHMARKS if doc_path is None else Path(doc_path)
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    doc = path.read_text() if path.is_file() else "# Benchmarks\n"
    block = f"{begin}\nCommand: `{command}`\n\n{text.rstrip()}\n{end}"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip() + f"\n\n## {title}\n\n{block}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc)
    return path


def replace_block(key: str, text: str, doc_path: Path | None = None) -> Path:
    """Replace what lies between ``<!-- key:begin/end -->`` (no command line: the headlines)."""
    path = BENCHMARKS if doc_path is None else Path(doc_path)
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    doc = path.read_text() if path.is_file() else "# Benchmarks\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip() + f"\n\n{block}\n"
    path.write_text(doc)
    return path


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- ABBA rounds and ratios
UNSTABLE_RULE = ("a round in which any side never met perf_analyzer's stability rule (last 3 windows, max/min <= 1.1 "
                 "for throughput and latency) is excluded for every side")


def abba_rounds(sides: Sequence, rounds: int) -> Iterator[tuple[int, object]]:
    """``(round, side)`` in ABBA order: every round measures each side once, even rounds in the
    given order, odd rounds reversed (A B, B A, A B, ...)."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for r in range(rounds):
        for side in (sides if r % 2 == 0 else list(reversed(sides))):
            yield r, side


@dataclass(frozen=True)
class Sample:
    """One side's measurement in one round."""

    value: float
    stable: bool = True
    extra: dict = field(default_factory=dict)


@dataclass
class AbbaRun:
    """Per-round samples of every side, measured in :func:`abba_rounds` order."""

    sides: list
    rounds: list[dict] = field(default_factory=list)  # round -> {side: Sample}

    def kept(self) -> list[int]:
        """Rounds in which every side was measured (a positive, finite value) and stable (:data:`UNSTABLE_RULE`)."""
        return [i for i, r in enumerate(self.rounds) if all(s in r and r[s].stable and _positive(r[s].value)
                                                            for s in self.sides)]

    @property
    def excluded(self) -> int:
        return len(self.rounds) - len(self.kept())

    def values(self, side) -> list[float]:
        return [self.rounds[i][side].value for i in self.kept()]

    def ratios(self, numerator, denominator) -> list[float]:
        return [self.rounds[i][numerator].value / self.rounds[i][denominator].value for i in self.kept()]

    def ratio(self, numerator, denominator) -> dict:
        return ratio_summary(self.ratios(numerator, denominator))

    def unstable(self, side) -> int:
        """Rounds in which ``side`` never met the stability rule (or measured nothing)."""
        return sum(1 for r in self.rounds if side not in r or not r[side].stable or not _positive(r[side].value))

    def kept_text(self) -> str:
        """``4 of 6`` or ``4 of 6 (unstable: a 1, b 2)``, for a table cell."""
        text = f"{len(self.kept())} of {len(self.rounds)}"
        flagged = [f"{s} {self.unstable(s)}" for s in self.sides if self.unstable(s)]
        return text + (f" (unstable: {', '.join(flagged)})" if flagged else "")

    def note(self) -> str:
        return f"{len(self.kept())} of {len(self.rounds)} rounds kept ({self.excluded} excluded: {UNSTABLE_RULE})"

    def to_dict(self) -> dict:
        return {"sides": [str(s) for s in self.sides], "kept": self.kept(), "excluded": self.excluded,
                "rounds": [{str(k): {"value": v.value, "stable": v.stable, **v.extra} for k, v in r.items()}
                           for r in self.rounds]}


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def run_abba(measure: Callable[[object, int], Sample], sides: Sequence, rounds: int) -> AbbaRun:
    """Call ``measure(side, round)`` in ABBA order; returns every round's samples."""
    run = AbbaRun(list(sides), [{} for _ in range(rounds)])
    for r, side in abba_rounds(list(sides), rounds):
        run.rounds[r][side] = measure(side, r)
    return run


def ratio_summary(per_round: Sequence[float]) -> dict:
    """Median of per-round ratios with min, max and count (NaNs when there is none)."""
    values = [float(v) for v in per_round if math.isfinite(v)]
    if not values:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "n": 0}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt_ratio(summary: dict, digits: int = 2, suffix: str = "") -> str:
    """``0.86 [0.81–0.90], n=6`` (``-`` when no round was kept)."""
    if not summary.get("n"):
        return "- (no round kept)"
    f = f"{{:.{digits}f}}{suffix}"
    return f"{f.format(summary['median'])} [{f.format(summary['min'])}–{f.format(summary['max'])}], n={summary['n']}"


def self_spread(values: Sequence[float]) -> float:
    """max/min of one side's own values across rounds (its noise floor); inf if any <= 0, NaN if < 2."""
    values = [float(v) for v in values]
    if len(values) < 2:
        return math.nan
    if min(values) <= 0:
        return math.inf
    return max(values) / min(values)


def goal_verdict(summary: dict, goal: float, higher: bool = True) -> str:
    """``met`` only when every kept round is on the goal's side; ``missed`` otherwise (saying so
    when the rounds straddle the goal); ``no verdict`` when no round was kept."""
    if not summary.get("n"):
        return "no verdict: no round kept"
    lo, hi = summary["min"], summary["max"]
    good = lo >= goal if higher else hi <= goal
    bad = hi < goal if higher else lo > goal
    if good:
        return "met"
    if bad:
        return "missed"
    return f"missed: rounds straddle the goal ({lo:.2f}–{hi:.2f})"


def timed_windows(step: Callable[[], object], samples_per_step: int, window_s: float, max_windows: int,
                  warmup_s: float = 0.5, stable_windows: int = 3, stability_pct: float = 10.0) -> Sample:
    """Samples/s of ``step`` called in a loop in this process, measured like the load generator:
    windows until perf_analyzer's rule holds over the last ``stable_windows`` (latency = mean time
    per call) or ``max_windows`` pass; the value is over the last windows, flagged if unstable."""
    import time

    from tritonfleet.clients.loadgen.windows import WindowStats, is_stable, measure_windows, spread

    deadline = time.perf_counter() + warmup_s
    step()
    while time.perf_counter() < deadline:
        step()
    calls = [0]

    def close(start: float, end: float) -> WindowStats:
        n, calls[0] = calls[0], 0
        return WindowStats(start, end - start, n, 0, n / (end - start), 1e3 * (end - start) / n if n else math.nan)

    gen = measure_windows(close, window_s, max_windows, stable_windows, stability_pct, time.perf_counter())
    try:
        wait = next(gen)
        while True:
            until = time.perf_counter() + wait
            while time.perf_counter() < until:
                step()
                calls[0] += 1
            wait = gen.send(None)
    except StopIteration as stop:
        windows = stop.value
    last = windows[-stable_windows:]
    rate = sum(w.requests for w in last) * samples_per_step / sum(w.seconds for w in last)
    return Sample(rate, is_stable(windows, stable_windows, stability_pct),
                  {"windows": len(windows), "spread": [spread([w.requests_per_s for w in last]),
                                                       spread([w.mean_latency_ms for w in last])]})


def headline(question: str, measured: str, goal: str, verdict: str) -> dict:
    """One row of the Headlines table (bench/headlines.py renders them from docs/bench/*.json)."""
    return {"question": question, "measured": measured, "goal": goal, "verdict": verdict}


def publish(script: str, text: str, raw, args, argv: list[str] | None, key: str, title: str,
            headlines: list[dict] | None = None) -> None:
    """Print ``text``; with ``--json`` also write ``raw``; with ``--record`` rewrite the section
    ``key`` of docs/BENCHMARKS.md naming the exact command (``script`` is the caller's __file__),
    write ``raw`` and ``headlines`` to docs/bench/<key>.json and rewrite the Headlines table."""
    print(text)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2, default=str))
    if args.record:
        command = " ".join([f"python bench/{Path(script).name}", *(argv if argv is not None else sys.argv[1:])])
        print(f"recorded in {record_section(key, title, text, command)}")
        write_results(key, title, command, raw, headlines)
        from headlines import record_headlines

        print(f"headlines rewritten in {record_headlines()}")


def write_results(key: str, title: str, command: str, raw, headlines: list[dict] | None,
                  folder: Path | None = None) -> Path:
    """docs/bench/<key>.json: what a ``--record`` run measured, read by bench/headlines.py."""
    folder = RESULTS if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key}.json"
    path.write_text(json.dumps({"key": key, "title": title, "command": command, "date": today(), "machine": machine(),
                                "headlines": headlines, "raw": raw}, indent=2, default=str) + "\n")
    return path


def add_server_args(parser: argparse.ArgumentParser) -> None:
    """``--url``/``--repository``: measure on a tritonserver that is already running (a test's
    session server) instead of building the example repository and starting one."""
    parser.add_argument("--url", default=None,
                        help="gRPC address of a running tritonserver serving --repository (default: start one)")
    parser.add_argument("--repository", type=Path, default=None,
                        help="the repository that --url serves (read for its manifest and labelled data)")


def check_server_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.url is None) != (args.repository is None):
        parser.error("--url and --repository go together (the repository the running server serves)")


def median_text(values) -> str:
    """``1,234``: the median of the values that are not None, rounded; ``-`` when there is none."""
    values = [v for v in values if v is not None]
    return f"{statistics.median(values):,.0f}" if values else "-"


def side_by_side_args(doc: str, argv, rounds: int, smoke_batch_sizes: str | None = "1",
                      add: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The options of a script that measures served sides in ABBA rounds at ``--concurrency``:
    ``--url/--repository``, ``--batch-sizes``, ``--rounds``, ``--window``, ``--max-windows`` and
    ``--smoke`` (2 rounds of 0.2 s windows, batch sizes ``smoke_batch_sizes`` unless None); ``add``
    adds a script's own options."""
    parser = bench_parser(doc)
    add_server_args(parser)
    parser.add_argument("--batch-sizes", default="1,8")
    if add is not None:
        add(parser)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=rounds, help="ABBA rounds; each measures every side once")
    parser.add_argument("--window", type=float, default=2.0, help="seconds per measurement window (every side)")
    parser.add_argument("--max-windows", type=int, default=8)
    parser.add_argument("--smoke", action="store_true", help="2 rounds of 0.2 s windows (checks the script, not speed)")
    args = parser.parse_args(argv)
    check_server_args(parser, args)
    if args.smoke:
        args.rounds, args.window, args.max_windows = 2, 0.2, 4
        args.batch_sizes = smoke_batch_sizes or args.batch_sizes
    if args.rounds < 2 or args.concurrency < 1 or args.window <= 0 or args.max_windows < 3:
        parser.error("--rounds >= 2, --concurrency >= 1, --window > 0 and --max-windows >= 3")
    return args


class serving:
    """``with serving(repository, url) as url:`` the running server at ``url``, or a local
    tritonserver started on ``repository`` (and stopped on exit)."""

    def __init__(self, repository: Path, url: str | None = None, **server_kwargs):
        self.repository, self.url, self.kwargs, self.server = repository, url, server_kwargs, None

    def __enter__(self) -> str:
        if self.url:
            return self.url
        from tritonfleet.clients.server import TritonServer

        self.server = TritonServer(self.repository, **self.kwargs)
        self.server.__enter__()
        return self.server.url("grpc")

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.__exit__(*exc)


def example_repository(args: argparse.Namespace, pipelines: Sequence[str]) -> Path:
    """The repository to measure: ``--repository`` when the script measures a running server
    (``--url``), else the example specs ``pipelines`` built into ``--output`` (the first one's)."""
    if args.url:
        return args.repository
    from tritonfleet.examples.workdir import build_examples

    built = build_examples(ROOT, list(pipelines), output_dir=args.output, progress=False)
    return built[pipelines[0]].repository


def labelled(repository: Path, split: str = "test", pipeline: str = "digits"):
    """``(inputs, labels)`` of the labelled ``split`` that ``pipeline``'s build recorded in the
    repository's manifest (the same samples whichever way the repository was built)."""
    from tritonfleet.clients.manifest import Manifest

    manifest = Manifest.read(repository)
    record = manifest.pipelines.get(pipeline)
    found = None if record is None else record.splits.get(split)
    if found is None or found.labels is None:
        raise SystemExit(f"{repository}: pipeline '{pipeline}' recorded no labelled {split} split in manifest.json")
    inputs, labels = found.load(manifest.repository, record.spec_dir)
    return list(inputs), labels


def fusion_step(repository: Path, ensemble: str) -> tuple[str, dict, list[tuple[str, str]]]:
    """``(fusion model, its fusion parameters, [(member model, member output), ...])`` of an
    ensemble in ``repository``, members in the order of the fusion's inputs: what the server fuses."""
    from tritonfleet.clients.model_config import parse_pbtxt

    def config(name: str):
        return parse_pbtxt((Path(repository) / name / "config.pbtxt").read_text())

    steps = config(ensemble).ensemble_scheduling.step
    produced = {tensor: (step.model_name, key) for step in steps for key, tensor in step.output_map.items()}
    for step in steps:
        cfg = config(step.model_name)
        if "fusion" in cfg.parameters:
            params = json.loads(cfg.parameters["fusion"].string_value)
            extra = Path(repository) / step.model_name / "1" / "params.json"
            if extra.is_file():
                params.update(json.loads(extra.read_text()))
            return step.model_name, params, [produced[step.input_map[name]] for name in params["inputs"]]
    raise SystemExit(f"{repository}/{ensemble}: no fusion step (a model with parameters['fusion'])")


def bench_parser(doc: str | None, repository: str | None = "model_repository/") -> argparse.ArgumentParser:
    """The options every bench script shares: ``--record`` and ``--json`` (read by :func:`publish`)
    and, unless ``repository`` is None, ``--output`` (where the example repository is built)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if repository is not None:
        parser.add_argument("--output", type=Path, default=None, help=f"repository (default: {repository})")
    parser.add_argument("--record", action="store_true", help="write the result into docs/BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    return parser
