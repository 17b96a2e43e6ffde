"""What a deployment is asked for: names, storage, replicas, resources, autoscaling targets.

Every value is checked here, before anything is written, so the command line and the API
give the same one-line errors (what, which option, how to fix).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tritonfleet.builder.errors import DeployError

# One pinned Kubernetes version for the offline checks (kubernetes-validate bundles its schemas).
KUBERNETES_VERSION = "1.33.0"
CONTAINER_REPOSITORY = "/models"   # where a PVC holding the repository is mounted
STORAGE_SCHEMES = ("pvc", "s3", "gs")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")


@dataclass(frozen=True)
class Storage:
    """Where the cluster finds the model repository: a PVC (``pvc://CLAIM[/PATH]``) or one of
    Triton's native object stores (``s3://BUCKET/PATH``, ``gs://BUCKET/PATH``)."""

    scheme: str
    location: str   # claim or bucket
    path: str       # folder inside it ("" = its root)

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.location}" + (f"/{self.path}" if self.path else "")

    @property
    def model_repository(self) -> str:
        """The ``--model-repository`` value inside the container."""
        return CONTAINER_REPOSITORY if self.scheme == "pvc" else self.uri


def parse_storage(text: str) -> Storage:
    scheme, sep, rest = text.partition("://")
    hint = "use pvc://CLAIM[/PATH], s3://BUCKET/PATH or gs://BUCKET/PATH"
    if not sep:
        raise DeployError(f"--storage {text}: not a URI; {hint}")
    if scheme not in STORAGE_SCHEMES:
        raise DeployError(f"--storage {text}: unknown storage scheme '{scheme}'; {hint}")
    location, _, path = rest.partition("/")
    path = path.strip("/")
    if not location:
        raise DeployError(f"--storage {text}: no {'claim' if scheme == 'pvc' else 'bucket'} named; {hint}")
    if scheme == "pvc" and not _DNS_LABEL.match(location):
        raise DeployError(f"--storage {text}: '{location}' is not a valid claim name (lower-case letters, digits "
                          "and '-', starting with a letter, at most 63 characters)")
    if ".." in path.split("/"):
        raise DeployError(f"--storage {text}: '..' is not allowed in the path")
    return Storage(scheme, location, path)


def _label(value: str, option: str) -> str:
    if not _DNS_LABEL.match(value):
        raise DeployError(f"{option} {value!r}: must be a DNS label (lower-case letters, digits and '-', starting "
                          "with a letter, ending with a letter or digit, at most 63 characters)")
    return value


def _quantity(value: str, option: str) -> str:
    if not _QUANTITY.match(value) or float(re.sub(r"[A-Za-z]+$", "", value)) <= 0:
        raise DeployError(f"{option} {value!r}: not a positive Kubernetes quantity (e.g. 500m, 2, 512Mi, 4Gi)")
    return value


@dataclass(frozen=True)
class DeployOptions:
    name: str = "tritonfleet"
    namespace: str | None = None
    storage: Storage = Storage("pvc", "tritonfleet-models", "")
    storage_secret: str | None = None       # s3/gs credentials (envFrom) for plain Kubernetes
    volume_size: str = "1Gi"                # the PVC the set creates for pvc:// storage
    service_account: str | None = None
    image: str | None = None                # default: the NGC image of the repository's Triton version
    min_replicas: int = 1
    max_replicas: int = 3
    gpus: int | None = None                 # per pod; None: 1 when a model runs on the GPU, else 0
    cpu: str = "1"
    memory: str = "2Gi"
    queue_target_us: int = 1000             # HPA: average queue time per request (microseconds)
    cpu_target_percent: int = 80            # HPA fallback: CPU utilisation of the requests
    alert_rules: Path | None = None
    canary_traffic_percent: int | None = None   # KServe; None: 10 when the repository rolls out a new version

    def __post_init__(self):
        _label(self.name, "--name")
        if self.namespace is not None:
            _label(self.namespace, "--namespace")
        if self.storage_secret is not None:
            _label(self.storage_secret, "--storage-secret")
        if self.service_account is not None:
            _label(self.service_account, "--service-account")
        if self.min_replicas < 1:
            raise DeployError(f"--min-replicas {self.min_replicas}: must be >= 1 (a deployment with no pod serves "
                              "nothing)")
        if self.max_replicas < self.min_replicas:
            raise DeployError(f"--max-replicas {self.max_replicas}: must be >= --min-replicas ({self.min_replicas})")
        if self.gpus is not None and self.gpus < 0:
            raise DeployError(f"--gpus {self.gpus}: must be >= 0")
        _quantity(self.cpu, "--cpu")
        _quantity(self.memory, "--memory")
        _quantity(self.volume_size, "--volume-size")
        if self.queue_target_us < 1:
            raise DeployError(f"--queue-target-us {self.queue_target_us}: must be >= 1")
        if not 1 <= self.cpu_target_percent <= 100:
            raise DeployError(f"--cpu-target-percent {self.cpu_target_percent}: must be in 1..100")
        if self.canary_traffic_percent is not None and not 0 <= self.canary_traffic_percent <= 100:
            raise DeployError(f"--canary-traffic-percent {self.canary_traffic_percent}: must be in 0..100")
        if self.storage_secret is not None and self.storage.scheme == "pvc":
            raise DeployError(f"--storage-secret {self.storage_secret}: a PVC needs no credentials; it is for "
                              "s3:// and gs:// storage")
        if self.alert_rules is not None and not Path(self.alert_rules).is_file():
            raise DeployError(f"--alert-rules {self.alert_rules}: file not found")
