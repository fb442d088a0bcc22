"""Numbers read out of stored or reported data (metric dicts, JSON, database rows).

One helper, :func:`finite_float`, for every place in ``reports/`` that turns a value that may be
missing, text, NaN or infinite into a float or ``None``: the store (columns), the verdict (gates),
the site's view models and the water table.
"""

from __future__ import annotations

import math


def finite_float(v, *, keep_infinite: bool = False) -> float | None:
    """``v`` as a float, or None when it is missing, not a number or NaN.

    Parameters
    ----------
    v
        Any value (``None``, a number, numeric text, a numpy scalar).
    keep_infinite : bool
        Keep ±inf (the verdict: an infinite RMSD after refinement counts as worse instead of
        being unknown). By default an infinite value is None too.
    """
    if v is None:
        return None
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    if math.isnan(v) or (math.isinf(v) and not keep_infinite):
        return None
    return v
