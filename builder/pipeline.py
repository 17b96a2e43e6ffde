"""Build steps with a status each, run in order behind one progress bar.

After Model Navigator's commands: a step returns a dict of outputs that later steps read
from the shared context; it ends ``OK``, ``FAIL`` or ``SKIPPED``. A failing *required*
step stops the run (its error propagates); an optional one is recorded and the run goes on.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from builder.errors import TritonfleetError


class Status(str, Enum):
    OK = "ok"
    FAIL = "fail"
    SKIPPED = "skipped"


class SkipStep(Exception):
    """Raised by a step that does not apply (e.g. TensorRT is not installed)."""


@dataclass(frozen=True)
class Step:
    name: str
    fn: Callable[[dict[str, Any]], dict[str, Any] | None]
    required: bool = True


@dataclass
class StepResult:
    name: str
    status: Status
    seconds: float
    message: str = ""
    outputs: dict[str, Any] = field(default_factory=dict)


def run_steps(steps: list[Step], context: dict[str, Any], progress: bool = True,
              title: str = "build") -> list[StepResult]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    results: list[StepResult] = []
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task(title, total=len(steps))
        for step in steps:
            bar.update(task, description=f"{title}: {step.name}")
            start = time.perf_counter()
            try:
                outputs = step.fn(context) or {}
            except SkipStep as exc:
                results.append(StepResult(step.name, Status.SKIPPED, time.perf_counter() - start, str(exc)))
            except Exception as exc:
                user_error = isinstance(exc, TritonfleetError)
                message = str(exc) if user_error else traceback.format_exc()
                results.append(StepResult(step.name, Status.FAIL, time.perf_counter() - start, message))
                if step.required:
                    raise
            else:
                context.update(outputs)
                results.append(StepResult(step.name, Status.OK, time.perf_counter() - start, outputs=outputs))
            bar.advance(task)
    return results
