"""Helpers for the bench/ scripts: import path and docs/BENCHMARKS.md sections."""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BENCHMARKS = ROOT / "docs" / "BENCHMARKS.md"


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


def record_section(key: str, title: str, text: str, command: str) -> Path:
    """Replace (or append) the section between ``<!-- key:begin/end -->`` markers."""
    begin, end = f"<!-- {key}:begin -->", f"<!-- {key}:end -->"
    doc = BENCHMARKS.read_text() if BENCHMARKS.is_file() else "# Benchmarks\n"
    block = f"{begin}\nCommand: `{command}`\n\n{text.rstrip()}\n{end}"
    if begin in doc and end in doc:
        head, rest = doc.split(begin, 1)
        doc = head + block + rest.split(end, 1)[1]
    else:
        doc = doc.rstrip() + f"\n\n## {title}\n\n{block}\n"
    BENCHMARKS.parent.mkdir(parents=True, exist_ok=True)
    BENCHMARKS.write_text(doc)
    return BENCHMARKS


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)



def publish(script: str, text: str, raw, args, argv: list[str] | None, key: str, title: str) -> None:
    """Print ``text``; with ``--json`` also write ``raw``; with ``--record`` rewrite the section
    ``key`` of docs/BENCHMARKS.md, naming the exact command (``script`` is the caller's __file__)."""
    import json

    print(text)
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2, default=str))
    if args.record:
        command = " ".join([f"python bench/{Path(script).name}", *(argv if argv is not None else sys.argv[1:])])
        print(f"recorded in {record_section(key, title, text, command)}")


def bench_parser(doc: str | None, repository: str | None = "model_repository/") -> argparse.ArgumentParser:
    """The options every bench script shares: ``--record`` and ``--json`` (read by :func:`publish`)
    and, unless ``repository`` is None, ``--output`` (where the example repository is built)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if repository is not None:
        parser.add_argument("--output", type=Path, default=None, help=f"repository (default: {repository})")
    parser.add_argument("--record", action="store_true", help="write the result into docs/BENCHMARKS.md")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw numbers here")
    return parser
