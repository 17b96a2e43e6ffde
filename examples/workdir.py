"""The examples' working folder: specs, trained checkpoints, the repository and reports.

The example specs (``ensemble_configs/*.yaml``) ship inside the package; they point at their
checkpoints and data relative to themselves (``../examples/digits/artifacts/...``) and
build into ``../model_repository``. :func:`prepare` lays that out in any folder:

    WORKDIR/ensemble_configs/*.yaml         the example specs (copied if absent; yours are kept)
    WORKDIR/examples/digits/artifacts/      trained checkpoints and the digits data (cached)
    WORKDIR/model_repository/               what the specs build
    WORKDIR/reports/                        what the demo measures

In a clone of the repository the workdir is the clone itself, whose ``ensemble_configs/``
are the same files, so nothing is copied. Nothing is ever written into site-packages.

    python -m tritonfleet.examples.workdir [WORKDIR] [SPEC ...]
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPEC_FOLDER = "ensemble_configs"


def packaged_specs() -> Path:
    """The example specs: package data when installed, the repository's folder in a clone."""
    for candidate in (HERE / SPEC_FOLDER, HERE.parent / SPEC_FOLDER):
        if (candidate / "digits.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"the example specs are missing beside {HERE}; reinstall tritonfleet")


def prepare(workdir: Path) -> Path:
    """Copy the example specs into ``workdir/ensemble_configs`` (missing files only); return it."""
    specs = Path(workdir).resolve() / SPEC_FOLDER
    specs.mkdir(parents=True, exist_ok=True)
    for source in sorted(packaged_specs().glob("*.yaml")):
        target = specs / source.name
        if not target.exists():
            shutil.copyfile(source, target)
    return specs


def artifacts(workdir: Path, example: str = "digits") -> Path:
    """Where an example's checkpoints and data live under ``workdir``."""
    return Path(workdir).resolve() / "examples" / example / "artifacts"


def example_specs(spec_dir: Path, names: list[str] | None = None) -> list[Path]:
    """Spec paths, ``digits.yaml`` first (pattern specs extend it and share its members)."""
    if names:
        return [spec_dir / (n if n.endswith(".yaml") else f"{n}.yaml") for n in names]
    return sorted(spec_dir.glob("*.yaml"), key=lambda p: (p.name != "digits.yaml", p.name))


def build_examples(workdir: Path, names: list[str] | None = None, output_dir: Path | None = None,
                   progress: bool = True) -> dict:
    """Train what the specs need (cached), build them; pipeline name -> BuildResult."""
    from tritonfleet.builder.build import build
    from tritonfleet.builder.spec import load_spec
    from tritonfleet.examples.detection.make import ensure_models
    from tritonfleet.examples.digits.train import ensure_trained

    paths = example_specs(prepare(workdir), names)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        from tritonfleet.builder.errors import SpecError

        known = ", ".join(p.stem for p in example_specs(prepare(workdir)))
        raise SpecError(f"example spec not found: {missing[0]} (examples: {known})")
    ensure_trained(artifacts(workdir, "digits"), progress=progress)
    if any(p.name.startswith("detection") for p in paths):
        ensure_models(artifacts(workdir, "detection"))
    results = {}
    for path in paths:
        spec = load_spec(path)
        results[spec.name] = build(spec, output_dir=output_dir, spec_path=path, progress=progress)
    return results


if __name__ == "__main__":
    args = sys.argv[1:]
    for name, result in build_examples(Path(args[0]) if args else Path("."), args[1:] or None).items():
        print(f"{name:18s} -> {result.repository} ({len(result.models)} models)")
