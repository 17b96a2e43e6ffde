"""What ``tritonfleet tune`` may change on a Triton model, and the search space of a target.

A model's tunable **settings** (:class:`Settings`) are five knobs of its ``config.pbtxt``:
instance count, ``max_batch_size``, the dynamic batcher's queue delay and preferred batch
sizes, and the runner's thread count (the ``intra_op_threads``/``threads`` parameter of
tritonfleet's local runners, ``intra_op_thread_count`` of ONNX Runtime, ``INTRA_OP_THREAD_COUNT``
of the PyTorch backend). :func:`read_settings` and :func:`apply_settings` go between a parsed
``ModelConfig`` and settings; nothing else of the config is touched.

A **search space** (:class:`SearchSpace`) is a list of dimensions over the models of one
target. Each dimension moves one knob by whole steps along an ordered list of values, from
the model's current value (offset 0). For a single model there is one dimension per knob.
For an ensemble the first dimensions are *joint*: one step moves the knob of every step model
together (each along its own list, clipped at its ends), which is what keeps a search over
several models small; dimensions of single models follow, to refine. A **coordinate** is
one integer offset per dimension; the all-zero coordinate is the default.

What is searched, and why some values are left out (all pure; no server):

* ``max_batch_size`` never goes below the default: clients (and the ensemble, whose own
  ``max_batch_size`` Triton checks against its steps') may send batches up to it. Larger
  values are only tried when the load can queue more samples than the default
  (``concurrency x batch size``); a TensorRT plan keeps its engine profile's maximum.
* preferred batch sizes are powers of two up to what the load can queue (and up to
  ``max_batch_size``); ``()`` is Triton's default.
* instance counts 1..``max_instances``; thread counts 1, 2, 4 (up to the CPUs), and the default.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

KNOBS = ("instances", "delay_us", "preferred", "threads", "max_batch_size")
KNOB_LABELS = {"instances": "instances", "delay_us": "queue delay (us)", "preferred": "preferred batch sizes",
               "threads": "runner threads", "max_batch_size": "max_batch_size"}
# the config parameter holding a runner's thread count, by who reads it
THREAD_PARAMETERS = ("intra_op_threads", "threads", "intra_op_thread_count", "INTRA_OP_THREAD_COUNT")
DELAYS_US = (0, 100, 200, 500, 1000, 2000, 5000)
MAX_BATCH_LIMIT = 4096


@dataclass(frozen=True)
class Settings:
    """The tunable part of one model's config. ``None``: the model does not have that knob
    (no instance group, no thread parameter) or, for ``delay_us``, dynamic batching is off."""

    instances: int | None
    max_batch_size: int
    delay_us: int | None
    preferred: tuple[int, ...]
    threads: int | None

    def describe(self) -> str:
        parts = []
        if self.instances is not None:
            parts.append(f"inst {self.instances}")
        parts.append("no batching" if self.max_batch_size == 0 else f"mbs {self.max_batch_size}")
        if self.max_batch_size:
            parts.append("dyn off" if self.delay_us is None else f"delay {self.delay_us}us")
            if self.delay_us is not None:
                parts.append(f"pref {list(self.preferred)}" if self.preferred else "pref default")
        if self.threads is not None:
            parts.append(f"threads {self.threads}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"instances": self.instances, "max_batch_size": self.max_batch_size, "delay_us": self.delay_us,
                "preferred": list(self.preferred), "threads": self.threads}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Settings:
        return cls(data.get("instances"), int(data["max_batch_size"]), data.get("delay_us"),
                   tuple(data.get("preferred") or ()), data.get("threads"))


def changes(default: Settings, settings: Settings) -> list[str]:
    """``knob old->new`` for each knob that differs."""
    out = []
    for knob in KNOBS:
        old, new = getattr(default, knob), getattr(settings, knob)
        if old != new:
            out.append(f"{knob} {_show(old)}->{_show(new)}")
    return out


def _show(value) -> str:
    if value is None:
        return "off"
    if isinstance(value, tuple):
        return "[" + ",".join(map(str, value)) + "]" if value else "default"
    return str(value)


# --------------------------------------------------------------------------- config <-> settings
def thread_parameter(proto) -> str | None:
    """The parameter of ``proto`` that sets its runner's threads, if any."""
    return next((key for key in THREAD_PARAMETERS if key in proto.parameters), None)


def read_settings(proto) -> Settings:
    """The settings of a parsed ``ModelConfig``."""
    instances = proto.instance_group[0].count or 1 if len(proto.instance_group) else None
    batching = proto.HasField("dynamic_batching")
    key = thread_parameter(proto)
    threads = None
    if key is not None:
        try:
            threads = int(proto.parameters[key].string_value)
        except ValueError:
            threads = None
    return Settings(instances, int(proto.max_batch_size),
                    int(proto.dynamic_batching.max_queue_delay_microseconds) if batching else None,
                    tuple(int(b) for b in proto.dynamic_batching.preferred_batch_size) if batching else (),
                    threads)


def apply_settings(proto, settings: Settings):
    """A copy of ``proto`` with ``settings`` applied (every instance group gets the count)."""
    out = copy.deepcopy(proto)
    if settings.instances is not None:
        for group in out.instance_group:
            group.count = settings.instances
    out.max_batch_size = settings.max_batch_size
    if settings.delay_us is None or settings.max_batch_size == 0:
        out.ClearField("dynamic_batching")
    else:
        out.dynamic_batching.max_queue_delay_microseconds = settings.delay_us
        del out.dynamic_batching.preferred_batch_size[:]
        out.dynamic_batching.preferred_batch_size.extend(settings.preferred)
    key = thread_parameter(out)
    if key is not None and settings.threads is not None:
        out.parameters[key].string_value = str(settings.threads)
    return out


# --------------------------------------------------------------------------- search space
@dataclass(frozen=True)
class ModelInfo:
    """What the space needs to know of one model: its name, current settings, and whether its
    ``max_batch_size`` is fixed (a TensorRT plan's profile)."""

    name: str
    settings: Settings
    fixed_max_batch: bool = False


@dataclass(frozen=True)
class Dimension:
    knob: str
    models: tuple[str, ...]                      # more than one: a joint dimension
    values: Mapping[str, tuple[Any, ...]]        # model -> ordered values of the knob
    start: Mapping[str, int]                     # model -> index of its current value

    @property
    def label(self) -> str:
        who = "all steps" if len(self.models) > 1 else self.models[0]
        return f"{KNOB_LABELS[self.knob]} ({who})"


@dataclass(frozen=True)
class SearchSpace:
    target: str
    models: Mapping[str, ModelInfo]
    dimensions: tuple[Dimension, ...]
    skipped: tuple[str, ...] = ()                # knobs not searched, with the reason
    order: tuple[str, ...] = field(default=())   # models in load order (members before the ensemble)

    @property
    def origin(self) -> tuple[int, ...]:
        return (0,) * len(self.dimensions)

    def settings_at(self, coordinate: Sequence[int]) -> dict[str, Settings]:
        """model -> settings at ``coordinate`` (offsets of one knob add up over the joint and the
        model's own dimension, then clip to the model's list)."""
        offsets: dict[tuple[str, str], int] = {}
        for dim, offset in zip(self.dimensions, coordinate):
            for model in dim.models:
                offsets[(model, dim.knob)] = offsets.get((model, dim.knob), 0) + offset
        out = {}
        for name, info in self.models.items():
            values = {}
            for dim in self.dimensions:
                if name in dim.models and dim.knob not in values:
                    options = dim.values[name]
                    index = min(max(dim.start[name] + offsets[(name, dim.knob)], 0), len(options) - 1)
                    values[dim.knob] = options[index]
            out[name] = replace(info.settings, **values)
        return out

    def key(self, coordinate: Sequence[int]) -> tuple:
        """Equal for coordinates that give every model the same settings."""
        settings = self.settings_at(coordinate)
        return tuple(sorted((name, s) for name, s in settings.items()))

    def step(self, coordinate: Sequence[int], dimension: int, direction: int) -> tuple[int, ...] | None:
        """The neighbour one step along a dimension, or None where that changes no model
        (every model at the end of its list)."""
        moved = list(coordinate)
        moved[dimension] += direction
        moved = tuple(moved)
        return moved if self.key(moved) != self.key(coordinate) else None

    def describe(self, coordinate: Sequence[int]) -> str:
        """What a coordinate changes against the default, e.g. ``cnn_a: instances 1->2``."""
        default, now = self.settings_at(self.origin), self.settings_at(coordinate)
        parts = [f"{name}: {', '.join(diff)}" for name in self.order or sorted(now)
                 if (diff := changes(default[name], now[name]))]
        return "; ".join(parts) or "default"


def knob_values(knob: str, info: ModelInfo, load: int, max_instances: int, cpus: int) -> tuple[tuple, str | None]:
    """(ordered values including the current one, None) or ((), why the knob is not searched)."""
    s = info.settings
    if knob == "instances":
        if s.instances is None:
            return (), "no instance_group"
        return tuple(sorted({*range(1, max_instances + 1), s.instances})), None
    if knob == "threads":
        if s.threads is None:
            return (), "no runner thread parameter"
        base = {t for t in (1, 2, 4) if t <= max(cpus, 1)} or {1}
        return tuple(sorted({*base, s.threads})), None
    if s.max_batch_size == 0:
        return (), "max_batch_size 0 (the model does not batch)"
    if knob == "delay_us":
        values = sorted({*DELAYS_US, *(() if s.delay_us is None else (s.delay_us,))})
        return ((None, *values) if s.delay_us is None else tuple(values)), None
    if knob == "preferred":
        if s.delay_us is None:
            return (), "dynamic batching off"
        top = min(s.max_batch_size, load)
        sizes = [(b,) for b in (2, 4, 8, 16, 32, 64, 128, 256) if b <= top]
        if s.preferred and s.preferred not in sizes:
            sizes.append(s.preferred)
        return ((), *sorted(sizes, key=lambda p: (max(p), len(p)))), None
    if knob == "max_batch_size":
        if info.fixed_max_batch:
            return (), "fixed by the TensorRT engine's profile"
        if load <= s.max_batch_size:
            return (), (f"the load queues at most {load} samples (concurrency x batch size), not more than the "
                        f"default {s.max_batch_size}; a smaller one would refuse requests the default accepts")
        values = [s.max_batch_size]
        while values[-1] * 2 <= MAX_BATCH_LIMIT and values[-1] < load:
            values.append(values[-1] * 2)
        return tuple(values), None
    raise ValueError(f"unknown knob {knob!r}")


def build_space(target: str, models: Sequence[ModelInfo], load: int, max_instances: int = 4,
                cpus: int = 2) -> SearchSpace:
    """The space of a single model (``models`` of one) or of an ensemble's step models
    (joint dimensions first, then each model's own)."""
    by_name = {m.name: m for m in models}
    dims: list[Dimension] = []
    skipped: list[str] = []
    per_model: list[Dimension] = []
    for knob in KNOBS:
        found = {}
        for m in models:
            values, why = knob_values(knob, m, load, max_instances, cpus)
            if len(values) > 1:
                found[m.name] = values
            elif why:
                skipped.append(f"{m.name}: {KNOB_LABELS[knob]} not searched ({why})")
        if not found:
            continue
        start = {name: values.index(getattr(by_name[name].settings, knob)) for name, values in found.items()}
        if len(models) > 1 and len(found) > 1:
            dims.append(Dimension(knob, tuple(found), found, start))
        per_model += [Dimension(knob, (name,), {name: values}, {name: start[name]}) for name, values in found.items()]
    if len(models) > 1:
        per_model.sort(key=lambda d: [m.name for m in models].index(d.models[0]))
    dims += per_model
    return SearchSpace(target, by_name, tuple(dims), tuple(skipped), tuple(m.name for m in models))
