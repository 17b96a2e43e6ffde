"""Distillation: one student model trained on a built ensemble's own served answers.

``teacher`` (the ensemble run in-process from the repository's files), ``loss`` (soft targets
at a temperature, the distillation objective), ``train`` (the training loop), ``student`` (the
student built into the repository with the build's steps), ``run`` (``tritonfleet distill``).
"""

from tritonfleet.builder.lifecycle.distill.run import DistillResult, default_workdir, distill, stale_students

__all__ = ["DistillResult", "default_workdir", "distill", "stale_students"]
