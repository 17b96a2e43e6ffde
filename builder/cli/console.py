"""Rich consoles and the tables the subcommands print."""

from __future__ import annotations

from functools import cache


@cache
def console():
    import sys

    from rich.console import Console

    # Pipes and CI logs get 120 columns instead of rich's 80, so tables keep model names.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 120)


@cache
def err_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def fmt(value, spec: str = ".4f", missing: str = "-") -> str:
    if value is None:
        return missing
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)
