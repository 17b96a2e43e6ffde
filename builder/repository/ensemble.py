"""Build-time checks of an ensemble's step graph, before anything reaches Triton.

Triton reports a broken ensemble only when it loads it, with a message about the ensemble
as a whole. :func:`check_ensemble` finds the same problems at build time and names both
ends of a bad connection: every step's model exists, every model input is fed and every
mapped name exists, every tensor is produced exactly once before it is used (no cycles),
producer and consumer agree on dtype and shape, and every ensemble output is produced.
"""

from __future__ import annotations

from collections.abc import Mapping

from tritonfleet.builder.errors import SpecError
from tritonfleet.builder.repository.config import ModelConfig, TensorConfig


def check_ensemble(ensemble: ModelConfig, models: Mapping[str, ModelConfig]) -> list[str]:
    """Raise :class:`SpecError` listing every problem; return the steps in run order."""
    problems: list[str] = []
    # tensor name -> (who produces it, its config)
    produced: dict[str, tuple[str, TensorConfig]] = {
        t.name: (f"ensemble input '{t.name}'", t) for t in ensemble.inputs
    }
    consumers: list[tuple[str, str, TensorConfig, int]] = []  # (tensor, who, config, step index)
    step_outputs: list[set[str]] = []

    for i, step in enumerate(ensemble.ensemble_steps):
        model = models.get(step.model_name)
        if model is None:
            problems.append(f"step {i} uses model '{step.model_name}', which the repository does not hold")
            step_outputs.append(set())
            continue
        ins = {t.name: t for t in model.inputs}
        outs = {t.name: t for t in model.outputs}
        for name in sorted(set(ins) - set(step.input_map)):
            problems.append(f"step {i} ('{step.model_name}') leaves its input '{name}' unfed")
        for name in step.input_map:
            if name not in ins:
                problems.append(
                    f"step {i} ('{step.model_name}') maps '{name}', which is not one of its "
                    f"inputs ({', '.join(ins)})"
                )
        for name, tensor in step.input_map.items():
            if name in ins:
                consumers.append((tensor, f"{step.model_name}.{name}", ins[name], i))
        mine = set()
        for name, tensor in step.output_map.items():
            if name not in outs:
                problems.append(
                    f"step {i} ('{step.model_name}') maps output '{name}', which it does not "
                    f"produce ({', '.join(outs)})"
                )
                continue
            if tensor in produced:
                problems.append(
                    f"tensor '{tensor}' is produced twice: by {produced[tensor][0]} and by "
                    f"{step.model_name}.{name}"
                )
            produced[tensor] = (f"{step.model_name}.{name}", outs[name])
            mine.add(tensor)
        step_outputs.append(mine)

    for tensor, who, cfg, _ in consumers:
        if tensor not in produced:
            problems.append(f"{who} reads tensor '{tensor}', which nothing produces")
            continue
        problems += _compatible(tensor, produced[tensor], (who, cfg))
    for out in ensemble.outputs:
        if out.name not in produced:
            problems.append(f"ensemble output '{out.name}' is produced by no step")
        else:
            problems += _compatible(out.name, produced[out.name], (f"ensemble output '{out.name}'", out))

    order = _run_order(ensemble, step_outputs, problems) if not problems else []
    if problems:
        raise SpecError(
            f"ensemble '{ensemble.name}' is not a valid pipeline:\n"
            + "\n".join(f"  - {p}" for p in problems)
        )
    return order


def _compatible(tensor: str, producer: tuple[str, TensorConfig], consumer: tuple[str, TensorConfig]) -> list[str]:
    (p_who, p), (c_who, c) = producer, consumer
    dims_ok = len(p.dims) == len(c.dims) and all(a == b or -1 in (a, b) for a, b in zip(p.dims, c.dims))
    if p.dtype == c.dtype and dims_ok:
        return []
    return [
        f"tensor '{tensor}': {p_who} produces {p.dtype}{list(p.dims)} but {c_who} expects "
        f"{c.dtype}{list(c.dims)}"
    ]


def _run_order(ensemble: ModelConfig, step_outputs: list[set[str]], problems: list[str]) -> list[str]:
    """Topological order of steps; records a problem when the graph has a cycle."""
    available = {t.name for t in ensemble.inputs}
    pending = list(range(len(ensemble.ensemble_steps)))
    order: list[str] = []
    while pending:
        ready = [i for i in pending if set(ensemble.ensemble_steps[i].input_map.values()) <= available]
        if not ready:
            names = ", ".join(ensemble.ensemble_steps[i].model_name for i in pending)
            problems.append(f"steps {names} wait on each other (a cycle)")
            return order
        for i in ready:
            available |= step_outputs[i]
            order.append(ensemble.ensemble_steps[i].model_name)
            pending.remove(i)
    return order
