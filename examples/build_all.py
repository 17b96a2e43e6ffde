"""Train the example models and build example specs into one repository (members shared).

    python -m examples.build_all [SPEC ...]     # default: every ensemble_configs/*.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC_DIR = ROOT / "ensemble_configs"


def example_specs(names: list[str] | None = None) -> list[Path]:
    """Spec paths, ``digits.yaml`` first (pattern specs extend it and share its members)."""
    paths = [SPEC_DIR / (n if n.endswith(".yaml") else f"{n}.yaml") for n in names] if names else \
        sorted(SPEC_DIR.glob("*.yaml"), key=lambda p: (p.name != "digits.yaml", p.name))
    return paths


def build_examples(names: list[str] | None = None, output_dir: Path | None = None, progress: bool = True) -> dict:
    """pipeline name -> BuildResult; trains/creates the example models first (cached)."""
    from builder.build import build
    from builder.specs import load_spec
    from examples.detection.make import ensure_models
    from examples.digits.train import ensure_trained

    paths = example_specs(names)
    ensure_trained(progress=progress)
    if any(p.name.startswith("detection") for p in paths):
        ensure_models()
    results = {}
    for path in paths:
        spec = load_spec(path)
        results[spec.name] = build(spec, output_dir=output_dir, spec_path=path, progress=progress)
    return results


if __name__ == "__main__":
    for name, result in build_examples(sys.argv[1:] or None).items():
        print(f"{name:18s} -> {result.repository} ({len(result.models)} models)")
