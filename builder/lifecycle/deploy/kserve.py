"""A KServe InferenceService for a repository: Triton's model format, the v2 protocol, its storage.

KServe's built-in Triton runtime serves ``modelFormat: triton``; ``runtimeVersion`` picks
the NGC image tag of the repository's Triton version. Each change of ``storageUri`` (a new
snapshot of the repository) is a new revision; when the repository rolls out a newer
version of a model over one it still holds (after ``tritonfleet promote``, or a rebuild),
``canaryTrafficPercent`` sends only that share of the traffic to the new revision and the
rest to the last one rolled out. Raising it to 100 finishes the rollout; 0 rolls back.
"""

from __future__ import annotations

from typing import Any

from tritonfleet.builder.lifecycle.deploy.k8s import metadata, resources
from tritonfleet.builder.lifecycle.deploy.options import DeployOptions

API_VERSION = "serving.kserve.io/v1beta1"
DEFAULT_CANARY_PERCENT = 10
ANNOTATION_ROLLOUT = "tritonfleet.io/rollout"


def inference_service(options: DeployOptions, runtime_version: str, gpus: int, rollouts: list[str],
                      canary_percent: int | None) -> dict[str, Any]:
    meta = metadata(options)
    if rollouts:
        meta["annotations"] = {ANNOTATION_ROLLOUT: ", ".join(rollouts)}
    predictor: dict[str, Any] = {
        "minReplicas": options.min_replicas,
        "maxReplicas": options.max_replicas,
        "model": {
            "modelFormat": {"name": "triton"},
            "protocolVersion": "v2",
            "runtimeVersion": runtime_version,
            "storageUri": options.storage.uri,
            "resources": resources(options, gpus),
        },
    }
    if canary_percent is not None:
        predictor["canaryTrafficPercent"] = canary_percent
    if options.service_account:  # KServe reads s3/gs credentials from the service account's secrets
        predictor["serviceAccountName"] = options.service_account
    return {"apiVersion": API_VERSION, "kind": "InferenceService", "metadata": meta, "spec": {"predictor": predictor}}
