"""What every build stage shares: lazy, composable loaders (after Polygraphy's
``BaseLoader``) and a way to silence chatty converters.

A loader is a callable object that does nothing until it is called. Arguments of a loader
may be plain values or other loaders; :func:`resolve` calls the latter. So stages nest
without running::

    onnx_path = ExportOnnx(LoadTorchModel(member.model), ...)   # nothing ran yet
    onnx_path()                                                   # loads, then exports

Each stage module pairs its loader with an eager twin function (``export_onnx``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Loader(Generic[T]):
    """Base class: ``__call__`` forwards to :meth:`call_impl`."""

    def __call__(self) -> T:
        return self.call_impl()

    def call_impl(self) -> T:  # pragma: no cover - abstract
        raise NotImplementedError


def resolve(value: Any) -> Any:
    """Call ``value`` if it is a loader, else return it unchanged."""
    return value() if isinstance(value, Loader) else value


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[io.StringIO]:
    """Silence prints, warnings and the named loggers of a chatty converter.

    Yields the captured text so a failure can show it.
    """
    sink = io.StringIO()
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield sink
    finally:
        for logger, level in saved:
            logger.setLevel(level)
