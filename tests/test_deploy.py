"""tritonfleet deploy: generated Kubernetes/KServe objects, checked offline, and the container's
command line run on the real bundled tritonserver.

Offline: every object through kubernetes-validate --strict (pinned Kubernetes version), the
InferenceService through the strict schema read from KServe's SDK, PromQL through promtool and
promql-parser, references between objects. Each check is also shown to fail on a broken object.
Runtime: the Deployment's exact command line (paths and ports substituted) starts the bundled
tritonserver on the session's local repository; the probes answer 200 and the metrics endpoint
has every series the HPA rule and the alert rules read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tritonfleet.builder.cli import main
from tritonfleet.builder.errors import DeployError
from tritonfleet.builder.lifecycle.deploy import promql
from tritonfleet.builder.lifecycle.deploy.bundle import load_objects
from tritonfleet.builder.lifecycle.deploy.check import check_folder
from tritonfleet.builder.lifecycle.deploy.command import container_args, local_values, substitute
from tritonfleet.builder.lifecycle.deploy.facts import ngc_tag
from tritonfleet.builder.lifecycle.deploy.kserve_schema import validate_inference_service
from tritonfleet.builder.lifecycle.deploy.monitoring import QUEUE_SERIES, SUCCESS_SERIES, adapter_rule, render_adapter_query
from tritonfleet.builder.lifecycle.deploy.options import DeployOptions, parse_storage
from tritonfleet.clients.server import ServerConfig

ALERT_RULES = Path(__file__).parent / "data" / "deploy" / "alert_rules.yaml"


def deploy(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(["deploy", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def objects(folder: Path) -> dict[str, dict]:
    """kind -> the (first) object of that kind in a deploy folder."""
    return {o["kind"]: o for objs in load_objects(folder).values() for o in objs if "kind" in o}


@pytest.fixture(scope="module")
def k8s_folder(ngc_build, tmp_path_factory) -> Path:
    _, result = ngc_build
    out = tmp_path_factory.mktemp("deploy") / "k8s"
    assert main(["deploy", "k8s", str(result.repository), "--out", str(out), "--alert-rules", str(ALERT_RULES),
                 "--namespace", "serving", "--max-replicas", "4"]) == 0
    return out


# ---------------------------------------------------------------------------- pieces, no repository
def test_the_container_runs_the_flags_tritonfleet_serve_uses():
    args = container_args("/models")
    assert args == ServerConfig("/models", host="0.0.0.0", http_port=8000, grpc_port=8001, metrics_port=8002,
                                model_control_mode="explicit").to_args()
    assert "--model-control-mode=explicit" in args and "--load-model=*" in args
    assert container_args("s3://bucket/digits")[0] == "--model-repository=s3://bucket/digits"
    local = substitute(args, local_values("/tmp/repo", "127.0.0.1", {"http": 1, "grpc": 2, "metrics": 3}))
    assert local[:3] == ["--model-repository=/tmp/repo", "--http-address=127.0.0.1", "--http-port=1"]
    assert [a for a in local if a not in args] == [a for a in local if a.split("=")[0] in
                                                   ("--model-repository", "--http-address", "--http-port",
                                                    "--grpc-address", "--grpc-port", "--metrics-address",
                                                    "--metrics-port")]
    with pytest.raises(DeployError, match="--backend-directory"):
        substitute(args, {"--backend-directory": "/x"})


@pytest.mark.parametrize("text, scheme, location, path, repository", [
    ("pvc://models", "pvc", "models", "", "/models"),
    ("pvc://models/digits/v3", "pvc", "models", "digits/v3", "/models"),
    ("s3://bucket/triton/digits", "s3", "bucket", "triton/digits", "s3://bucket/triton/digits"),
    ("gs://bucket/repo/", "gs", "bucket", "repo", "gs://bucket/repo"),
])
def test_storage_uris(text, scheme, location, path, repository):
    storage = parse_storage(text)
    assert (storage.scheme, storage.location, storage.path, storage.model_repository) == (scheme, location, path,
                                                                                          repository)


@pytest.mark.parametrize("text, message", [
    ("ftp://host/repo", "unknown storage scheme 'ftp'; use pvc://CLAIM[/PATH], s3://BUCKET/PATH or gs://BUCKET/PATH"),
    ("models", "not a URI"),
    ("s3://", "no bucket named"),
    ("pvc://Bad_Claim", "not a valid claim name"),
    ("pvc://models/../etc", "'..' is not allowed"),
])
def test_bad_storage_is_one_clear_error(text, message):
    with pytest.raises(DeployError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)").replace(".", r"\.").replace("*", r"\*")):
        parse_storage(text)


@pytest.mark.parametrize("changes, message", [
    ({"min_replicas": 0}, "--min-replicas 0: must be >= 1"),
    ({"min_replicas": 3, "max_replicas": 2}, r"--max-replicas 2: must be >= --min-replicas \(3\)"),
    ({"name": "Triton_1"}, "--name 'Triton_1': must be a DNS label"),
    ({"memory": "lots"}, "--memory 'lots': not a positive Kubernetes quantity"),
    ({"storage_secret": "creds"}, "--storage-secret creds: a PVC needs no credentials"),
])
def test_bad_options_are_one_clear_error(changes, message):
    with pytest.raises(DeployError, match=message):
        DeployOptions(**changes)


def test_ngc_tags_follow_the_triton_release():
    assert ngc_tag("2.51.0") == "24.10-py3"
    with pytest.raises(DeployError, match="no NGC container known for Triton 2.99.0"):
        ngc_tag("2.99.0")


def test_the_adapter_rule_derives_queue_time_per_request():
    rule = adapter_rule("serving")
    query = render_adapter_query(rule["metricsQuery"])
    assert promql.series(query) == {QUEUE_SERIES, SUCCESS_SERIES}
    assert promql.series(rule["seriesQuery"]) == {QUEUE_SERIES}
    assert 'namespace="serving"' in rule["seriesQuery"]
    assert promql.promtool_check([{"name": "g", "rules": [{"record": "x:y", "expr": query}]}]) == []
    with pytest.raises(ValueError):
        promql.series("sum(rate(nv_inference_request_success[1m])")


def test_the_kserve_schema_rejects_what_kserve_does_not_define():
    isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "d"},
            "spec": {"predictor": {"model": {"modelFormat": {"name": "triton"}, "storageUri": "s3://b/r"}}}}
    assert validate_inference_service(isvc) == []
    isvc["spec"]["predictor"]["canaryTrafficPercnt"] = 10
    isvc["spec"]["predictor"]["model"]["storageUri"] = 3
    del isvc["spec"]["predictor"]["model"]["modelFormat"]
    assert validate_inference_service(isvc) == [
        "spec.predictor: Additional properties are not allowed ('canaryTrafficPercnt' was unexpected)",
        "spec.predictor.model: 'modelFormat' is a required property",
        "spec.predictor.model.storageUri: 3 is not of type 'string'",
    ]


# ---------------------------------------------------------------------------- k8s on the ngc repository
def test_k8s_objects_pass_every_offline_check(k8s_folder):
    report = check_folder(k8s_folder, require_promtool=True)
    assert report.problems == []
    checked = "\n".join(report.checked)
    for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "PersistentVolumeClaim",
                 "Pod"):
        assert f"{kind}/" in checked and "kubernetes-validate --strict 1.33.0" in checked, kind
    assert "PrometheusRule/tritonfleet: PromQL parsed, promtool check rules" in checked
    assert {QUEUE_SERIES, SUCCESS_SERIES, "nv_inference_request_failure",
            "nv_inference_pending_request_count"} == report.series
    assert report.labels == {"model", "namespace", "pod"}


def test_k8s_deployment_matches_the_repository(k8s_folder, ngc_build):
    found = objects(k8s_folder)
    pod = found["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"   # manifest: tritonclient 2.51
    assert container["command"] == ["tritonserver"] and container["args"] == container_args("/models")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"   # ngc members have KIND_GPU instances
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert {p["name"]: p["port"] for p in found["Service"]["spec"]["ports"]} == {"http": 8000, "grpc": 8001,
                                                                                 "metrics": 8002}
    hpa = found["HorizontalPodAutoscaler"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 4)
    assert [m["type"] for m in hpa["metrics"]] == ["Pods", "Resource"]
    rules = yaml.safe_load(ALERT_RULES.read_text())["groups"]
    assert found["PrometheusRule"]["spec"]["groups"] == rules
    assert yaml.safe_load((k8s_folder / "kustomization.yaml").read_text())["namespace"] == "serving"


def test_the_checks_catch_broken_objects(k8s_folder, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(k8s_folder, broken)
    deployment = yaml.safe_load((broken / "deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = "health"
    deployment["spec"]["replica"] = 2                                    # misspelt: strict schema
    (broken / "deployment.yaml").write_text(yaml.safe_dump(deployment))
    service = yaml.safe_load((broken / "service.yaml").read_text())
    service["spec"]["selector"]["app.kubernetes.io/instance"] = "other"
    (broken / "service.yaml").write_text(yaml.safe_dump(service))
    rule = yaml.safe_load((broken / "prometheusrule.yaml").read_text())
    rule["spec"]["groups"][0]["rules"][0]["expr"] = "rate(nv_inference_request_success[5m)"
    rule["spec"]["groups"][0]["rules"][1]["for"] = "five minutes"
    (broken / "prometheusrule.yaml").write_text(yaml.safe_dump(rule))
    (broken / "extra.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                                                      "metadata": {"name": "x"}}))
    problems = "\n".join(check_folder(broken, require_promtool=True).problems)
    assert "kustomization.yaml: does not list 'extra.yaml'" in problems
    assert "deployment.yaml Deployment/tritonfleet: spec: Additional properties are not allowed ('replica'" in problems
    assert "livenessProbe uses port 'health', which the container does not name" in problems
    assert "Service/tritonfleet: spec.selector does not select the Deployment's pods" in problems
    assert "TritonQueueTimeHigh: not PromQL" in problems
    assert "promtool:" in problems and "five minutes" in problems


def test_cli_check_passes_and_names_each_check(ngc_build, tmp_path, capsys):
    _, result = ngc_build
    code, out, err = deploy(["k8s", str(result.repository), "--out", str(tmp_path / "d"), "--storage",
                             "s3://bucket/digits", "--storage-secret", "s3-credentials", "--check"], capsys)
    assert code == 0, out + err
    assert "all checks passed (Kubernetes 1.33.0)" in " ".join(out.split())
    container = objects(tmp_path / "d")["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][0] == "--model-repository=s3://bucket/digits"
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert "PersistentVolumeClaim" not in objects(tmp_path / "d")


# ---------------------------------------------------------------------------- KServe
def test_kserve_inference_service_passes_the_kserve_schema(ngc_build, tmp_path, capsys):
    _, result = ngc_build
    out = tmp_path / "isvc"
    code, text, err = deploy(["kserve", str(result.repository), "--out", str(out), "--storage", "gs://b/digits",
                              "--min-replicas", "2", "--check"], capsys)
    assert code == 0, text + err
    isvc = objects(out)["InferenceService"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": "triton"} and model["protocolVersion"] == "v2"
    assert model["storageUri"] == "gs://b/digits" and model["runtimeVersion"] == "24.10-py3"
    assert "canaryTrafficPercent" not in isvc["spec"]["predictor"]   # every model serves its only version
    assert "InferenceService/tritonfleet: KServe SDK schema (strict)" in " ".join(text.split())


def test_kserve_canary_when_a_newer_version_rolls_out(ngc_build, tmp_path, capsys):
    _, result = ngc_build
    repo = tmp_path / "repo"
    shutil.copytree(result.repository, repo)
    shutil.copytree(repo / "cnn_small_a" / "1", repo / "cnn_small_a" / "2")   # a rebuild's new version
    code, text, err = deploy(["kserve", str(repo), "--out", str(tmp_path / "a"), "--check"], capsys)
    assert code == 0, text + err
    isvc = objects(tmp_path / "a")["InferenceService"]
    assert isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert isvc["metadata"]["annotations"]["tritonfleet.io/rollout"] == "cnn_small_a v1->v2"
    assert main(["rollback", str(repo), "cnn_small_a", "--to", "1"]) == 0   # serve v1 again: nothing rolls out
    capsys.readouterr()
    code, text, err = deploy(["kserve", str(repo), "--out", str(tmp_path / "b"), "--canary-traffic-percent", "0"],
                             capsys)
    assert code == 0, text + err
    assert objects(tmp_path / "b")["InferenceService"]["spec"]["predictor"]["canaryTrafficPercent"] == 0


# ---------------------------------------------------------------------------- errors
@pytest.mark.parametrize("extra, message", [
    (["--min-replicas", "0"], "tritonfleet deploy: error: argument --min-replicas: must be >= 1, got '0'"),
    (["--storage", "ftp://host/repo"], "error: --storage ftp://host/repo: unknown storage scheme 'ftp'; use "
                                       "pvc://CLAIM[/PATH], s3://BUCKET/PATH or gs://BUCKET/PATH"),
    (["--gpus", "0"], "have KIND_GPU instance groups and would not load without a GPU"),
    (["--min-replicas", "3", "--max-replicas", "2"], "error: --max-replicas 2: must be >= --min-replicas (3)"),
    (["--canary-traffic-percent", "5"], "error: --canary-traffic-percent is for 'deploy kserve'"),
    (["--check", "--kubernetes-version", "1.2"], "error: --kubernetes-version 1.2: not a version kubernetes-validate "
                                                 "knows (1.25.0 .. 1.37.0)"),
])
def test_bad_deploy_options_are_one_clear_error(ngc_build, tmp_path, capsys, extra, message):
    _, result = ngc_build
    out = tmp_path / "out"
    code, text, err = deploy(["k8s", str(result.repository), "--out", str(out), *extra], capsys)
    assert code == 2
    err = " ".join(err.split())
    assert message in err and "Traceback" not in err, err
    assert not out.exists()   # nothing written


def test_k8s_only_options_are_refused_for_kserve(ngc_build, tmp_path, capsys):
    _, result = ngc_build
    out = tmp_path / "out"
    code, _, err = deploy(["kserve", str(result.repository), "--out", str(out), "--alert-rules", str(ALERT_RULES)],
                          capsys)
    assert code == 2 and not out.exists()
    assert "error: --alert-rules is for 'deploy k8s'" in err


def test_a_gpu_count_on_a_cpu_only_repository_is_refused(local_build, tmp_path, capsys):
    _, result = local_build
    out = tmp_path / "out"
    code, _, err = deploy(["k8s", str(result.repository), "--out", str(out), "--image", "my/triton:cpu",
                           "--gpus", "1"], capsys)
    assert code == 2 and not out.exists()
    assert "error: --gpus 1: no model of" in err and "runs on a GPU (built for target local: " in " ".join(err.split())
    code, _, err = deploy(["k8s", str(result.repository), "--out", str(out)], capsys)
    assert code == 2 and not out.exists()
    assert "were built for target local" in " ".join(err.split()) and "--target ngc" in " ".join(err.split())


def test_an_existing_foreign_folder_is_not_overwritten(ngc_build, tmp_path, capsys):
    _, result = ngc_build
    (tmp_path / "mine.txt").write_text("keep")
    code, _, err = deploy(["k8s", str(result.repository), "--out", str(tmp_path)], capsys)
    assert code == 2 and "was not written by 'tritonfleet deploy'" in " ".join(err.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


# ---------------------------------------------------------------------------- runtime, real tritonserver
@pytest.mark.server
def test_the_generated_command_line_serves_the_repository(local_build, tmp_path):
    """The Deployment's command line on the bundled tritonserver: probes 200, every queried series exposed."""
    from tritonfleet.builder.lifecycle.deploy.runtime import run_container_locally

    _, result = local_build
    out = tmp_path / "k8s"
    # the local target needs an image with onnxruntime in its Python; the command line is the same
    assert main(["deploy", "k8s", str(result.repository), "--out", str(out), "--image", "example/triton-ort:24.10",
                 "--alert-rules", str(ALERT_RULES)]) == 0
    offline = check_folder(out, require_promtool=True)
    assert offline.problems == []
    report = run_container_locally(out, result.repository, offline.series, offline.labels,
                                   log_path=tmp_path / "server.log")
    container = objects(out)["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    ran = report.argv[1:]
    assert report.argv[0].endswith("/tritonserver")
    assert ran[-1].startswith("--backend-directory=")   # the bundled server's Python backend (NGC: default)
    ports = {a.split("=")[0]: a.split("=")[1] for a in ran if a.split("=")[0].endswith("-port")}
    expected = substitute(container["args"], local_values(str(result.repository.resolve()), "127.0.0.1", {
        "http": int(ports["--http-port"]), "grpc": int(ports["--grpc-port"]),
        "metrics": int(ports["--metrics-port"])}))
    assert ran[:-1] == expected
    assert report.probes == {"/v2/health/live": 200, "/v2/health/ready": 200}
    assert offline.series >= {QUEUE_SERIES, SUCCESS_SERIES}
    assert report.missing == [], f"not on the metrics endpoint: {report.missing}"
    assert offline.labels == {"model", "namespace", "pod"}   # alert rules group by model, the adapter by pod
    assert report.missing_labels == []
    assert report.ok
