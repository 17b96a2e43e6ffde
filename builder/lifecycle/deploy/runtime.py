"""Runtime check without a cluster: the generated container command line on the bundled tritonserver.

Takes the Deployment's ``command`` + ``args`` exactly as written, substitutes only the local
values (the repository path for ``/models`` or the bucket, 127.0.0.1 for 0.0.0.0, free ports
for 8000/8001/8002), and starts the tritonserver bundled in nvidia-pytriton with it. The
local server also gets ``--backend-directory`` (its Python backend; the NGC image has its
backends at the default place). Then the probes' paths are asked on the port the probes
name, and the metrics endpoint must expose every series the HPA rule and alert rules read, and
every label they match on or group by (or Prometheus adds it from the scrape target).
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tritonfleet.builder.errors import DeployError
from tritonfleet.builder.lifecycle.deploy.bundle import load_objects
from tritonfleet.builder.lifecycle.deploy.command import BINARY, PORTS, local_values, substitute
from tritonfleet.clients.server import ServerConfig, TritonServer, free_port

HOST = "127.0.0.1"
# labels Prometheus adds to every scraped series from the ServiceMonitor's target (not on the endpoint)
TARGET_LABELS = frozenset({"namespace", "pod", "service", "job", "instance", "container", "endpoint"})


@dataclass
class _GivenArgs(ServerConfig):
    """A server config whose arguments are given, not derived (the generated command line)."""

    argv: list[str] = field(default_factory=list)

    def to_args(self) -> list[str]:
        return list(self.argv)


@dataclass
class RuntimeReport:
    argv: list[str]                    # what the server ran (binary first)
    probes: dict[str, int]             # probe path -> HTTP status
    series: set[str]                   # series names on the metrics endpoint
    missing: list[str]                 # series the rules read that the endpoint lacks
    missing_labels: list[str] = field(default_factory=list)   # labels they use that no series (or target) has
    log: Path | None = None

    @property
    def ok(self) -> bool:
        return all(code == 200 for code in self.probes.values()) and not self.missing and not self.missing_labels


def container(folder: Path) -> dict:
    deployments = [o for objs in load_objects(folder).values() for o in objs if o.get("kind") == "Deployment"]
    if not deployments:
        raise DeployError(f"{folder} has no Deployment; the runtime check runs a 'tritonfleet deploy k8s' folder")
    return deployments[0]["spec"]["template"]["spec"]["containers"][0]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback only
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def scrape(text: str) -> tuple[set[str], set[str]]:
    """(series names, label names) of a Prometheus text exposition, as Prometheus stores them.

    (prometheus_client's parser is not used here: it renames counter samples to ``<name>_total``,
    the OpenMetrics form, while Triton exposes and Prometheus stores ``nv_inference_request_success``.)"""
    names, label_names = set(), set()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, rest = line.partition("{")
            names.add(name.split()[0])
            if rest:
                label_names.update(re.findall(r'(\w+)="', rest.rpartition("}")[0]))
    return names, label_names


def run_container_locally(folder: Path, repository: Path, required_series: set[str],
                          required_labels: set[str] = frozenset(), log_path: Path | None = None) -> RuntimeReport:
    """Start the bundled tritonserver with ``folder``'s container command line on ``repository``."""
    spec = container(folder)
    command = [*spec.get("command", []), *spec.get("args", [])]
    if not command or command[0] != BINARY:
        raise DeployError(f"the container runs {command[:1]}, not {BINARY}")
    ports = {name: free_port(HOST) for name in PORTS}
    args = substitute(command[1:], local_values(str(Path(repository).resolve()), HOST, ports))
    mode = next((a.split("=", 1)[1] for a in args if a.startswith("--model-control-mode=")), "none")
    server = TritonServer(repository, host=HOST, log_path=log_path, model_control_mode=mode)
    server.config = _GivenArgs(server.config.repository, HOST, ports["http"], ports["grpc"], ports["metrics"], mode,
                               argv=args)
    container_ports = {p["name"]: p["containerPort"] for p in spec.get("ports", [])}
    local_port = {PORTS[name]: ports[name] for name in PORTS}
    with server:
        argv = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        probes = {}
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            get = (spec.get(probe) or {}).get("httpGet")
            if get:
                port = local_port[container_ports.get(get["port"], get["port"])]
                probes[get["path"]], _ = _get(f"http://{HOST}:{port}{get['path']}")
        code, text = _get(f"http://{HOST}:{ports['metrics']}/metrics")
        if code != 200:
            raise DeployError(f"the metrics endpoint answered {code}")
        found, label_names = scrape(text)
    return RuntimeReport(argv, probes, found, sorted(required_series - found),
                         missing_labels=sorted(set(required_labels) - label_names - TARGET_LABELS),
                         log=server.log_path)
