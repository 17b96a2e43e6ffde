"""``tritonfleet`` command line: one module per subcommand, on top of everything else.

Each subcommand module has ``register(subparsers)``, which adds its parser (its docstring
is the help) and sets ``run``; ``run(args)`` returns the exit code. Bad option values are
one line naming the option (exit 2); user errors (:class:`TritonfleetError`) print one
message and exit with the error's code, without a traceback.
"""

from __future__ import annotations

import sys

from tritonfleet.builder.cli.args import CommandParser
from tritonfleet.clients.errors import TritonfleetError

SUBCOMMANDS = ("build", "serve", "bench", "report", "verify", "rollback", "promote", "deploy", "monitor", "demo", "distill", "tune")


def make_parser() -> CommandParser:
    import importlib

    parser = CommandParser(
        prog="tritonfleet",
        description="Build, serve and benchmark ensembles of PyTorch models on Triton Inference Server.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=CommandParser)
    for name in SUBCOMMANDS:
        importlib.import_module(f"tritonfleet.builder.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tritonfleet.builder.cli.console import err_console

    try:
        args = make_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) or a bad option (2, already printed in one line)
        return int(exit_.code or 0)
    try:
        return int(args.run(args) or 0)
    except TritonfleetError as exc:
        from rich.markup import escape

        # escaped: a message may hold brackets (pvc://CLAIM[/PATH]) that rich would read as markup
        err_console().print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
        return exc.exit_code
    except KeyboardInterrupt:
        err_console().print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
