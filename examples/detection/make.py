"""Write the detection example's members (seeded, no training) and sample images.

    python -m tritonfleet.examples.detection.make ARTIFACTS
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

MEMBERS = {"det_a": 1, "det_b": 2, "det_c": 3}  # name -> noise seed
NOISE = 0.05


def ensure_models(artifacts: Path) -> Path:
    import torch

    from tritonfleet.examples.detection.models import ToyDetector

    artifacts = Path(artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    if all((artifacts / f"{n}.pt").is_file() for n in MEMBERS) and (artifacts / "images.npz").is_file():
        return artifacts
    torch.manual_seed(0)
    base = ToyDetector().state_dict()
    for name, seed in MEMBERS.items():
        gen = torch.Generator().manual_seed(seed)
        state = {k: v + NOISE * torch.randn(v.shape, generator=gen) * v.std() if v.is_floating_point() and v.numel() > 1
                 else v.clone() for k, v in base.items()}
        torch.save(state, artifacts / f"{name}.pt")
    rng = np.random.default_rng(0)
    np.savez(artifacts / "images.npz", x_val=rng.random((64, 3, 32, 32), dtype=np.float32))
    return artifacts


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tritonfleet.examples.detection.make ARTIFACTS")
    print(ensure_models(Path(sys.argv[1])))
