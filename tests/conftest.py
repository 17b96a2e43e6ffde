"""Shared fixtures: trained example models, built repositories and a real tritonserver.

Everything heavy is session-scoped and built once: the example models are trained into a
temporary folder (seconds), the committed ``ensemble_configs/*.yaml`` are copied with their
files pointed there, and *all* of them are built into one local repository (pipelines share
their members), which one real tritonserver serves (``triton``; explicit model control, all
models loaded). ``digits.yaml`` is also built for the ngc target. When a test using a server
fails, the server log's tail is attached to the report.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "ensemble_configs"
DIGITS_SPEC = SPECS / "digits.yaml"


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    from tritonfleet.examples.digits.train import ensure_trained

    path = tmp_path_factory.mktemp("digits-artifacts")
    ensure_trained(path, progress=False)
    return path


@pytest.fixture(scope="session")
def digits_data(artifacts) -> dict[str, np.ndarray]:
    return dict(np.load(artifacts / "digits.npz"))


def digits_spec_dict(artifacts: Path, output_dir: Path) -> dict:
    """The committed digits spec, with its files pointed at ``artifacts``; without ``serving.compile``
    (the session repository has the compiled models; the many small builds of other tests need none)."""
    raw = yaml.safe_load(DIGITS_SPEC.read_text())
    raw["serving"].pop("compile", None)
    for m in [*raw["members"], *raw.get("baselines", [])]:
        m["model"]["checkpoint"] = str(artifacts / Path(m["model"]["checkpoint"]).name)
    raw["data"]["path"] = str(artifacts / "digits.npz")
    raw["output_dir"] = str(output_dir)
    return raw


def settled_metrics(url: str, flush_s: float = 0.5, timeout: float = 30.0):
    """A scrape of Triton's metrics once the pipeline models' counters are settled. Pipeline models
    hand their counts to Triton every ``monitoring.flush_s`` seconds, so two scrapes more than that
    apart that agree on every ``tritonfleet_`` series mean no count is still waiting (with no traffic)."""
    from tritonfleet.clients.metrics import scrape

    def ours(snapshot):
        return {name: samples for name, samples in snapshot.samples.items() if name.startswith("tritonfleet_")}

    deadline = time.monotonic() + timeout
    last = scrape(url)
    while True:
        time.sleep(flush_s + 0.3)
        now = scrape(url)
        if ours(now) == ours(last) or time.monotonic() > deadline:
            return now
        last = now


def write_spec(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def spec_factory(artifacts, tmp_path):
    """``spec_factory(**changes)`` -> path of a digits spec YAML with top-level changes."""
    counter = iter(range(1000))

    def make(**changes) -> Path:
        raw = digits_spec_dict(artifacts, tmp_path / "model_repository")
        raw.update(changes)
        return write_spec(tmp_path / f"spec{next(counter)}.yaml", raw)

    return make


@pytest.fixture(scope="session")
def detection_artifacts(tmp_path_factory) -> Path:
    from tritonfleet.examples.detection.make import ensure_models

    return ensure_models(tmp_path_factory.mktemp("detection-artifacts"))


@pytest.fixture(scope="session")
def example_specs(tmp_path_factory, artifacts, detection_artifacts) -> Path:
    """Folder with every committed spec, its files pointed at the test artifacts."""
    folder = tmp_path_factory.mktemp("ensemble_configs")
    repo = folder.parent / f"{folder.name}-repository"
    for spec in SPECS.glob("*.yaml"):
        text = (spec.read_text().replace("../examples/digits/artifacts/", f"{artifacts}/")
                .replace("../examples/detection/artifacts/", f"{detection_artifacts}/")
                .replace("../model_repository", str(repo)))
        (folder / spec.name).write_text(text)
    return folder


@pytest.fixture(scope="session")
def repository(example_specs) -> dict:
    """pipeline name -> (spec, BuildResult) of every example spec, all in one repository."""
    from tritonfleet.builder.build import build
    from tritonfleet.builder.spec import load_spec

    order = ["digits.yaml", *sorted(p.name for p in example_specs.glob("*.yaml") if p.name != "digits.yaml")]
    built = {}
    for name in order:
        spec = load_spec(example_specs / name)
        built[spec.name] = (spec, build(spec, spec_path=example_specs / name, progress=False))
    return built


@pytest.fixture(scope="session")
def local_build(repository):
    return repository["digits"]


@pytest.fixture(scope="session")
def ngc_build(tmp_path_factory, example_specs):
    from tritonfleet.builder.build import build
    from tritonfleet.builder.spec import load_spec

    spec = load_spec(example_specs / "digits.yaml")
    out = tmp_path_factory.mktemp("repo-ngc") / "model_repository"
    return spec, build(spec, target="ngc", output_dir=out, spec_path=example_specs / "digits.yaml", progress=False)


@pytest.fixture(scope="session")
def triton(local_build, tmp_path_factory):
    """The real tritonserver serving every example pipeline (explicit model control)."""
    from tritonfleet.clients.server import TritonServer

    _, result = local_build
    log = tmp_path_factory.mktemp("server") / "tritonserver.log"
    with TritonServer(result.repository, log_path=log, model_control_mode="explicit") as server:
        yield server


@pytest.fixture(scope="session")
def torch_models(local_build):
    """name -> PyTorch module of every member and baseline (the reference)."""
    from tritonfleet.builder.stages.load_torch import load_torch_model

    spec, _ = local_build
    return {m.name: load_torch_model(m.model) for m in spec.all_models}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    from tritonfleet.clients.server import TritonServer

    if report.when == "call" and report.failed:
        for value in getattr(item, "funcargs", {}).values():
            if isinstance(value, TritonServer):
                report.sections.append(("tritonserver log (tail)", value.logs(tail=80)))
