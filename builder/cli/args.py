"""Argument groups shared by subcommands."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_server_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("local server")
    group.add_argument("--host", default="127.0.0.1",
                       help="address the server binds (default 127.0.0.1; 0.0.0.0 exposes it)")
    group.add_argument("--http-port", type=int, default=0, help="HTTP port (default: a free port)")
    group.add_argument("--grpc-port", type=int, default=0, help="gRPC port (default: a free port)")
    group.add_argument("--metrics-port", type=int, default=0, help="metrics port (default: a free port)")
    group.add_argument("--server-log", type=Path, default=None, help="write the server log here")


def server_kwargs(args: argparse.Namespace) -> dict:
    return dict(host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                metrics_port=args.metrics_port, log_path=args.server_log)


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="hide progress bars (for logs and CI)")
