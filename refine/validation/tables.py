"""Top8000 percentile tables (Ramachandran and rotamer) and their lookup kernel.

The MolProbity "Top8000" reference data (Williams et al. (2018) Protein Sci. 27:293-315,
CC-BY 4.0; Top8000 reference data, Richardson lab) come as n-dimensional tables of
percentiles ("rama8000-*.data", "rota8000-*.data"): a header gives, per dimension, the
lower and upper bound, the number of bins and whether the dimension wraps; each following
line holds a bin centre and its value. A value is looked up as MolProbity's NDimTable does:
multilinear interpolation between the 2^n bin centres around the point, wrapping around
periodic dimensions (a point is first brought into ``[lower, upper)`` modulo the range,
which also applies the side-chain symmetries of tables that span 180° only).

The data folder is passed in (``top8000_dir``); :func:`default_top8000_dir` gives the
fallback ``RR_TOP8000``, else ``$RR_TEST_DATA/validation/top8000``, else
``../shared/data/validation/top8000`` beside the source checkout.
"""

from __future__ import annotations

import csv
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit

from rerefine.common.errors import InputError

CREDIT = "Top8000 reference data, Williams et al. (2018) Protein Sci. 27:293-315, CC-BY 4.0"


def default_top8000_dir() -> Path:
    """Top8000 folder: ``RR_TOP8000``, else ``$RR_TEST_DATA/validation/top8000``, else the shared data."""
    if os.environ.get("RR_TOP8000"):
        return Path(os.environ["RR_TOP8000"])
    if os.environ.get("RR_TEST_DATA"):
        return Path(os.environ["RR_TEST_DATA"]) / "validation" / "top8000"
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "validation" / "top8000"


@dataclass(frozen=True)
class NDimTable:
    """One Top8000 table.

    Attributes
    ----------
    name : str
        Description line of the file.
    lo, hi : ndarray (ndim,)
        Bounds of each dimension (degrees).
    nbins : ndarray int (ndim,)
        Bins per dimension; bin ``k`` is centred at ``lo + (k + 0.5)·(hi - lo)/nbins``.
    wrap : ndarray bool (ndim,)
        Periodic dimensions.
    values : ndarray (prod(nbins),)
        Table values (fractions, e.g. 0.02 = 2 %), C order over the dimensions.
    """

    name: str
    lo: np.ndarray
    hi: np.ndarray
    nbins: np.ndarray
    wrap: np.ndarray
    values: np.ndarray

    @property
    def ndim(self) -> int:
        return int(self.lo.shape[0])

    def lookup(self, points: np.ndarray) -> np.ndarray:
        """Interpolated values at ``points`` (M, ndim) degrees; NaN where a coordinate is NaN."""
        pts = np.ascontiguousarray(np.asarray(points, dtype=np.float64).reshape(-1, self.ndim))
        return lookup_kernel(pts, self.lo, self.hi, self.nbins, self.wrap, self.values)


def read_table(path: str | os.PathLike) -> NDimTable:
    """Parse a Top8000 ``.data`` table (header comments, then ``x1 .. xn value`` lines)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: Top8000 table not found (set RR_TOP8000 to the Top8000 folder)")
    name = path.stem
    dims = []
    with open(path) as fh:
        for line in fh:
            if not line.startswith("#"):
                break
            s = line[1:].strip()
            if s.lower().startswith("table name"):
                name = s.split(":", 1)[1].strip().strip('"')
            elif s[:1] == "x" and ":" in s:
                f = s.split(":", 1)[1].split()
                dims.append((float(f[0]), float(f[1]), int(f[2]), f[3].lower() == "true"))
    if not dims:
        raise InputError(f"{path}: not a Top8000 table (no dimension header)")
    data = np.loadtxt(path, comments="#", dtype=np.float64, ndmin=2)
    nd = len(dims)
    lo = np.array([d[0] for d in dims])
    hi = np.array([d[1] for d in dims])
    nb = np.array([d[2] for d in dims], dtype=np.int64)
    wrap = np.array([d[3] for d in dims], dtype=np.bool_)
    if data.shape[1] != nd + 1:
        raise InputError(f"{path}: expected {nd + 1} columns, found {data.shape[1]}")
    # place each line by its coordinates (files list every bin, but do not rely on the order)
    width = (hi - lo) / nb
    idx = np.floor((data[:, :nd] - lo) / width).astype(np.int64)
    idx = np.clip(idx, 0, nb - 1)
    values = np.zeros(int(np.prod(nb)))
    values[np.ravel_multi_index(tuple(idx.T), tuple(nb))] = data[:, nd]
    return NDimTable(name, lo, hi, nb, wrap, values)


@functools.lru_cache(maxsize=64)
def load_table(top8000_dir: str, relpath: str) -> NDimTable:
    """:func:`read_table` of ``top8000_dir/relpath``, read once per process."""
    return read_table(Path(top8000_dir) / relpath)


@njit(cache=True)
def lookup_kernel(points, lo, hi, nbins, wrap, values):
    """Multilinear interpolation of a regular n-dimensional table at ``points`` (M, n).

    Coordinates of wrapping dimensions are reduced modulo ``hi - lo``; non-wrapping ones are
    clamped to the outermost bin centres. NaN in, NaN out.
    """
    m, nd = points.shape
    out = np.empty(m)
    base = np.empty(nd, dtype=np.int64)
    frac = np.empty(nd)
    stride = np.empty(nd, dtype=np.int64)
    s = 1
    for d in range(nd - 1, -1, -1):
        stride[d] = s
        s *= nbins[d]
    for p in range(m):
        bad = False
        for d in range(nd):
            x = points[p, d]
            if x != x:
                bad = True
                break
            span = hi[d] - lo[d]
            width = span / nbins[d]
            if wrap[d]:
                x = lo[d] + ((x - lo[d]) % span)
            # position in units of bins relative to the first bin centre
            u = (x - lo[d]) / width - 0.5
            k = math.floor(u)
            f = u - k
            if not wrap[d]:
                if k < 0:
                    k = 0
                    f = 0.0
                elif k >= nbins[d] - 1:
                    k = nbins[d] - 1
                    f = 0.0
            base[d] = k
            frac[d] = f
        if bad:
            out[p] = np.nan
            continue
        acc = 0.0
        for corner in range(1 << nd):
            w = 1.0
            flat = 0
            for d in range(nd):
                k = base[d]
                if (corner >> d) & 1:
                    w *= frac[d]
                    k += 1
                else:
                    w *= 1.0 - frac[d]
                if wrap[d]:
                    k = k % nbins[d]
                elif k > nbins[d] - 1:
                    k = nbins[d] - 1
                flat += k * stride[d]
            if w != 0.0:
                acc += w * values[flat]
        out[p] = acc
    return out


@functools.lru_cache(maxsize=64)
def rotamer_central_values(top8000_dir: str, resname: str) -> tuple:
    """Named Top8000 rotamers of ``resname`` from ``rotamer_central_values/{RES}.csv``: a tuple of
    ``(name, frequency %, chi means (nchi,), chi esds (nchi,))`` in degrees; empty when the residue
    has no table."""
    path = Path(top8000_dir) / "rotamer_central_values" / f"{resname}.csv"
    if not path.is_file():
        return ()
    out = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            means, esds = [], []
            for k in range(1, 5):
                v = row.get(f"chi{k}_mean")
                if v in (None, ""):
                    break
                means.append(float(v))
                esds.append(float(row[f"chi{k}_esd"]))
            out.append((row["rotamer"], float(row["frequency%"]), np.array(means), np.array(esds)))
    return tuple(out)
