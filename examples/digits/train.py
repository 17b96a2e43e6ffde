"""Train the digits example models (CPU, seconds) and save them with a fixed data split.

Writes into ``ARTIFACTS`` (the example specs expect ``WORKDIR/examples/digits/artifacts``;
see :mod:`tritonfleet.examples.workdir`):

* ``digits.npz``: ``x_train, y_train, x_val, y_val, x_test, y_test, x_calib`` with images as
  float32 ``[N, 1, 8, 8]`` in ``[0, 1]`` and labels as int64;
* ``<name>.pt``: the model's ``state_dict`` (load with ``torch.load(..., weights_only=True)``);
* ``<name>.json``: its architecture import path, kwargs, seed and measured accuracies;
* the chaining example: ``digits_backbone.pt`` and two heads on its features,
  ``digits_head_a.pt`` (trained with the backbone) and ``digits_head_b.pt`` (trained on the
  frozen backbone).

Models whose checkpoint already matches the recipe are reused, so reruns are instant.

    python -m tritonfleet.examples.digits.train ARTIFACTS
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

SPLIT_SEED = 0
CALIBRATION_SAMPLES = 256


@dataclass(frozen=True)
class Recipe:
    name: str
    architecture: str
    kwargs: dict = field(default_factory=dict)
    seed: int = 0
    epochs: int = 40
    lr: float = 3e-3
    batch_size: int = 64

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


RECIPES: tuple[Recipe, ...] = (
    Recipe("cnn_small_a", "tritonfleet.examples.digits.models:DigitsCNN", {"width": 12}, seed=1),
    Recipe("cnn_small_b", "tritonfleet.examples.digits.models:DigitsCNN", {"width": 16}, seed=2),
    Recipe("cnn_small_c", "tritonfleet.examples.digits.models:DigitsCNN", {"width": 20}, seed=3),
    Recipe("cnn_large", "tritonfleet.examples.digits.models:LargeDigitsCNN", {}, seed=4),
)


def make_splits(noise: float = 0.0, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Stratified 60/20/20 split of scikit-learn's digits (optionally with pixel noise)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    if noise > 0:
        rng = np.random.default_rng(seed)
        x = np.clip(x + rng.normal(0, noise, x.shape), 0, 1).astype(np.float32)
    x_train, x_rest, y_train, y_rest = train_test_split(x, y, test_size=0.4, stratify=y, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(
        x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed
    )
    return {
        "x_train": x_train, "y_train": y_train,
        "x_val": x_val, "y_val": y_val,
        "x_test": x_test, "y_test": y_test,
        "x_calib": x_train[:CALIBRATION_SAMPLES],
    }


def build_model(architecture: str, kwargs: dict):
    import importlib

    module_name, class_name = architecture.split(":")
    return getattr(importlib.import_module(module_name), class_name)(**kwargs)


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def train_one(recipe: Recipe, data: dict[str, np.ndarray], on_epoch: Callable[[], None] = lambda: None):
    """Train one recipe with Adam + cross-entropy; deterministic for a given seed."""
    import torch

    torch.manual_seed(recipe.seed)
    model = build_model(recipe.architecture, recipe.kwargs)
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=recipe.epochs)
    x = torch.from_numpy(data["x_train"])
    y = torch.from_numpy(data["y_train"])
    gen = torch.Generator().manual_seed(recipe.seed)
    for _ in range(recipe.epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(recipe.batch_size):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        sched.step()
        on_epoch()
    model.eval()
    return model


@dataclass(frozen=True)
class ChainRecipe:
    """A backbone trained with head A, then head B trained on the frozen backbone."""

    name: str = "digits_chain"
    backbone: dict = field(default_factory=lambda: {"width": 16, "hidden": 64})
    head_a: dict = field(default_factory=lambda: {"hidden": 64})
    head_b: dict = field(default_factory=lambda: {"hidden": 64, "mlp": 32})
    seed: int = 5
    epochs: int = 40
    lr: float = 3e-3
    batch_size: int = 64

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def files(self) -> tuple[str, ...]:
        return ("digits_backbone", "digits_head_a", "digits_head_b")


CHAIN = ChainRecipe()


def train_chain(recipe: ChainRecipe, data: dict[str, np.ndarray], on_epoch: Callable[[], None] = lambda: None):
    import torch

    from tritonfleet.examples.digits.models import DigitsBackbone, DigitsHead

    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"])

    def fit(params, forward, seed):
        torch.manual_seed(seed)
        opt = torch.optim.Adam(params, lr=recipe.lr, weight_decay=1e-4)
        gen = torch.Generator().manual_seed(seed)
        for _ in range(recipe.epochs):
            for idx in torch.randperm(len(x), generator=gen).split(recipe.batch_size):
                opt.zero_grad()
                torch.nn.functional.cross_entropy(forward(x[idx]), y[idx]).backward()
                opt.step()
            on_epoch()

    torch.manual_seed(recipe.seed)
    backbone, head_a, head_b = DigitsBackbone(**recipe.backbone), DigitsHead(**recipe.head_a), DigitsHead(**recipe.head_b)
    backbone.train(), head_a.train()
    fit([*backbone.parameters(), *head_a.parameters()], lambda v: head_a(backbone(v)), recipe.seed)
    backbone.eval()
    for p in backbone.parameters():
        p.requires_grad_(False)
    head_b.train()
    fit(list(head_b.parameters()), lambda v: head_b(backbone(v)), recipe.seed + 1)
    return backbone.eval(), head_a.eval(), head_b.eval()


def _ensure_chain(artifacts: Path, data: dict[str, np.ndarray], bar) -> None:
    import torch

    from tritonfleet.examples.digits.models import DigitsHead  # noqa: F401  (import path recorded below)

    meta_path = artifacts / f"{CHAIN.name}.json"
    current = meta_path.is_file() and json.loads(meta_path.read_text()).get("recipe_digest") == CHAIN.digest()
    if current and all((artifacts / f"{n}.pt").is_file() for n in CHAIN.files()):
        return
    task = bar.add_task(CHAIN.name, total=2 * CHAIN.epochs)
    models = train_chain(CHAIN, data, on_epoch=lambda task=task: bar.advance(task))
    for name, model in zip(CHAIN.files(), models):
        torch.save(model.state_dict(), artifacts / f"{name}.pt")
    backbone, head_a, head_b = models
    with torch.no_grad():
        feats = backbone(torch.from_numpy(data["x_test"]))
        acc = {n: float((h(feats).argmax(1).numpy() == data["y_test"]).mean())
               for n, h in (("head_a", head_a), ("head_b", head_b))}
    meta_path.write_text(json.dumps({"recipe": asdict(CHAIN), "recipe_digest": CHAIN.digest(),
                                     "test_accuracy": acc}, indent=2) + "\n")


def _is_current(artifacts: Path, recipe: Recipe) -> bool:
    meta = artifacts / f"{recipe.name}.json"
    if not meta.is_file() or not (artifacts / f"{recipe.name}.pt").is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("recipe_digest") == recipe.digest()
    except ValueError:
        return False


def ensure_trained(
    artifacts: Path,
    recipes: tuple[Recipe, ...] = RECIPES,
    noise: float = 0.0,
    progress: bool = True,
    chain: bool = True,
) -> dict[str, dict]:
    """Train what is missing or stale; return each model's metadata. ``chain=False`` skips the
    chaining example's backbone and heads (studies that train only ``recipes``)."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    artifacts = Path(artifacts)
    artifacts.mkdir(parents=True, exist_ok=True)
    data_path = artifacts / "digits.npz"
    if not data_path.is_file():
        np.savez(data_path, **make_splits(noise=noise))
    data = dict(np.load(data_path))

    todo = [r for r in recipes if not _is_current(artifacts, r)]
    columns = (TextColumn("[bold]train[/] {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        if chain:
            _ensure_chain(artifacts, data, bar)
        for recipe in todo:
            task = bar.add_task(recipe.name, total=recipe.epochs)
            model = train_one(recipe, data, on_epoch=lambda task=task: bar.advance(task))
            torch.save(model.state_dict(), artifacts / f"{recipe.name}.pt")
            meta = {
                "name": recipe.name,
                "architecture": recipe.architecture,
                "kwargs": recipe.kwargs,
                "recipe": asdict(recipe),
                "recipe_digest": recipe.digest(),
                "val_accuracy": accuracy(model, data["x_val"], data["y_val"]),
                "test_accuracy": accuracy(model, data["x_test"], data["y_test"]),
                "torch": torch.__version__,
            }
            (artifacts / f"{recipe.name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {r.name: json.loads((artifacts / f"{r.name}.json").read_text()) for r in recipes}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m tritonfleet.examples.digits.train ARTIFACTS", file=sys.stderr)
        return 2
    artifacts = Path(argv[0])
    for name, meta in ensure_trained(artifacts).items():
        print(f"{name:12s} val {meta['val_accuracy']:.4f}  test {meta['test_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
