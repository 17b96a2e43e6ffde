"""Errors of the builder: the spec, converting models, validating artifacts, the repository.

All derive from :class:`tritonfleet.clients.errors.TritonfleetError`, so the command line
prints each as one message (what, where, how to fix) and exits with code 2.
"""

from tritonfleet.clients.errors import TritonfleetError


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


class DeployError(TritonfleetError):
    """A deployment option is invalid, or does not fit the repository it deploys."""
