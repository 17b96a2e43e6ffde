"""Helpers shared by the converters."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator


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
