"""A two-member text pipeline in which one member fails at run time on requests the other takes.

``conf_err_bag`` (an EmbeddingBag over a 500-token vocabulary) and ``conf_err_gru`` (a GRU over
1,000 tokens) share the inputs ``ids`` [B, T] and ``feats`` [B, 8]; no ``range`` is declared, so
no guard step refuses ids of 500 or more before the fan-out: onnxruntime's Gather fails inside
``conf_err_bag`` while ``conf_err_gru`` (the slower sibling) still runs. This is the situation in
which tritonserver 2.51's ensemble scheduler loses a request (docs/RELIABILITY.md, "Member errors
inside an ensemble"); ``tests/test_member_errors.py`` and ``bench/member_errors.py`` build it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

PIPELINE = "conf_member_errors"
FAILING, SIBLING = "conf_err_bag", "conf_err_gru"
VOCAB = 500  # ids from here up make FAILING fail; SIBLING takes up to 2 * VOCAB - 1
INPUTS = [{"name": "ids", "dtype": "int64", "shape": [-1], "dynamic": {1: {"min": 1, "opt": 16, "max": 64}}},
          {"name": "feats", "dtype": "float32", "shape": [8], "finite": True}]
OUTPUTS = [{"name": "logits", "dtype": "float32", "shape": [5]}]
MODELS = "tritonfleet.examples.conformance.models"


def requests(good: bool, batch: int = 1, length: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs both members take (``good``), or ones only SIBLING takes (ids >= VOCAB)."""
    rng = np.random.default_rng(seed)
    low, high = (0, VOCAB) if good else (VOCAB, 2 * VOCAB)
    return {"ids": rng.integers(low, high, (batch, length)), "feats": rng.standard_normal((batch, 8)).astype(np.float32)}


def write_spec(folder: Path, repository: str | Path = "model_repository") -> Path:
    """Checkpoints, data and the spec in ``folder``; returns the spec's path."""
    import torch

    from tritonfleet.examples.conformance import models

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for seed, (name, cls, kwargs) in enumerate([(FAILING, "TextTabular", {"vocab": VOCAB}),
                                                (SIBLING, "TextGRU", {"vocab": 2 * VOCAB, "hidden": 48})]):
        torch.manual_seed(seed)
        torch.save(getattr(models, cls)(**kwargs).eval().state_dict(), folder / f"{name}.pt")
        entries[name] = {"architecture": f"{MODELS}:{cls}", "kwargs": kwargs, "checkpoint": f"{name}.pt"}
    data = {f"{split}_{k}": v for split in ("val", "cal") for k, v in requests(True, 32, seed=len(split)).items()}
    np.savez(folder / "member_errors.npz", **data)
    spec = {
        "name": PIPELINE,
        "description": "EmbeddingBag (500 tokens) and GRU (1,000 tokens) on the same ids, mean fusion",
        "output_dir": str(repository),
        "serving": {"max_batch_size": 16, "dynamic_batching": {"max_queue_delay_microseconds": 0}},
        "members": [{"name": n, "model": entries[n], "inputs": INPUTS, "outputs": OUTPUTS} for n in (FAILING, SIBLING)],
        "fusion": {"type": "mean", "activation": "softmax"},
        "data": {"path": "member_errors.npz", "validation": {"inputs": ["val_ids", "val_feats"]},
                 "calibration": {"inputs": ["cal_ids", "cal_feats"]}},
        "parity": {"samples": 32},
        "precision": {"variants": ["fp32"], "serve": "fp32"},
    }
    path = folder / f"{PIPELINE}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
