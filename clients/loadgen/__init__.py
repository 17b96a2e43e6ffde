"""Load generator for a Triton model: concurrency or request-rate mode, perf_analyzer's
stability rule, and a fixed-count soak mode.

Modules: ``config`` (:class:`LoadConfig`), ``windows`` (windows and the stability rule),
``results`` (:class:`LoadResult`, the recorder, Triton's statistics), ``requests``
(batches and request messages), ``engines`` (the callback and asyncio engines,
:func:`run_load`) and ``soak`` (:func:`run_soak`).
"""

from tritonfleet.clients.loadgen.config import LoadConfig
from tritonfleet.clients.loadgen.engines import run_load
from tritonfleet.clients.loadgen.requests import make_batches
from tritonfleet.clients.loadgen.results import LoadResult, ServerTime
from tritonfleet.clients.loadgen.windows import WindowStats

__all__ = ["LoadConfig", "LoadResult", "ServerTime", "WindowStats", "make_batches", "run_load"]
