"""Serve a model repository with the tritonserver bundled in nvidia-pytriton.

Binds 127.0.0.1 on free ports unless told otherwise, waits until every model is READY,
prints the endpoints and runs until Ctrl-C (or SIGTERM), then stops the server cleanly.
In the default `watch` mode a supervisor reloads models whose Python stub died and picks
up builds and rollbacks when manifest.json changes (their commit point).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from tritonfleet.builder.cli.args import add_server_args, server_kwargs, subcommand
from tritonfleet.builder.cli.console import console


def register(sub) -> None:
    parser = subcommand(sub, __doc__, "serve")
    parser.add_argument("repository", type=Path, nargs="?", default=Path("model_repository"),
                        help="model repository (default: ./model_repository)")
    parser.add_argument("--model-control-mode", choices=("watch", "none", "poll", "explicit"), default="watch",
                        help="watch (default): explicit control + a supervisor that reloads changed models at "
                             "each build's commit point and models whose stub died; poll: Triton's own polling")
    parser.add_argument("--prediction-log", type=Path, default=None, metavar="DIR",
                        help="pipelines log each answered request (id, predicted classes) to DIR/<pipeline>.jsonl, "
                             "for live accuracy in 'tritonfleet monitor --labels'")
    add_server_args(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tritonfleet.clients.server import TritonServer

    watch = args.model_control_mode == "watch"
    env = {}
    if args.prediction_log is not None:  # read by runtime/tritonfleet_monitoring.py inside the server
        args.prediction_log.mkdir(parents=True, exist_ok=True)
        env["TRITONFLEET_PREDICTION_LOG"] = str(args.prediction_log.resolve())
    server = TritonServer(args.repository, model_control_mode="explicit" if watch else args.model_control_mode,
                          supervise=watch, env=env, **server_kwargs(args))
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with server:
            with server.client("http") as client:
                states = client.models()
            out = console()
            out.print(f"[bold green]tritonserver ready[/] (pid {server.pid}) serving {args.repository}")
            out.print(f"  HTTP    {server.url('http')}\n  gRPC    {server.url('grpc')}\n"
                      f"  metrics {server.url('metrics')}\n  log     {server.log_path}")
            for name, state in sorted(states.items()):
                out.print(f"  {state:8s} {name}")
            out.print("press Ctrl-C to stop")
            try:
                while not stop.wait(0.5):
                    if not server.is_alive():
                        out.print(f"[red]tritonserver exited[/]; log: {server.log_path}")
                        return 1
            except KeyboardInterrupt:
                pass
            out.print("stopping tritonserver ...")
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
