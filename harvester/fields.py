"""Untrusted archive fields (RCSB/EMDB answers, mirror mmCIF records) made into checked values.

A value that is missing, of the wrong type, not finite, outside its plausible range or not a real
calendar date becomes None, and ``warnings`` (when given) gets one line naming the field and the
value, so an absurd figure is never used as if the archive had stated it.
"""

from __future__ import annotations

import datetime as dt
import math

# Plausible ranges: a reported resolution in Å; a recommended contour in map units (any larger
# magnitude is not a density level of a real map; the map's own range is checked when it is read).
RESOLUTION_RANGE = (0.1, 100.0)
CONTOUR_RANGE = (-1e6, 1e6)


def text(value, limit: int = 2000) -> str | None:
    """A string field (numbers accepted as text), stripped and cut to ``limit`` characters; else None."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    s = str(value).strip()
    return s[:limit] or None


def number(value, *, what: str, lo: float, hi: float, warnings: list | None = None) -> float | None:
    """A finite number in ``[lo, hi]`` from a number or a numeric string; None otherwise (with a warning
    when the field was present but unusable)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        x = math.nan
    if math.isfinite(x) and lo <= x <= hi:
        return x
    if warnings is not None:
        warnings.append(f"{what} {str(value)[:40]!r} ignored (not a number in [{lo:g}, {hi:g}])")
    return None


def count(value, *, what: str, warnings: list | None = None) -> int | None:
    """A non-negative integer count (at most 10^12), else None."""
    x = number(value, what=what, lo=0, hi=1e12, warnings=warnings)
    return int(x) if x is not None and x == int(x) else None


def iso_date(value, *, what: str, warnings: list | None = None) -> str | None:
    """``YYYY-MM-DD`` of a real calendar date (a longer ISO timestamp is cut to its date); else None."""
    s = text(value, 40)
    if s is None:
        return None
    try:
        return dt.date.fromisoformat(s[:10]).isoformat()
    except ValueError:
        if warnings is not None:
            warnings.append(f"{what} {s!r} ignored (not a calendar date)")
        return None
