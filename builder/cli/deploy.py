"""Generate Kubernetes (or KServe) objects that serve a built repository, and check them offline.

'deploy k8s' writes a kustomize folder (kubectl apply -k DIR): Deployment running the NGC
tritonserver image of the repository's Triton version with the flags 'tritonfleet serve'
uses, Service, HorizontalPodAutoscaler on queue time per request (with the
prometheus-adapter rule that derives it) and CPU, PodDisruptionBudget, ServiceMonitor,
PrometheusRule (--alert-rules) and the repository's PVC. 'deploy kserve' writes an
InferenceService (canaryTrafficPercent when the repository rolls out a new version).
--check validates every object offline (exit 1 on a problem). See docs/DEPLOY.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tritonfleet.builder.cli.args import existing_dir, existing_file, non_negative_int, percent, positive_int, subcommand
from tritonfleet.builder.cli.console import console


def register(sub) -> None:
    parser = subcommand(sub, __doc__, "deploy")
    parser.add_argument("platform", choices=("k8s", "kserve"), help="plain Kubernetes objects or a KServe InferenceService")
    parser.add_argument("repository", type=existing_dir, help="a built model repository (with manifest.json)")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (replaces an earlier deploy folder)")
    parser.add_argument("--check", action="store_true", help="validate the written objects offline (exit 1 on a problem)")
    parser.add_argument("--name", default="tritonfleet", help="name of the objects (a DNS label; default tritonfleet)")
    parser.add_argument("--namespace", default=None, help="namespace (default: kubectl's current one)")
    parser.add_argument("--storage", default="pvc://tritonfleet-models",
                        help="where the cluster reads the repository: pvc://CLAIM[/PATH] (default "
                             "pvc://tritonfleet-models), s3://BUCKET/PATH or gs://BUCKET/PATH")
    parser.add_argument("--storage-secret", default=None,
                        help="k8s, s3/gs: secret with the credentials Triton reads from its environment")
    parser.add_argument("--volume-size", default="1Gi", help="k8s, pvc: size of the claim the folder creates")
    parser.add_argument("--service-account", default=None, help="pods' service account (KServe: storage credentials)")
    parser.add_argument("--image", default=None,
                        help="k8s: container image (default: nvcr.io/nvidia/tritonserver:<NGC tag of the repository's "
                             "Triton version>-py3)")
    parser.add_argument("--min-replicas", type=positive_int, default=1, help="replicas at least (default 1)")
    parser.add_argument("--max-replicas", type=positive_int, default=3, help="replicas at most (default 3)")
    parser.add_argument("--gpus", type=non_negative_int, default=None,
                        help="GPUs per pod (default: 1 when a model has KIND_GPU instances, else 0)")
    parser.add_argument("--cpu", default="1", help="CPU request per pod (default 1)")
    parser.add_argument("--memory", default="2Gi", help="memory request and limit per pod (default 2Gi)")
    parser.add_argument("--queue-target-us", type=positive_int, default=1000,
                        help="k8s HPA: average queue time per request to hold, microseconds (default 1000)")
    parser.add_argument("--cpu-target-percent", type=percent, default=80,
                        help="k8s HPA fallback: CPU utilisation to hold (default 80)")
    parser.add_argument("--alert-rules", type=existing_file, default=None,
                        help="k8s: Prometheus rules file (tritonfleet monitor --alert-rules) to deploy as a PrometheusRule")
    parser.add_argument("--canary-traffic-percent", type=percent, default=None,
                        help="kserve: share of traffic for the new revision (default: 10 when the repository serves "
                             "a newer version of a model than one it holds, else none)")
    parser.add_argument("--kubernetes-version", default=None,
                        help="Kubernetes version the --check validates against (default: the pinned one)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.markup import escape

    from tritonfleet.builder.errors import DeployError
    from tritonfleet.builder.lifecycle.deploy import bundle
    from tritonfleet.builder.lifecycle.deploy.options import KUBERNETES_VERSION, DeployOptions, parse_storage

    options = DeployOptions(
        name=args.name, namespace=args.namespace, storage=parse_storage(args.storage),
        storage_secret=args.storage_secret, volume_size=args.volume_size, service_account=args.service_account,
        image=args.image, min_replicas=args.min_replicas, max_replicas=args.max_replicas, gpus=args.gpus,
        cpu=args.cpu, memory=args.memory, queue_target_us=args.queue_target_us,
        cpu_target_percent=args.cpu_target_percent, alert_rules=args.alert_rules,
        canary_traffic_percent=args.canary_traffic_percent,
    )
    version = args.kubernetes_version or KUBERNETES_VERSION
    if args.kubernetes_version is not None or args.check:
        from tritonfleet.builder.lifecycle.deploy.check import require_checkers

        require_checkers()
        from kubernetes_validate.utils import all_versions

        known = sorted(set(all_versions()), key=lambda v: tuple(int(p) for p in v.split(".")))
        if version not in known:
            raise DeployError(f"--kubernetes-version {version}: not a version kubernetes-validate knows "
                              f"({known[0]} .. {known[-1]})")
    plan = bundle.plan(args.platform, args.repository, options)
    out = bundle.write(plan, args.out)
    shown = console()
    shown.print(f"[bold]{args.platform}[/] objects for {args.repository} -> {out}")
    if plan.image:
        shown.print(f"  image   {plan.image}   GPUs per pod: {plan.gpus}")
    for name in plan.resources:
        shown.print(f"  {escape(name)}")
    for note in plan.notes:
        shown.print(f"  [yellow]note[/] {escape(note)}")
    if not args.check:
        shown.print(f"apply with: kubectl apply -k {out}")
        return 0
    from tritonfleet.builder.lifecycle.deploy.check import check_folder

    report = check_folder(out, version)
    for line in report.checked:
        shown.print(f"  [green]ok[/] {escape(line)}")
    for note in report.notes:
        shown.print(f"  [yellow]note[/] {escape(note)}")
    for problem in report.problems:
        shown.print(f"  [red]problem[/] {escape(problem)}")
    status = "[green]all checks passed[/]" if report.ok else f"[red]{len(report.problems)} problem(s)[/]"
    shown.print(f"{out}: {status} (Kubernetes {version})")
    return 0 if report.ok else 1
