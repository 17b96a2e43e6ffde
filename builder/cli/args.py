"""The parser every subcommand uses, validated option types, and shared argument groups.

Every option with a bad value (zero, negative, not a number, a missing or unreadable file)
is reported as one line, ``tritonfleet bench: error: argument --window: must be > 0, got
'0'``, with exit code 2 and no usage block or traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from tritonfleet.clients.vocabulary import PRECISIONS


class CommandParser(argparse.ArgumentParser):
    """``argparse`` with one-line errors (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def exit(self, status: int = 0, message: str | None = None):
        if message:
            sys.stderr.write(message)
        raise SystemExit(status)


def _number(kind: type, text: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                         f"got '{text}'") from None


def bounded(kind: type, minimum: float, inclusive: bool = True) -> Callable[[str], float]:
    """A number type with a lower bound: ``bounded(int, 1)`` (>= 1), ``bounded(float, 0, False)`` (> 0)."""

    def parse(text: str):
        value = _number(kind, text)
        if value < minimum or (not inclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {minimum:g}, got '{text}'")
        return value

    parse.__name__ = f"{kind.__name__} {'>=' if inclusive else '>'} {minimum:g}"
    return parse


positive_int = bounded(int, 1)
non_negative_int = bounded(int, 0)
positive_float = bounded(float, 0, inclusive=False)
non_negative_float = bounded(float, 0)


def port(text: str) -> int:
    value = _number(int, text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port in 0..65535 (0: a free one), got '{text}'")
    return value


def percent(text: str) -> int:
    """An integer share in 0..100."""
    value = _number(int, text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be a percentage in 0..100, got '{text}'")
    return value


def probability(text: str) -> float:
    """A probability in (0, 1], e.g. a p-value threshold."""
    value = _number(float, text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got '{text}'")
    return value


def points(text: str) -> float:
    """Percentage points in -100..100 (an accuracy difference; negative allowed)."""
    value = _number(float, text)
    if not -100 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be in -100..100 (percentage points), got '{text}'")
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated integers >= 1, e.g. ``1,4,8``."""
    values = [positive_int(v.strip()) for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got '{text}'")
    return values


def precision_list(text: str) -> list[str]:
    items = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in items if p not in PRECISIONS]
    if unknown or not items:
        raise argparse.ArgumentTypeError(
            f"unknown precision {', '.join(unknown) or '(none)'}; use a comma-separated list of {', '.join(PRECISIONS)}"
        )
    return items


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"file not found: {text}")
    return path


def existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"folder not found: {text}")
    return path


def json_file(text: str) -> Path:
    """A readable file holding valid JSON (its content is read again by the command)."""
    path = existing_file(text)
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{text} is not readable JSON ({str(exc).splitlines()[0]})") from None
    return path


def add_server_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("local server")
    group.add_argument("--host", default="127.0.0.1",
                       help="address the server binds (default 127.0.0.1; 0.0.0.0 exposes it)")
    group.add_argument("--http-port", type=port, default=0, help="HTTP port (default: a free port)")
    group.add_argument("--grpc-port", type=port, default=0, help="gRPC port (default: a free port)")
    group.add_argument("--metrics-port", type=port, default=0, help="metrics port (default: a free port)")
    group.add_argument("--server-log", type=Path, default=None, help="write the server log here")


def server_kwargs(args: argparse.Namespace) -> dict:
    return dict(host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                metrics_port=args.metrics_port, log_path=args.server_log)


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide progress bars (for logs and CI)")


def subcommand(sub, module_doc: str, name: str, **kwargs) -> argparse.ArgumentParser:
    """A subcommand parser whose help is the module docstring's first line."""
    return sub.add_parser(name, help=module_doc.splitlines()[0], description=module_doc,
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
