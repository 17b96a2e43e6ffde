"""Plan a deployment of a repository and write it as a kustomize folder, all or nothing.

:func:`plan` reads the repository (:mod:`.facts`), checks the options against it (a GPU
count on a CPU-only repository, a local-target repository on the NGC image, ...) and returns
the files to write; :func:`write` stages them in a temporary folder beside ``out`` and moves
it into place, so a failure never leaves a half-written folder. Both platforms get a
``kustomization.yaml``, so ``kubectl apply -k DIR`` applies either.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tritonfleet.builder.errors import DeployError
from tritonfleet.builder.lifecycle.deploy import k8s, kserve
from tritonfleet.builder.lifecycle.deploy.facts import NGC_IMAGE, RepositoryFacts, ngc_tag, read_facts
from tritonfleet.builder.lifecycle.deploy.monitoring import adapter_rule
from tritonfleet.builder.lifecycle.deploy.options import DeployOptions

Platform = Literal["k8s", "kserve"]
PLATFORMS = ("k8s", "kserve")
MARKER = ".tritonfleet-deploy"          # marks a folder this module wrote (and may replace)
KUSTOMIZATION = "kustomization.yaml"
ADAPTER_VALUES = "prometheus-adapter-values.yaml"
LOADER = "repository-loader.yaml"


@dataclass
class Plan:
    platform: str
    files: dict[str, Any]                 # file name -> one object (dict) or a text
    resources: list[str]                  # files kustomize applies, in order
    notes: list[str] = field(default_factory=list)
    image: str | None = None
    gpus: int = 0


def _gpus(options: DeployOptions, facts: RepositoryFacts) -> int:
    if options.gpus is None:
        return 1 if facts.gpu_models else 0
    if options.gpus > 0 and not facts.gpu_models:
        built = f" (built for target local: {', '.join(facts.local_pipelines)})" if facts.local_pipelines else ""
        raise DeployError(f"--gpus {options.gpus}: no model of {facts.path} runs on a GPU{built}; every instance "
                          "group is KIND_CPU. Rebuild with 'tritonfleet build SPEC --target ngc' (serving.device: gpu) "
                          "or deploy with --gpus 0")
    if options.gpus == 0 and facts.gpu_models:
        raise DeployError(f"--gpus 0: {', '.join(facts.gpu_models[:5])} have KIND_GPU instance groups and would not "
                          "load without a GPU; deploy with --gpus 1 or rebuild with serving.device: cpu")
    return options.gpus


def _image(platform: str, options: DeployOptions, facts: RepositoryFacts) -> tuple[str | None, str | None]:
    """(container image for k8s, KServe runtimeVersion)."""
    if platform == "kserve" and options.image:
        raise DeployError("--image is for 'deploy k8s'; KServe runs its own Triton runtime and picks the NGC tag "
                          "with runtimeVersion")
    if facts.local_pipelines and not options.image:
        extra = "" if platform == "kserve" else (", or pass --image with an image whose Python has onnxruntime "
                                                 "and numpy<2")
        raise DeployError(f"pipelines {', '.join(facts.local_pipelines)} of {facts.path} were built for target local: "
                          "their members run onnxruntime inside Python-backend models, which the NGC image lacks. "
                          f"Rebuild with 'tritonfleet build SPEC --target ngc'{extra}")
    if options.image:
        return options.image, None
    if facts.triton_version is None:
        raise DeployError(f"{facts.path}: the manifest records no Triton (tritonclient) version; pass --image")
    tag = ngc_tag(facts.triton_version)
    return f"{NGC_IMAGE}:{tag}", tag


def plan(platform: Platform, repository: Path, options: DeployOptions) -> Plan:
    if platform not in PLATFORMS:
        raise DeployError(f"unknown platform '{platform}'; use one of {', '.join(PLATFORMS)}")
    facts = read_facts(repository)
    image, runtime_version = _image(platform, options, facts)
    gpus = _gpus(options, facts)
    notes = []
    if facts.engines:
        versions = sorted(set(facts.engines.values()))
        notes.append(f"TensorRT engines ({', '.join(sorted(facts.engines))}) were built with TensorRT "
                     f"{', '.join(versions)}: the image must have the same TensorRT version")
    if platform == "kserve":
        if options.storage_secret:
            raise DeployError("--storage-secret is for 'deploy k8s'; KServe reads storage credentials from the "
                              "secrets of --service-account")
        if options.alert_rules:
            raise DeployError("--alert-rules is for 'deploy k8s' (a PrometheusRule beside the ServiceMonitor)")
        rollouts = [f"{r.model} v{r.previous}->v{r.serving}" for r in facts.rollouts]
        percent = options.canary_traffic_percent
        if percent is None and rollouts:
            percent = kserve.DEFAULT_CANARY_PERCENT
        if rollouts:
            notes.append(f"rolls out {', '.join(rollouts)}: canaryTrafficPercent {percent}")
        isvc = kserve.inference_service(options, runtime_version, gpus, rollouts, percent)
        files = {"inferenceservice.yaml": isvc}
        result = Plan(platform, files, ["inferenceservice.yaml"], notes, f"{NGC_IMAGE}:{runtime_version}", gpus)
    else:
        if options.canary_traffic_percent is not None:
            raise DeployError("--canary-traffic-percent is for 'deploy kserve'; a Deployment rolls pods one by one")
        files: dict[str, Any] = {
            "deployment.yaml": k8s.deployment(options, image, gpus, facts.manifest_sha256),
            "service.yaml": k8s.service(options),
            "pdb.yaml": k8s.disruption_budget(options),
            "servicemonitor.yaml": k8s.service_monitor(options),
        }
        if options.max_replicas > options.min_replicas:
            files["hpa.yaml"] = k8s.autoscaler(options)
        else:
            notes.append(f"--max-replicas {options.max_replicas} = --min-replicas: no HorizontalPodAutoscaler")
        if options.alert_rules:
            files["prometheusrule.yaml"] = k8s.prometheus_rule(options, options.alert_rules)
        if options.storage.scheme == "pvc":
            files["pvc.yaml"] = k8s.volume_claim(options)
        resources = list(files)
        if options.storage.scheme == "pvc":
            files[LOADER] = k8s.loader_pod(options)
        files[ADAPTER_VALUES] = {"rules": {"custom": [adapter_rule(options.namespace)]}}
        result = Plan(platform, files, resources, notes, image, gpus)
    kustomization: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization"}
    if options.namespace:
        kustomization["namespace"] = options.namespace
    kustomization["resources"] = result.resources
    result.files[KUSTOMIZATION] = kustomization
    return result


def dump(obj: Any) -> str:
    return obj if isinstance(obj, str) else yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


def write(result: Plan, out: Path) -> Path:
    """Write ``result`` into ``out`` (replacing an earlier deploy folder, never anything else)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise DeployError(f"--out {out}: exists and was not written by 'tritonfleet deploy'; choose an empty or new "
                          "folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for name, obj in result.files.items():
            (staging / name).write_text(dump(obj), encoding="utf-8")
        (staging / MARKER).write_text(f"{result.platform}\n", encoding="utf-8")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def load_objects(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Every YAML file of a deploy folder: file name -> its objects."""
    out = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        out[path.name] = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    return out
