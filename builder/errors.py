"""Errors raised by tritonfleet.

Every error a user can cause derives from :class:`TritonfleetError`; the CLI prints
its message (what, where, how to fix) and exits non-zero without a traceback.
Anything else reaching the CLI is a bug in tritonfleet and keeps its traceback.
"""


class TritonfleetError(Exception):
    """Base class of every error tritonfleet raises on purpose."""

    exit_code = 2


class SpecError(TritonfleetError):
    """The pipeline spec, a path it names, or data it points to is invalid."""


class ConversionError(TritonfleetError):
    """A model could not be loaded, exported or converted."""


class ValidationError(TritonfleetError):
    """An artifact's outputs disagree with the PyTorch reference."""

    def __init__(self, message: str, kind: str = "tolerance"):
        super().__init__(message)
        self.kind = kind  # "output-names" | "shape" | "non-finite" | "tolerance"


class RepositoryError(TritonfleetError):
    """The model repository on disk is missing, inconsistent or not writable."""


class ServerError(TritonfleetError):
    """The Triton server could not be started, reached, or answered with an error."""


class MissingDependencyError(TritonfleetError):
    """An optional dependency (tensorrt, perf_analyzer, ...) is not installed."""
