"""Offline checks of a deploy folder: every object against its schema, the objects against each other.

* Kubernetes objects: ``kubernetes-validate --strict`` for the pinned Kubernetes version
  (unknown fields fail, as they would with ``kubectl apply --validate=strict``).
* The InferenceService: the strict schema read from KServe's SDK (:mod:`.kserve_schema`).
* PromQL: alert rules and the prometheus-adapter query parsed (:mod:`.promql`), rule files
  through ``promtool check rules``; the series they read are collected for the runtime check.
* References: the Service, PodDisruptionBudget and ServiceMonitor select the Deployment's pods,
  named ports and probe ports exist, the HPA scales the Deployment on the metric the adapter
  rule defines, kustomization lists every object file and only files that exist (and, where
  kubectl is installed, ``kubectl kustomize`` builds them offline).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tritonfleet.builder.lifecycle.deploy import promql
from tritonfleet.builder.lifecycle.deploy.bundle import ADAPTER_VALUES, KUSTOMIZATION, LOADER, load_objects
from tritonfleet.builder.lifecycle.deploy.monitoring import render_adapter_query
from tritonfleet.builder.lifecycle.deploy.options import KUBERNETES_VERSION
from tritonfleet.clients.errors import MissingDependencyError

CORE_GROUPS = ("v1", "apps/v1", "autoscaling/v2", "policy/v1")


@dataclass
class CheckReport:
    folder: Path
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)   # what passed which check
    series: set[str] = field(default_factory=set)      # metric series the HPA rule and alert rules read
    labels: set[str] = field(default_factory=set)      # label names they match on or group by
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _name(obj: dict[str, Any]) -> str:
    return f"{obj.get('kind', '?')}/{(obj.get('metadata') or {}).get('name', '?')}"


def _kubernetes(obj: dict[str, Any], version: str) -> list[str]:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path) or "(top)"
        return [f"{where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [f"no schema for {exc.kind} {exc.api_version} in Kubernetes {version}"]
    return []


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


class _Checker:
    def __init__(self, folder: Path, kubernetes_version: str, kserve_sdk: Path | None, require_promtool: bool):
        self.report = CheckReport(Path(folder))
        self.version = kubernetes_version
        self.kserve_sdk = kserve_sdk
        self.require_promtool = require_promtool

    def problem(self, where: str, message: str) -> None:
        self.report.problems.append(f"{where}: {message}")

    def run(self) -> CheckReport:
        files = load_objects(self.report.folder)
        if KUSTOMIZATION not in files:
            self.problem(KUSTOMIZATION, "missing; not a 'tritonfleet deploy' folder")
            return self.report
        self.kustomization(files)
        objects = {name: objs for name, objs in files.items() if name not in (KUSTOMIZATION, ADAPTER_VALUES)}
        by_kind: dict[str, list[dict[str, Any]]] = {}
        for file, objs in objects.items():
            for obj in objs:
                self.schema(file, obj)
                by_kind.setdefault(obj.get("kind", "?"), []).append(obj)
        self.references(by_kind)
        if ADAPTER_VALUES in files:
            self.adapter(files[ADAPTER_VALUES][0], by_kind)
        return self.report

    # ------------------------------------------------------------------ files
    def kustomization(self, files: dict[str, list]) -> None:
        kustomization = files[KUSTOMIZATION][0]
        listed = kustomization.get("resources") or []
        for name in listed:
            if name not in files:
                self.problem(KUSTOMIZATION, f"lists '{name}', which does not exist")
        unlisted = sorted(set(files) - set(listed) - {KUSTOMIZATION, ADAPTER_VALUES, LOADER})
        for name in unlisted:
            self.problem(KUSTOMIZATION, f"does not list '{name}'")
        if len(set(listed)) != len(listed):
            self.problem(KUSTOMIZATION, "lists a file twice")
        unknown = set(kustomization) - {"apiVersion", "kind", "namespace", "resources"}
        if kustomization.get("kind") != "Kustomization" or unknown:
            self.problem(KUSTOMIZATION, f"not the Kustomization tritonfleet writes (unexpected: {sorted(unknown)})")
        self.report.checked.append(f"{KUSTOMIZATION}: {len(listed)} resources, all present")
        self.kustomize(len(listed))

    def kustomize(self, expected: int) -> None:
        """``kubectl kustomize`` (offline) when kubectl is installed; it is not required."""
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            self.report.notes.append("kubectl not found: the folder was not built with 'kubectl kustomize'")
            return
        try:
            done = subprocess.run([kubectl, "kustomize", str(self.report.folder)], capture_output=True, text=True,
                                  timeout=120)
        except subprocess.TimeoutExpired:
            self.report.notes.append("'kubectl kustomize' did not finish in 120 s; skipped")
            return
        if done.returncode != 0:
            self.problem(KUSTOMIZATION, f"kubectl kustomize failed: {(done.stderr or done.stdout).strip()[:400]}")
            return
        built = [d for d in yaml.safe_load_all(done.stdout) if d]
        if len(built) != expected:
            self.problem(KUSTOMIZATION, f"kubectl kustomize built {len(built)} objects, expected {expected}")
        else:
            self.report.checked.append(f"{KUSTOMIZATION}: kubectl kustomize builds {len(built)} objects")

    # ------------------------------------------------------------------ schemas
    def schema(self, file: str, obj: dict[str, Any]) -> None:
        where = f"{file} {_name(obj)}"
        api = obj.get("apiVersion")
        if api in CORE_GROUPS:
            found = _kubernetes(obj, self.version)
            check = f"kubernetes-validate --strict {self.version}"
        elif obj.get("kind") == "InferenceService":
            from tritonfleet.builder.lifecycle.deploy.kserve_schema import validate_inference_service

            found = validate_inference_service(obj, self.kserve_sdk)
            check = "KServe SDK schema (strict)"
        elif obj.get("kind") == "PrometheusRule" and api == "monitoring.coreos.com/v1":
            found = self.rules((obj.get("spec") or {}).get("groups") or [])
            check = "PromQL parsed" + (", promtool check rules" if promql.promtool() else "")
        elif obj.get("kind") == "ServiceMonitor" and api == "monitoring.coreos.com/v1":
            found = self.service_monitor_shape(obj)
            check = "ServiceMonitor fields"
        else:
            found, check = [f"unexpected object {api} {obj.get('kind')}"], "-"
        for message in found:
            self.problem(where, message)
        if not found:
            self.report.checked.append(f"{where}: {check}")

    def rules(self, groups: list[dict[str, Any]]) -> list[str]:
        found = []
        for where, expr in promql.rule_expressions(groups):
            try:
                self.report.series |= promql.series(expr)
                self.report.labels |= promql.labels(expr)
            except ValueError as exc:
                found.append(f"{where}: not PromQL ({exc}): {expr}")
        # series the file's own recording rules make (tritonfleet monitor's drift rules) are not on the endpoint
        self.report.series -= {r["record"] for g in groups for r in g.get("rules") or [] if r.get("record")}
        if promql.promtool():
            found += [f"promtool: {line}" for line in promql.promtool_check(groups)]
        elif self.require_promtool:
            found.append(f"promtool not found; {promql.PROMTOOL_HINT}")
        else:
            self.report.notes.append(f"promtool not found: rules checked with promql-parser only ({promql.PROMTOOL_HINT})")
        return found

    @staticmethod
    def service_monitor_shape(obj: dict[str, Any]) -> list[str]:
        spec = obj.get("spec") or {}
        found = [f"spec: unexpected field '{k}'" for k in spec if k not in ("selector", "endpoints", "namespaceSelector",
                                                                              "jobLabel")]
        if not isinstance((spec.get("selector") or {}).get("matchLabels"), dict):
            found.append("spec.selector.matchLabels: missing")
        endpoints = spec.get("endpoints")
        if not isinstance(endpoints, list) or not endpoints:
            found.append("spec.endpoints: missing")
        for i, endpoint in enumerate(endpoints or []):
            unknown = set(endpoint) - {"port", "path", "interval", "scrapeTimeout", "scheme"}
            if unknown or not isinstance(endpoint.get("port"), str):
                found.append(f"spec.endpoints[{i}]: needs a named 'port' (unexpected: {sorted(unknown)})")
        return found

    # ------------------------------------------------------------------ references
    def references(self, by_kind: dict[str, list[dict[str, Any]]]) -> None:
        deployments = by_kind.get("Deployment", [])
        if not deployments:
            return
        deployment = deployments[0]
        pod = deployment["spec"]["template"]
        pod_labels = pod["metadata"].get("labels") or {}
        container = pod["spec"]["containers"][0]
        ports = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
        where = f"Deployment/{deployment['metadata']['name']}"
        if not _matches(deployment["spec"]["selector"].get("matchLabels") or {}, pod_labels):
            self.problem(where, "spec.selector does not match the pod template's labels")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            port = ((container.get(probe) or {}).get("httpGet") or {}).get("port")
            if port not in ports:
                self.problem(where, f"{probe} uses port '{port}', which the container does not name")
        mounts = {m["name"] for m in container.get("volumeMounts") or []}
        volumes = {v["name"] for v in pod["spec"].get("volumes") or []}
        if mounts - volumes:
            self.problem(where, f"mounts volumes {sorted(mounts - volumes)} the pod does not define")
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["spec"].get("volumes") or []
                  if "persistentVolumeClaim" in v}
        made = {c["metadata"]["name"] for c in by_kind.get("PersistentVolumeClaim", [])}
        if claims - made:
            self.report.notes.append(f"the claim(s) {sorted(claims - made)} must exist in the cluster")
        service_labels: dict[str, str] = {}
        service_ports: set[str] = set()
        for svc in by_kind.get("Service", []):
            service_labels = svc["metadata"].get("labels") or {}
            if not _matches(svc["spec"].get("selector") or {}, pod_labels):
                self.problem(f"Service/{svc['metadata']['name']}", "spec.selector does not select the Deployment's pods")
            for port in svc["spec"].get("ports") or []:
                service_ports.add(port.get("name"))
                if port.get("targetPort") not in ports and port.get("targetPort") not in ports.values():
                    self.problem(f"Service/{svc['metadata']['name']}",
                                 f"targetPort '{port.get('targetPort')}' is not a container port")
        for pdb in by_kind.get("PodDisruptionBudget", []):
            if not _matches(pdb["spec"]["selector"].get("matchLabels") or {}, pod_labels):
                self.problem(f"PodDisruptionBudget/{pdb['metadata']['name']}", "selects none of the Deployment's pods")
        for pod_obj in by_kind.get("Pod", []):
            if _matches((by_kind.get("Service") or [{}])[0].get("spec", {}).get("selector") or {},
                        pod_obj["metadata"].get("labels") or {}):
                self.problem(f"Pod/{pod_obj['metadata']['name']}", "the Service would send inference traffic to it")
        for monitor in by_kind.get("ServiceMonitor", []):
            name = f"ServiceMonitor/{monitor['metadata']['name']}"
            if not _matches(monitor["spec"]["selector"].get("matchLabels") or {}, service_labels):
                self.problem(name, "selects no Service of this folder")
            for endpoint in monitor["spec"].get("endpoints") or []:
                if endpoint.get("port") not in service_ports:
                    self.problem(name, f"scrapes port '{endpoint.get('port')}', which the Service does not name")
        for hpa in by_kind.get("HorizontalPodAutoscaler", []):
            target = hpa["spec"]["scaleTargetRef"]
            if target.get("kind") != "Deployment" or target.get("name") != deployment["metadata"]["name"]:
                self.problem(f"HorizontalPodAutoscaler/{hpa['metadata']['name']}", "does not scale the Deployment")
            if container.get("resources", {}).get("requests", {}).get("cpu") is None:
                self.problem(f"HorizontalPodAutoscaler/{hpa['metadata']['name']}",
                             "scales on CPU utilisation, but the container requests no CPU")
        self.report.checked.append("references: selectors, named ports, probes, volumes, HPA target")

    def adapter(self, values: dict[str, Any], by_kind: dict[str, list[dict[str, Any]]]) -> None:
        rules = ((values or {}).get("rules") or {}).get("custom") or []
        defined = set()
        for i, rule in enumerate(rules):
            where = f"{ADAPTER_VALUES} rules.custom[{i}]"
            defined.add((rule.get("name") or {}).get("as"))
            for key, text in (("seriesQuery", rule.get("seriesQuery", "")),
                              ("metricsQuery", render_adapter_query(rule.get("metricsQuery", "")))):
                try:
                    self.report.series |= promql.series(text)
                    self.report.labels |= promql.labels(text)
                except ValueError as exc:
                    self.problem(where, f"{key} is not PromQL once rendered ({exc}): {text}")
            if promql.promtool():
                group = [{"name": "adapter", "rules": [{"record": "tritonfleet:adapter_check",
                                                       "expr": render_adapter_query(rule.get("metricsQuery", ""))}]}]
                for line in promql.promtool_check(group):
                    self.problem(where, f"promtool: {line}")
        for hpa in by_kind.get("HorizontalPodAutoscaler", []):
            for metric in hpa["spec"].get("metrics") or []:
                if metric.get("type") == "Pods" and metric["pods"]["metric"]["name"] not in defined:
                    self.problem(f"HorizontalPodAutoscaler/{hpa['metadata']['name']}",
                                 f"scales on '{metric['pods']['metric']['name']}', which no adapter rule defines")
        self.report.checked.append(f"{ADAPTER_VALUES}: {len(rules)} rule(s), PromQL parsed")


def require_checkers() -> None:
    """One clear error when the offline checkers are not installed."""
    import importlib.util

    missing = [name for module, name in (("kubernetes_validate", "kubernetes-validate"), ("jsonschema", "jsonschema"),
                                         ("promql_parser", "promql-parser")) if importlib.util.find_spec(module) is None]
    if missing:
        raise MissingDependencyError(f"tritonfleet deploy --check needs {', '.join(missing)}: "
                                     "pip install 'tritonfleet[deploy]'")


def check_folder(folder: Path, kubernetes_version: str = KUBERNETES_VERSION, *, kserve_sdk: Path | None = None,
                 require_promtool: bool = False) -> CheckReport:
    """Check a folder written by ``tritonfleet deploy`` without a cluster."""
    require_checkers()
    return _Checker(Path(folder), kubernetes_version, kserve_sdk, require_promtool).run()
