"""The errors tritonfleet raises on purpose.

Every error a user can cause derives from :class:`TritonfleetError`; the command line prints
its message (what was wrong, where, how to fix it) and exits with :attr:`exit_code`, without
a traceback. Anything else reaching the command line is a bug and keeps its traceback.

The builder adds its own kinds (``tritonfleet.builder.errors``: spec, conversion,
validation, repository); the ones here are shared by every layer.
"""


class TritonfleetError(Exception):
    """Base class of every error tritonfleet raises on purpose."""

    exit_code = 2


class UsageError(TritonfleetError):
    """A value given to a function or an option is out of its range (``--window 0``)."""


class ServerError(TritonfleetError):
    """The Triton server could not be started, reached, or answered with an error."""


class MissingDependencyError(TritonfleetError):
    """An optional dependency (tensorrt, perf_analyzer, ...) is not installed."""
