"""PromQL in the generated files: parsed, the series it reads listed, rule files run through promtool.

``promql-parser`` (PyPI; Python bindings of GreptimeTeam's Rust PromQL parser) parses every expression and
walks it for the series it selects, which the runtime check then looks for on Triton's
metrics endpoint. ``promtool check rules`` (Debian's ``prometheus`` package) checks a whole
rules file as Prometheus will load it: expressions, durations, labels, annotation templates.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tritonfleet.clients.errors import MissingDependencyError

PROMTOOL_HINT = "apt-get install -y prometheus (Debian/Ubuntu; ships promtool, starts no daemon)"


def parse(expr: str):
    """The expression's syntax tree; ``ValueError`` with the parser's message when it is not PromQL."""
    try:
        import promql_parser
    except ImportError:
        raise MissingDependencyError("checking PromQL needs promql-parser: pip install 'tritonfleet[deploy]'") from None
    try:
        return promql_parser.parse(expr)
    except Exception as exc:  # the binding raises ValueError (and may raise others) with the parser's message
        raise ValueError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


def series(expr: str) -> set[str]:
    """Names of the series ``expr`` selects (``{__name__="x"}`` included)."""
    import promql_parser

    names: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            names.update(m.value for m in node.matchers.matchers
                         if m.name == "__name__" and m.op == promql_parser.MatchOp.Equal)
        return True

    promql_parser.walk(parse(expr), visit)
    return names


def labels(expr: str) -> set[str]:
    """Label names ``expr`` matches on or groups by (``__name__`` aside)."""
    import promql_parser

    found: set[str] = set()

    def visit(node):
        if isinstance(node, promql_parser.VectorSelector):
            found.update(m.name for m in node.matchers.matchers if m.name != "__name__")
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            found.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None and node.modifier.matching:
            found.update(node.modifier.matching.labels)
        return True

    promql_parser.walk(parse(expr), visit)
    return found


def rule_expressions(groups: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(where, expr) of every rule in rules-file ``groups``."""
    out = []
    for group in groups:
        for i, rule in enumerate(group.get("rules") or []):
            name = rule.get("alert") or rule.get("record") or f"rules[{i}]"
            out.append((f"group {group.get('name')}, {name}", str(rule.get("expr", ""))))
    return out


def promtool() -> str | None:
    return shutil.which("promtool")


def promtool_check(groups: list[dict[str, Any]]) -> list[str]:
    """``promtool check rules`` on ``groups``: its complaints, one per line (empty: fine)."""
    binary = promtool()
    if binary is None:
        raise MissingDependencyError(f"promtool not found; {PROMTOOL_HINT}")
    with tempfile.TemporaryDirectory(prefix="tritonfleet-promtool-") as folder:
        path = Path(folder) / "rules.yaml"
        path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False), encoding="utf-8")
        done = subprocess.run([binary, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    if done.returncode == 0:
        return []
    text = (done.stderr + done.stdout).replace(str(path), "rules")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Checking")]
