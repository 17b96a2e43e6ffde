"""Train a student on the teacher's soft targets: plain torch on the CPU, deterministic per seed.

Adam with a cosine learning-rate schedule over the epochs, mini-batches in a seeded random
order, one intra-op thread while training (the thread count is restored afterwards), so the
same seed, data and teacher give the same weights. One rich progress bar advances per epoch and
shows the epoch's mean loss and the validation top-1.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tritonfleet.builder.lifecycle.distill.loss import distillation_loss


@dataclass(frozen=True)
class TrainOptions:
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    seed: int
    temperature: float
    alpha: float


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float            # mean training loss over the epoch's batches
    val_accuracy: float    # top-1 on the validation split after the epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def predict(model: Any, inputs: Sequence[np.ndarray], batch_size: int = 512) -> np.ndarray:
    """Logits of a torch model on numpy inputs (eval mode, no gradients)."""
    import torch

    model.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(inputs[0]), batch_size):
            out = model(*(torch.from_numpy(np.ascontiguousarray(x[start:start + batch_size])) for x in inputs))
            outs.append((out[0] if isinstance(out, (tuple, list)) else out).detach().numpy())
    return np.concatenate(outs)


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(logits).reshape(len(labels), -1).argmax(1) == labels).mean())


def train_student(make_model: Callable[[], Any], inputs: Sequence[np.ndarray], targets: np.ndarray,
                  labels: np.ndarray, val_inputs: Sequence[np.ndarray], val_labels: np.ndarray,
                  options: TrainOptions, progress: bool = True, title: str = "distil") -> tuple[Any, list[EpochStats]]:
    """The trained student (eval mode) and one :class:`EpochStats` per epoch."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(options.seed)
        model = make_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=options.epochs)
        xs = [torch.from_numpy(np.ascontiguousarray(x)) for x in inputs]
        q = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.float32))
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        order = torch.Generator().manual_seed(options.seed)
        history: list[EpochStats] = []
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                   TimeElapsedColumn())
        with Progress(*columns, disable=not progress, transient=True) as bar:
            task = bar.add_task(title, total=options.epochs, info="")
            for epoch in range(1, options.epochs + 1):
                model.train()
                losses = []
                for idx in torch.randperm(len(y), generator=order).split(options.batch_size):
                    optimizer.zero_grad()
                    out = model(*(x[idx] for x in xs))
                    out = out[0] if isinstance(out, (tuple, list)) else out
                    loss = distillation_loss(out, q[idx], y[idx], options.temperature, options.alpha)
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss.detach()))
                schedule.step()
                val = top1(predict(model, val_inputs), val_labels)
                history.append(EpochStats(epoch, float(np.mean(losses)), val))
                bar.update(task, advance=1, info=f"loss {history[-1].loss:.4f}  val top-1 {val:.4f}")
        model.eval()
        return model, history
    finally:
        torch.set_num_threads(threads)
