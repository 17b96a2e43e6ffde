"""What a request must satisfy before a model runs on it (copied beside a ``model.py``).

The checks come from the spec (``range``, ``finite`` and the bounds of dynamic axes) as the
JSON config parameter ``input_checks``: ``{input: {"range": [lo, hi], "finite": true,
"dims": {axis: [min, max or null, multiple]}}}``. :func:`check_inputs` raises
:class:`InputError` with one message naming the input, what is wrong and what it takes, so
the served model refuses what the trained model refuses instead of answering garbage (ONNX
``Gather`` wraps negative ids around where PyTorch raises). Plain numpy; no Triton imports.
"""

import numpy as np


class InputError(ValueError):
    """A request breaks a declared constraint of an input."""


def check_inputs(arrays, checks):
    """Raise :class:`InputError` for the first input in ``arrays`` (name -> numpy array, batch
    first) that breaks its entry in ``checks``."""
    for name, check in checks.items():
        array = arrays.get(name)
        if array is None:
            continue
        for axis, (low, high, step) in sorted(check.get("dims", {}).items(), key=lambda kv: int(kv[0])):
            axis = int(axis)
            size = array.shape[axis] if array.ndim > axis else None
            if size is None or size < low or (high is not None and size > high) or size % step:
                takes = f"{low}..{high}" if high is not None else f">= {low}"
                takes += f" in steps of {step}" if step > 1 else ""
                raise InputError(f"input '{name}': axis {axis} has size {size} (shape {list(array.shape)}); "
                                 f"this model takes {takes} there")
        if check.get("finite") and np.issubdtype(array.dtype, np.floating):
            bad = ~np.isfinite(array)
            if bad.any():
                where = [int(i) for i in np.argwhere(bad)[0]]
                raise InputError(f"input '{name}': {int(bad.sum())} NaN/inf values (first at {where}, "
                                 f"{array[tuple(where)]}); this model takes finite values only")
        if "range" in check and array.size:
            lo, hi = check["range"]
            bad = (array < lo) | (array > hi)
            if bad.any():
                where = [int(i) for i in np.argwhere(bad)[0]]
                raise InputError(f"input '{name}': {int(bad.sum())} values outside the declared range "
                                 f"[{_num(lo)}, {_num(hi)}] (first: {array[tuple(where)]} at {where})")


def _num(value):
    return int(value) if float(value).is_integer() else value
