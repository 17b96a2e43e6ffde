"""Build steps with a status each, run in order behind one progress bar.

After Model Navigator's commands: a step is a small object whose constructor takes what it
works on (a member, a precision) and whose :meth:`BuildStep.run` reads the build state and
*returns* what it made (``Made`` objects); the runner applies them to the state, so no step
mutates shared state behind the runner's back. A step ends ``OK``, ``FAIL`` or ``SKIPPED``;
a failing *required* step stops the run (its error propagates), an optional one is recorded
and the run goes on.
"""

from __future__ import annotations

import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

from tritonfleet.clients.errors import TritonfleetError

S = TypeVar("S")


class Status(str, Enum):
    OK = "ok"
    FAIL = "fail"
    SKIPPED = "skipped"


class SkipStep(Exception):
    """Raised by a step that does not apply (e.g. TensorRT is not installed)."""


class Made(Protocol[S]):
    """Something a step made; ``apply`` records it in the build state."""

    def apply(self, state: S) -> None: ...


class BuildStep(ABC, Generic[S]):
    name: str = "step"
    required: bool = True

    @abstractmethod
    def run(self, state: S) -> Made[S] | Iterable[Made[S]] | None:
        """Do the work; return what was made (nothing is applied if this raises)."""


@dataclass(frozen=True)
class StepResult:
    name: str
    status: Status
    seconds: float
    message: str = ""
    made: tuple[str, ...] = ()  # type names of what the step made, for logs and tests


def run_steps(steps: Sequence[BuildStep[S]], state: S, progress: bool = True, title: str = "build") -> list[StepResult]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results: list[StepResult] = []
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task(title, total=len(steps))
        for step in steps:
            bar.update(task, description=f"{title}: {step.name}")
            start = time.perf_counter()
            try:
                made = _as_list(step.run(state))
            except SkipStep as exc:
                results.append(StepResult(step.name, Status.SKIPPED, time.perf_counter() - start, str(exc)))
            except Exception as exc:
                message = str(exc) if isinstance(exc, TritonfleetError) else traceback.format_exc()
                results.append(StepResult(step.name, Status.FAIL, time.perf_counter() - start, message))
                if step.required:
                    raise
            else:
                for item in made:
                    item.apply(state)
                results.append(StepResult(step.name, Status.OK, time.perf_counter() - start,
                                          made=tuple(type(m).__name__ for m in made)))
            bar.advance(task)
    return results


def _as_list(made: Any) -> list:
    if made is None:
        return []
    if isinstance(made, (list, tuple)):
        return list(made)
    return [made]
