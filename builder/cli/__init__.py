"""``tritonfleet`` command line: one module per subcommand.

Each subcommand module has ``register(subparsers)``, which adds its parser (its docstring
is the help) and sets ``run``; ``run(args)`` returns the exit code. User errors
(:class:`TritonfleetError`) print one message and exit non-zero, without a traceback.
"""

from __future__ import annotations

import argparse
import sys

from builder.errors import TritonfleetError

SUBCOMMANDS = ("build", "serve", "bench", "report", "verify", "rollback", "demo")


def make_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="tritonfleet",
        description="Build, serve and benchmark ensembles of PyTorch models on Triton Inference Server.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"builder.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from builder.cli.console import err_console

    args = make_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except TritonfleetError as exc:
        err_console().print(f"[bold red]error:[/] {exc}", highlight=False, markup=True, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console().print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
