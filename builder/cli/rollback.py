"""Serve an earlier version of a model (or, with --latest, the newest again).

Writes version_policy into the model's config.pbtxt (through Triton's schema) and the
manifest in one journaled commit, like a build. A version 'tritonfleet tune' committed is
served with the config it was tuned to, any other with the one it had (rolling back from a
tuned version restores the default settings); rolling back a tuned ensemble version also
serves its step models' previous versions. A server started by 'tritonfleet serve' (watch
mode) reloads the models at that commit; with --url, a server in explicit model-control mode
is told to reload them.
"""

from __future__ import annotations

import argparse

from tritonfleet.builder.cli.args import existing_dir, positive_int, subcommand
from tritonfleet.builder.cli.console import console


def register(sub) -> None:
    parser = subcommand(sub, __doc__, "rollback")
    parser.add_argument("repository", type=existing_dir)
    parser.add_argument("model")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--to", type=positive_int, default=None, dest="version",
                       help="version to serve (default: the one before the version served now)")
    which.add_argument("--latest", action="store_true", help="serve the newest version again")
    parser.add_argument("--url", default=None, help="gRPC address of a server in explicit mode to reload the model")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from tritonfleet.builder.repository.versions import rollback

    done = rollback(args.repository, args.model, args.version, latest=args.latest)
    if args.url:
        from tritonfleet.clients.infer import TritonClient

        with TritonClient(args.url) as client:
            for other in done.related:  # step models a tuned ensemble version moved with it, first
                client.load_model(other.model)
            client.load_model(args.model)
    for other in (*done.related, done):
        console().print(f"{other.model}: serving version {other.served} (was {other.previous}; on disk: "
                        f"{other.available})")
    return 0
