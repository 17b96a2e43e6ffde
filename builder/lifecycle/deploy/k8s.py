"""Plain Kubernetes objects for a repository, in the shape of Triton's k8s-onprem chart.

Deployment (NGC image, the ``tritonfleet serve`` command line, probes on Triton's health
endpoints, GPU/CPU requests, the repository from a PVC or an object store), Service
(8000/8001/8002), HorizontalPodAutoscaler (queue time per request through prometheus-adapter,
CPU as the fallback), PodDisruptionBudget, ServiceMonitor, PrometheusRule (alert rules,
when given) and, for ``pvc://`` storage, the PersistentVolumeClaim plus a loader pod to copy
the repository onto it. Each function returns plain dicts; :mod:`.bundle` writes them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tritonfleet.builder.lifecycle.deploy.command import BINARY, PORTS, container_args
from tritonfleet.builder.lifecycle.deploy.monitoring import QUEUE_METRIC, load_alert_rules
from tritonfleet.builder.lifecycle.deploy.options import CONTAINER_REPOSITORY, DeployOptions

VOLUME = "model-repository"
GPU_RESOURCE = "nvidia.com/gpu"
ANNOTATION_MANIFEST = "tritonfleet.io/manifest-sha256"


def labels(options: DeployOptions) -> dict[str, str]:
    return {**selector(options), "app.kubernetes.io/component": "tritonserver",
            "app.kubernetes.io/managed-by": "tritonfleet"}


def selector(options: DeployOptions) -> dict[str, str]:
    return {"app.kubernetes.io/name": "tritonfleet", "app.kubernetes.io/instance": options.name}


def metadata(options: DeployOptions, name: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name or options.name, "labels": labels(options)}
    if options.namespace:
        meta["namespace"] = options.namespace
    return meta


def resources(options: DeployOptions, gpus: int) -> dict[str, Any]:
    requests = {"cpu": options.cpu, "memory": options.memory}
    limits = {"memory": options.memory}
    if gpus:
        requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(gpus)
    return {"requests": requests, "limits": limits}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": failures,
            "timeoutSeconds": 2}


def deployment(options: DeployOptions, image: str, gpus: int, manifest_sha256: str) -> dict[str, Any]:
    storage = options.storage
    container: dict[str, Any] = {
        "name": "tritonserver",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": [BINARY],
        "args": container_args(storage.model_repository),
        "ports": [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in PORTS.items()],
        "resources": resources(options, gpus),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        # loading every model may take minutes: the other probes start once this one passes (30 x 10 s)
        "startupProbe": _probe("/v2/health/ready", 10, 30),
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}],
    }
    volumes: list[dict[str, Any]] = [  # the Python backend exchanges tensors through /dev/shm (64Mi by default)
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}}]
    if storage.scheme == "pvc":
        mount = {"name": VOLUME, "mountPath": CONTAINER_REPOSITORY, "readOnly": True}
        if storage.path:
            mount["subPath"] = storage.path
        container["volumeMounts"].append(mount)
        volumes.append({"name": VOLUME, "persistentVolumeClaim": {"claimName": storage.location, "readOnly": True}})
    elif options.storage_secret:  # AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION, or GCS keys
        container["envFrom"] = [{"secretRef": {"name": options.storage_secret}}]
    pod: dict[str, Any] = {
        "containers": [container],
        "volumes": volumes,
        # > Triton's 30 s exit timeout, so in-flight requests finish on scale-down and rollouts
        "terminationGracePeriodSeconds": 45,
    }
    if options.service_account:
        pod["serviceAccountName"] = options.service_account
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(options),
        "spec": {
            "replicas": options.min_replicas,
            "selector": {"matchLabels": selector(options)},
            # a new pod is READY (every model loaded) before an old one goes
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                # a rebuilt repository changes this annotation, so 'kubectl apply -k' rolls the pods
                "metadata": {"labels": labels(options), "annotations": {ANNOTATION_MANIFEST: manifest_sha256}},
                "spec": pod,
            },
        },
    }


def service(options: DeployOptions) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(options),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(options),
            "ports": [{"name": name, "port": port, "targetPort": name, "protocol": "TCP"}
                      for name, port in PORTS.items()],
        },
    }


def autoscaler(options: DeployOptions) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(options),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": options.name},
            "minReplicas": options.min_replicas,
            "maxReplicas": options.max_replicas,
            # the HPA follows the metric asking for most replicas; when the custom metric is
            # unavailable (no prometheus-adapter) it still scales up on CPU
            "metrics": [
                {"type": "Pods", "pods": {"metric": {"name": QUEUE_METRIC},
                                          "target": {"type": "AverageValue",
                                                     "averageValue": str(options.queue_target_us)}}},
                {"type": "Resource", "resource": {"name": "cpu", "target": {
                    "type": "Utilization", "averageUtilization": options.cpu_target_percent}}},
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def disruption_budget(options: DeployOptions) -> dict[str, Any]:
    # maxUnavailable (not minAvailable): with one replica a node drain still goes through
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": metadata(options),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(options)}}}


def service_monitor(options: DeployOptions) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": metadata(options),
        "spec": {
            "selector": {"matchLabels": selector(options)},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        },
    }


def prometheus_rule(options: DeployOptions, rules_file: Path) -> dict[str, Any]:
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": metadata(options),
            "spec": {"groups": load_alert_rules(rules_file)}}


def volume_claim(options: DeployOptions) -> dict[str, Any]:
    meta = metadata(options, options.storage.location)
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta,
            "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": options.volume_size}}}}


def loader_pod(options: DeployOptions) -> dict[str, Any]:
    """A pod that mounts the claim read-write, for ``kubectl cp`` of the repository onto it."""
    meta = metadata(options, f"{options.name}-repository-loader")
    # not the server's selector labels: the Service and the PodDisruptionBudget must not pick it up
    meta["labels"] = {"app.kubernetes.io/name": "tritonfleet-repository-loader", "app.kubernetes.io/instance": options.name,
                      "app.kubernetes.io/managed-by": "tritonfleet"}
    path = f"{CONTAINER_REPOSITORY}/{options.storage.path}" if options.storage.path else CONTAINER_REPOSITORY
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "loader", "image": "busybox:1.36", "command": ["sh", "-c", f"mkdir -p {path} && "
                                                                                       "sleep 3600"],
                            "volumeMounts": [{"name": VOLUME, "mountPath": CONTAINER_REPOSITORY}]}],
            "volumes": [{"name": VOLUME, "persistentVolumeClaim": {"claimName": options.storage.location}}],
        },
    }
