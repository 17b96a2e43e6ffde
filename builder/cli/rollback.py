"""Serve an earlier version of a model (or, with --latest, the newest again).

Writes version_policy into the model's config.pbtxt (through Triton's schema) and records
it in manifest.json. A server started by 'tritonfleet serve' (poll mode) picks it up within
seconds; with --url, a server in explicit model-control mode is told to reload the model.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from builder.cli.console import console


def register(sub) -> None:
    parser = sub.add_parser("rollback", help=__doc__.splitlines()[0], description=__doc__)
    parser.add_argument("repository", type=Path)
    parser.add_argument("model")
    parser.add_argument("--to", type=int, default=None, dest="version",
                        help="version to serve (default: the one before the version served now)")
    parser.add_argument("--latest", action="store_true", help="serve the newest version again")
    parser.add_argument("--url", default=None, help="gRPC address of a server in explicit mode to reload the model")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from builder.repository.verify import rollback

    done = rollback(args.repository, args.model, args.version, latest=args.latest)
    if args.url:
        from clients.infer import TritonClient

        with TritonClient(args.url) as client:
            client.load_model(args.model)
    console().print(f"{done['model']}: serving version {done['served']} (was {done['previous']}; "
                    f"on disk: {done['available']})")
    return 0
