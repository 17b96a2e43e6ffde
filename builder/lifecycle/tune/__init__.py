"""``tritonfleet tune``: a pipeline-aware search of serving settings, measured on the real server.

``space`` (the knobs of a config and the search space of a model or an ensemble), ``search``
(the quick search and the choice of a winner; pure), ``measure`` (candidates served through
explicit model control and measured with the load generator), ``commit`` (the winner as new,
rollback-able versions, one journaled commit), ``report`` (table, JSON, plot) and ``run``
(:func:`tune`).
"""

from tritonfleet.builder.lifecycle.tune.run import TuneOptions, TuneResult, tune

__all__ = ["TuneOptions", "TuneResult", "tune"]
