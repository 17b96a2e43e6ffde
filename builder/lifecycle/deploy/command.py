"""The container's command line: the flags ``tritonfleet serve`` uses, with the pod's paths and ports.

One source of truth: :class:`tritonfleet.clients.server.ServerConfig` builds the arguments
for the local server and for the container alike; only the repository, the addresses and the
ports differ. Model control is explicit with every model loaded at start (``--load-model=*``),
so a rollback (a new ``version_policy``) can be applied to running pods through Triton's
repository API without a restart. :func:`substitute` maps the container's values back to
local ones, which is how the runtime check starts the bundled tritonserver with the exact
generated command line.
"""

from __future__ import annotations

from collections.abc import Mapping

from tritonfleet.builder.errors import DeployError
from tritonfleet.clients.server import ServerConfig

PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
LISTEN = "0.0.0.0"
BINARY = "tritonserver"


def container_args(model_repository: str) -> list[str]:
    """``tritonserver`` arguments inside the pod (``model_repository``: a path or an s3:// / gs:// URI)."""
    # ServerConfig formats the repository with an f-string: a str keeps "s3://" intact (a Path would not).
    config = ServerConfig(model_repository, host=LISTEN, http_port=PORTS["http"], grpc_port=PORTS["grpc"],
                          metrics_port=PORTS["metrics"], model_control_mode="explicit")
    return config.to_args()


def substitute(args: list[str], values: Mapping[str, str]) -> list[str]:
    """``args`` with the value of each ``--flag=value`` named in ``values`` replaced; every named
    flag must occur exactly once (so nothing is added and nothing silently missed)."""
    out, seen = [], {}
    for arg in args:
        flag, sep, _ = arg.partition("=")
        if sep and flag in values:
            seen[flag] = seen.get(flag, 0) + 1
            out.append(f"{flag}={values[flag]}")
        else:
            out.append(arg)
    wrong = [f for f in values if seen.get(f) != 1]
    if wrong:
        raise DeployError(f"the container command line has {', '.join(wrong)} {[seen.get(f, 0) for f in wrong]} "
                          "times, expected once each")
    return out


def local_values(repository: str, host: str, ports: Mapping[str, int]) -> dict[str, str]:
    """The substitutions that turn the container's command line into a local one."""
    return {"--model-repository": repository,
            "--http-address": host, "--http-port": str(ports["http"]),
            "--grpc-address": host, "--grpc-port": str(ports["grpc"]),
            "--metrics-address": host, "--metrics-port": str(ports["metrics"])}
