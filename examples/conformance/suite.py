"""The conformance cases: each architecture with its inputs, data, source form and spec.

:func:`write_suite` writes, for the chosen cases, a checkpoint (``state_dict``, TorchScript or
ExportedProgram file), an ``.npz`` of seeded samples (validation and calibration splits) and a
spec ``<case>.yaml`` into one folder; every spec builds into ``<folder>/model_repository``.
Weights are seeded random initialisations: nothing is downloaded or trained.

    python -m tritonfleet.examples.conformance.suite FOLDER [CASE ...]
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

SAMPLES = 64
MODELS = "tritonfleet.examples.conformance.models"


@dataclass(frozen=True)
class Member:
    name: str
    cls: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    kwargs: dict[str, Any] = field(default_factory=dict)
    source: str = "state_dict"  # or torchscript / exported_program


@dataclass(frozen=True)
class Case:
    name: str
    title: str                       # the architecture, as the conformance table names it
    members: list[Member]
    data: Callable[[np.random.Generator, int], dict[str, np.ndarray]]  # input name -> samples
    fusion: dict[str, Any] = field(default_factory=lambda: {"type": "none"})
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    optional: tuple[str, ...] = ()   # variants allowed to fail (with the reason in `notes`)
    parity: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    fast: bool = False               # part of the test suite's fast subset

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return self.members[0].inputs


def _images(h: int, w: int):
    return lambda rng, n: {"image": rng.random((n, 3, h, w), dtype=np.float32)}


def _text(rng, n, t=17):
    return {"ids": rng.integers(0, 500, (n, t)), "feats": rng.standard_normal((n, 8)).astype(np.float32)}


def _bert(rng, n, t=13):
    mask = np.ones((n, t), np.int64)
    lengths = rng.integers(3, t + 1, n)
    mask[np.arange(t)[None, :] >= lengths[:, None]] = 0
    types = (np.arange(t)[None, :] >= (lengths // 2)[:, None]).astype(np.int64) * mask
    return {"input_ids": rng.integers(0, 1000, (n, t)) * mask, "attention_mask": mask, "token_type_ids": types}


IMAGE_HW = [{"name": "image", "dtype": "float32", "shape": [3, -1, -1],
             "dynamic": {2: {"min": 8, "opt": 32, "max": 64}, 3: {"min": 8, "opt": 32, "max": 64}}, "finite": True}]
TEXT = [{"name": "ids", "dtype": "int64", "shape": [-1], "dynamic": {1: {"min": 1, "opt": 32, "max": 128}},
         "range": [0, 499]},
        {"name": "feats", "dtype": "float32", "shape": [8], "finite": True}]
BERT_T = {1: {"min": 1, "opt": 32, "max": 64}}
BERT = [{"name": n, "dtype": "int64", "shape": [-1], "dynamic": BERT_T, **r}
        for n, r in (("input_ids", {"range": [0, 999]}), ("attention_mask", {"range": [0, 1]}),
                     ("token_type_ids", {"range": [0, 1]}))]


def _logits(n: int, name: str = "logits") -> list[dict[str, Any]]:
    return [{"name": name, "dtype": "float32", "shape": [n]}]


CASES: dict[str, Case] = {c.name: c for c in [
    Case("resnet", "ResNet-style CNN, BatchNorm, dynamic H x W",
         [Member("conf_resnet", "ResNetTiny", IMAGE_HW, _logits(5))], _images(32, 32)),
    Case("mobilenet", "MobileNet-style depthwise-separable CNN, SiLU/hardswish",
         [Member("conf_mobilenet", "MobileNetTiny", IMAGE_HW, _logits(5))], _images(32, 32)),
    Case("vit", "small ViT (patch embedding + attention)",
         [Member("conf_vit", "ViTTiny", [{"name": "image", "dtype": "float32", "shape": [3, 32, 32]}], _logits(5))],
         _images(32, 32), optional=("fp16", "int8"),
         notes="found here: onnxruntime segfaults loading the fp16 graph (checked in a child process, reported); "
               "int8 Q/DQ of the attention blocks loses the class (top-1 agreement ~0.2)"),
    Case("bert", "tiny BERT from a transformers config (3 int64 inputs, dynamic T)",
         [Member("conf_bert", "BertClassifier", BERT, _logits(3))], _bert),
    Case("lstm", "two-layer LSTM over frames, variable length (torchscript source)",
         [Member("conf_lstm", "LSTMTagger", [{"name": "frames", "dtype": "float32", "shape": [-1, 12],
                                              "dynamic": {1: {"min": 1, "opt": 20, "max": 200}}}],
                 _logits(4), source="torchscript")],
         lambda rng, n: {"frames": rng.standard_normal((n, 20, 12)).astype(np.float32)}, fast=True),
    Case("tcn", "1-D temporal conv over a waveform, variable length (exported_program source)",
         [Member("conf_tcn", "TemporalConv", [{"name": "wave", "dtype": "float32", "shape": [1, -1],
                                               "dynamic": {2: {"min": 16, "opt": 400, "max": 4000}}, "finite": True}],
                 _logits(4), source="exported_program")],
         lambda rng, n: {"wave": rng.standard_normal((n, 1, 400)).astype(np.float32)}, fast=True),
    Case("unet", "U-Net segmenter, mask [C, H, W] follows dynamic H, W",
         [Member("conf_unet", "UNetTiny",
                 [{"name": "image", "dtype": "float32", "shape": [3, -1, -1], "finite": True,
                   "dynamic": {2: {"min": 8, "max": 96, "multiple_of": 4}, 3: {"min": 8, "max": 96, "multiple_of": 4}}}],
                 [{"name": "mask", "dtype": "float32", "shape": [3, -1, -1]}])],
         _images(24, 40), fast=True),
    Case("scores_label", "two outputs of different dtypes (float32 scores, int64 label), returned as a tuple",
         [Member("conf_scores_label", "ScoresAndLabel", [{"name": "x", "dtype": "float32", "shape": [10]}],
                 [*_logits(4, "scores"), {"name": "label", "dtype": "int64", "shape": [1]}])],
         lambda rng, n: {"x": rng.standard_normal((n, 10)).astype(np.float32)}, fast=True,
         notes="label is an argmax: a lower precision may flip it where two scores tie closely"),
    Case("dict_heads", "outputs returned as a dict (logits, normalised embedding)",
         [Member("conf_dict_heads", "DictHeads", [{"name": "x", "dtype": "float32", "shape": [10]}],
                 [*_logits(4), {"name": "embedding", "dtype": "float32", "shape": [6]}])],
         lambda rng, n: {"x": rng.standard_normal((n, 10)).astype(np.float32)}),
    Case("tabular", "tabular: int64 categorical embeddings + float features (3 inputs)",
         [Member("conf_tabular", "TabularNet",
                 [{"name": "region", "dtype": "int64", "shape": [1], "range": [0, 9]},
                  {"name": "product", "dtype": "int64", "shape": [1], "range": [0, 9]},
                  {"name": "numeric", "dtype": "float32", "shape": [6], "finite": True}], _logits(3))],
         lambda rng, n: {"region": rng.integers(0, 10, (n, 1)), "product": rng.integers(0, 10, (n, 1)),
                         "numeric": rng.standard_normal((n, 6)).astype(np.float32)}),
    Case("text_ensemble", "ensemble: EmbeddingBag text+tabular and a GRU sharing (ids [B, T], feats), mean fusion",
         [Member("conf_text_bag", "TextTabular", TEXT, _logits(5)),
          Member("conf_text_gru", "TextGRU", TEXT, _logits(5))], _text,
         fusion={"type": "mean", "activation": "softmax"}, fast=True),
]}


def _sample_args(member: Member, data: dict[str, np.ndarray]):
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(data[t["name"]][:4])) for t in member.inputs)


def _save_model(member: Member, folder: Path, data: dict[str, np.ndarray], seed: int) -> dict[str, Any]:
    """Instantiate with a seed, save in the member's source form; the spec's ``model`` entry."""
    import torch

    from tritonfleet.examples.conformance import models

    torch.manual_seed(seed)
    model = getattr(models, member.cls)(**member.kwargs).eval()
    if member.source == "torchscript":
        path = folder / f"{member.name}.ts"
        torch.jit.save(torch.jit.script(model), str(path))
        return {"torchscript": path.name}
    if member.source == "exported_program":
        path = folder / f"{member.name}.pt2"
        dims = [{0: torch.export.Dim("batch"),
                 **{int(a): torch.export.Dim.DYNAMIC for a in t.get("dynamic", {})}} for t in member.inputs]
        torch.export.save(torch.export.export(model, _sample_args(member, data), dynamic_shapes=tuple(dims)), str(path))
        return {"exported_program": path.name}
    path = folder / f"{member.name}.pt"
    torch.save(model.state_dict(), path)
    return {"architecture": f"{MODELS}:{member.cls}", "kwargs": dict(member.kwargs), "checkpoint": path.name}


def spec_of(case: Case, model_entries: dict[str, dict[str, Any]], repository: str = "model_repository") -> dict:
    names = [t["name"] for t in case.inputs]
    return {
        "name": f"conf_{case.name}" if len(case.members) > 1 or case.fusion["type"] != "none" else f"{case.name}_pipe",
        "description": case.title,
        "output_dir": repository,
        "serving": {"max_batch_size": 16, "dynamic_batching": {"max_queue_delay_microseconds": 0}},
        "members": [{"name": m.name, "model": model_entries[m.name], "inputs": m.inputs, "outputs": m.outputs}
                    for m in case.members],
        "fusion": case.fusion,
        "data": {"path": f"{case.name}.npz", "validation": {"inputs": [f"val_{n}" for n in names]},
                 "calibration": {"inputs": [f"cal_{n}" for n in names]}},
        # seeded random weights leave some logits nearly tied, so int8 may flip a few argmaxes
        "parity": {"samples": SAMPLES, "int8": {"atol": None, "rtol": 0.0, "min_top1_agreement": 0.85}, **case.parity},
        "precision": {"variants": list(case.precisions), "optional": list(case.optional)},
    }


def write_suite(folder: Path, cases: list[str] | None = None, repository: str = "model_repository") -> dict[str, Path]:
    """Write the chosen cases (default: all) into ``folder``; case name -> spec path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unknown = sorted(set(cases or ()) - set(CASES))
    if unknown:
        raise KeyError(f"unknown conformance case(s) {unknown}; choose from {sorted(CASES)}")
    specs = {}
    for i, name in enumerate(cases or list(CASES)):
        case = CASES[name]
        rng = np.random.default_rng(100 + i)
        val, cal = case.data(rng, SAMPLES), case.data(rng, SAMPLES)
        np.savez(folder / f"{case.name}.npz", **{f"val_{k}": v for k, v in val.items()},
                 **{f"cal_{k}": v for k, v in cal.items()})
        entries = {m.name: _save_model(m, folder, val, seed=10 * i + j) for j, m in enumerate(case.members)}
        path = folder / f"{case.name}.yaml"
        path.write_text(f"# {case.title}\n" + yaml.safe_dump(spec_of(case, entries, repository), sort_keys=False))
        specs[name] = path
    return specs


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m tritonfleet.examples.conformance.suite FOLDER [CASE ...]")
    for case, spec in write_suite(Path(sys.argv[1]), sys.argv[2:] or None).items():
        print(f"{case}: {spec}")
