"""Shared fixtures: trained digits models, built repositories and a real tritonserver.

Everything heavy is session-scoped and built once: the four example CNNs are trained
into a temporary folder (seconds), the committed ``ensemble_configs/digits.yaml`` is
rewritten to point there, and repositories are built from it for both targets. The
``triton`` fixture runs the real tritonserver from nvidia-pytriton on free ports; when a
test using it fails, the server log's tail is attached to the report.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DIGITS_SPEC = ROOT / "ensemble_configs" / "digits.yaml"


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory) -> Path:
    from examples.digits.train import ensure_trained

    path = tmp_path_factory.mktemp("digits-artifacts")
    ensure_trained(path, progress=False)
    return path


@pytest.fixture(scope="session")
def digits_data(artifacts) -> dict[str, np.ndarray]:
    return dict(np.load(artifacts / "digits.npz"))


def digits_spec_dict(artifacts: Path, output_dir: Path) -> dict:
    """The committed digits spec, with its files pointed at ``artifacts``."""
    raw = yaml.safe_load(DIGITS_SPEC.read_text())
    for m in [*raw["members"], *raw.get("baselines", [])]:
        m["model"]["checkpoint"] = str(artifacts / Path(m["model"]["checkpoint"]).name)
    raw["data"]["path"] = str(artifacts / "digits.npz")
    raw["output_dir"] = str(output_dir)
    return raw


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


def _build(tmp_path_factory, artifacts, target: str):
    from builder.build import build
    from builder.specs import load_spec

    root = tmp_path_factory.mktemp(f"repo-{target}")
    spec_path = write_spec(root / "digits.yaml", digits_spec_dict(artifacts, root / "model_repository"))
    spec = load_spec(spec_path)
    return spec, build(spec, target=target, spec_path=spec_path, progress=False)


@pytest.fixture(scope="session")
def local_build(tmp_path_factory, artifacts):
    return _build(tmp_path_factory, artifacts, "local")


@pytest.fixture(scope="session")
def ngc_build(tmp_path_factory, artifacts):
    return _build(tmp_path_factory, artifacts, "ngc")


@pytest.fixture(scope="session")
def triton(local_build, tmp_path_factory):
    """The real tritonserver serving the local digits repository."""
    from clients.server import TritonServer

    _, result = local_build
    log = tmp_path_factory.mktemp("server") / "tritonserver.log"
    with TritonServer(result.repository, log_path=log) as server:
        yield server


@pytest.fixture(scope="session")
def torch_models(local_build):
    """name -> PyTorch module of every member and baseline (the reference)."""
    from builder.loaders import load_torch_model

    spec, _ = local_build
    return {m.name: load_torch_model(m.model) for m in spec.all_models}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    server = item.funcargs.get("triton") if hasattr(item, "funcargs") else None
    if report.when == "call" and report.failed and server is not None:
        report.sections.append(("tritonserver log (tail)", server.logs(tail=80)))
