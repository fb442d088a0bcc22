"""Fourier-shell statistics of density maps: radial amplitude profiles, half-map FSC, shell-wise scaling.

A map is transformed once with ``scipy.fft.rfftn`` (the half-space of a real transform); every
quantity here is then a sum over *resolution shells* of that transform, computed by small numba
kernels that find each coefficient's spatial frequency on the fly (no frequency arrays are
allocated, which keeps memory near one copy of the transform).

Frequencies. For data indexed ``[i, j, k]`` whose voxel ``g`` lies at ``origin + M g`` (``M`` =
:attr:`DensityMap.orth_matrix`, Å per grid step), coefficient ``(h, k, l)`` of the DFT has
spatial frequency ``s = M^-T (h/n0, k/n1, l/n2)`` in Å⁻¹ and resolution ``d = 1/|s|`` Å.
Shells are equally spaced in ``|s|`` from 0 to ``s_max`` (default: Nyquist, ``1/(2 voxel)``).
A coefficient of the half-space with ``0 < l < n2/2`` stands for itself and its Friedel mate, so
it is counted twice (weights 1 on the ``l = 0`` and ``l = n2/2`` planes).

Fourier shell correlation (Harauz & van Heel 1986, Optik 73:146; cryo-EM use as in
Rosenthal & Henderson 2003, J. Mol. Biol. 333:721):
``FSC(s) = Σ Re(F1 F2*) / sqrt(Σ|F1|² Σ|F2|²)`` over a shell. The weight that turns the FSC of
two half-maps into the expected correlation of their average with the true map is
``C_ref = sqrt(2 FSC / (1 + FSC))`` (Rosenthal & Henderson 2003), used by :func:`fsc_weight`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import scipy.fft
from numba import njit, prange

from .mapio import DensityMap


def fft_workers() -> int:
    """Threads for scipy.fft: ``RR_FFT_WORKERS`` or the CPUs this process may use."""
    env = os.environ.get("RR_FFT_WORKERS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def rfft_map(data: np.ndarray) -> np.ndarray:
    """Half-space transform (complex64 for float32 input) of a 3-D map."""
    return scipy.fft.rfftn(np.asarray(data, dtype=np.float32), workers=fft_workers())


def irfft_map(coeffs: np.ndarray, shape) -> np.ndarray:
    """Real map of ``shape`` from a half-space transform (float32)."""
    out = scipy.fft.irfftn(coeffs, s=tuple(shape), workers=fft_workers(), overwrite_x=False)
    return np.ascontiguousarray(out, dtype=np.float32)


def frequency_matrix(dmap: DensityMap, shape=None) -> np.ndarray:
    """Matrix ``A`` with ``s = A @ (h, k, l)`` (Å⁻¹) for the transform of an array of ``shape``."""
    shape = dmap.shape if shape is None else tuple(shape)
    minv_t = np.linalg.inv(dmap.orth_matrix).T
    return np.ascontiguousarray(minv_t / np.asarray(shape, float)[None, :])


def nyquist_s(dmap: DensityMap) -> float:
    """Largest frequency sampled along every axis, Å⁻¹ (``1 / (2 × largest voxel edge)``)."""
    return 0.5 / float(np.max(dmap.voxel_size))


@njit(cache=True, inline="always")
def _signed(i, n):
    return i if i < (n + 1) // 2 else i - n


@njit(cache=True, inline="always")
def _s_of(a, h, k, l):  # noqa: E741 - crystallographic index names
    sx = a[0, 0] * h + a[0, 1] * k + a[0, 2] * l
    sy = a[1, 0] * h + a[1, 1] * k + a[1, 2] * l
    sz = a[2, 0] * h + a[2, 1] * k + a[2, 2] * l
    return np.sqrt(sx * sx + sy * sy + sz * sz)


@njit(cache=True, inline="always")
def _radial_factor(table, s, step):
    """``table`` interpolated linearly at ``|s| / step``; past its end the last value holds."""
    last = table.shape[0] - 1
    t = s / step
    m = int(t)
    if m >= last:
        return table[last]
    u = t - m
    return table[m] * (1.0 - u) + table[m + 1] * u


@njit(cache=True, parallel=True)
def _shell_power(coeffs, n2, a, ds, nshell, step, table):
    """Per-shell Σ w f²|F|² and Σ w of a half-space transform (w = Friedel multiplicity), where
    f is the radial factor ``table`` at |s| (:func:`_radial_factor`; a one-entry table of 1 for
    the plain power). Nothing is modified."""
    n0, n1, nl = coeffs.shape
    acc = np.zeros((n0, nshell), dtype=np.float64)
    cnt = np.zeros((n0, nshell), dtype=np.float64)
    for i in prange(n0):
        h = _signed(i, n0)
        for j in range(n1):
            k = _signed(j, n1)
            for l in range(nl):  # noqa: E741
                s = _s_of(a, h, k, l)
                b = int(s / ds)
                if b >= nshell:
                    continue
                f = _radial_factor(table, s, step)
                w = 1.0 if (l == 0 or 2 * l == n2) else 2.0
                c = coeffs[i, j, l]
                acc[i, b] += w * f * f * (c.real * c.real + c.imag * c.imag)
                cnt[i, b] += w
    return acc.sum(axis=0), cnt.sum(axis=0)


@njit(cache=True, parallel=True)
def _shell_cross(c1, c2, n2, a, ds, nshell):
    """Per-shell Σ w Re(F1 F2*), Σ w|F1|², Σ w|F2|², Σ w of two half-space transforms."""
    n0, n1, nl = c1.shape
    out = np.zeros((n0, 4, nshell), dtype=np.float64)
    for i in prange(n0):
        h = _signed(i, n0)
        for j in range(n1):
            k = _signed(j, n1)
            for l in range(nl):  # noqa: E741
                s = _s_of(a, h, k, l)
                b = int(s / ds)
                if b >= nshell:
                    continue
                w = 1.0 if (l == 0 or 2 * l == n2) else 2.0
                x = c1[i, j, l]
                y = c2[i, j, l]
                out[i, 0, b] += w * (x.real * y.real + x.imag * y.imag)
                out[i, 1, b] += w * (x.real * x.real + x.imag * x.imag)
                out[i, 2, b] += w * (y.real * y.real + y.imag * y.imag)
                out[i, 3, b] += w
    return out.sum(axis=0)


@njit(cache=True, parallel=True)
def _scale_radial(coeffs, a, step, table):
    """Multiply each coefficient by ``table`` interpolated linearly at its |s| (in place).

    ``table[m]`` is the factor at ``|s| = m * step``; past the table the last value holds.
    """
    n0, n1, nl = coeffs.shape
    for i in prange(n0):
        h = _signed(i, n0)
        for j in range(n1):
            k = _signed(j, n1)
            for l in range(nl):  # noqa: E741
                f = _radial_factor(table, _s_of(a, h, k, l), step)
                coeffs[i, j, l] *= f


@njit(cache=True, parallel=True)
def _s_squared(n0, n1, nl, a):
    """|s|² (Å⁻²) of every coefficient of a half-space transform, float32."""
    out = np.empty((n0, n1, nl), dtype=np.float32)
    for i in prange(n0):
        h = _signed(i, n0)
        for j in range(n1):
            k = _signed(j, n1)
            for l in range(nl):  # noqa: E741
                s = _s_of(a, h, k, l)
                out[i, j, l] = s * s
    return out


@dataclass
class ShellProfile:
    """Radially averaged statistics in shells of equal width in |s|.

    Attributes
    ----------
    s_lo, s_hi : numpy.ndarray
        Shell limits, Å⁻¹.
    power : numpy.ndarray
        Mean |F|² per shell (map units² in the scipy FFT normalisation).
    count : numpy.ndarray
        Number of Fourier coefficients per shell (full sphere, Friedel mates counted).
    """

    s_lo: np.ndarray
    s_hi: np.ndarray
    power: np.ndarray
    count: np.ndarray

    @property
    def s_mid(self) -> np.ndarray:
        return 0.5 * (self.s_lo + self.s_hi)

    @property
    def d_mid(self) -> np.ndarray:
        """Resolution at the shell middles, Å (inf for the first shell at s=0)."""
        with np.errstate(divide="ignore"):
            return 1.0 / self.s_mid

    @property
    def amplitude(self) -> np.ndarray:
        """Root-mean-square amplitude per shell."""
        return np.sqrt(self.power)


def _shells(s_max: float, n_shells: int):
    ds = s_max / n_shells
    lo = np.arange(n_shells) * ds
    return ds, lo, lo + ds


def default_shells(shape) -> int:
    """Number of shells: half the smallest box edge (one Fourier pixel wide), at least 8."""
    return max(8, int(min(shape)) // 2)


def radial_profile(coeffs: np.ndarray, a: np.ndarray, shape, *, s_max: float, n_shells: int,
                   table: tuple | None = None) -> ShellProfile:
    """Mean |F|² in ``n_shells`` shells from 0 to ``s_max`` of a half-space transform.

    ``table = (step, factors)``: the profile of the coefficients multiplied by that radial factor
    (as :func:`scale_radial` would), without touching them.
    """
    ds, lo, hi = _shells(s_max, n_shells)
    step, factors = (1.0, np.ones(1)) if table is None else table
    acc, cnt = _shell_power(coeffs, int(shape[2]), a, ds, n_shells, float(step),
                            np.ascontiguousarray(factors, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        power = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)
    return ShellProfile(lo, hi, power, cnt)


def map_profile(dmap: DensityMap, n_shells: int | None = None) -> ShellProfile:
    """Radial profile of a map's Fourier amplitudes, shells out to the grid's Nyquist limit."""
    coeffs = rfft_map(dmap.data)
    return radial_profile(coeffs, frequency_matrix(dmap), dmap.shape, s_max=nyquist_s(dmap),
                          n_shells=n_shells or default_shells(dmap.shape))


@dataclass
class FSCCurve:
    """Fourier shell correlation between two maps (see module docstring for the definition)."""

    s_lo: np.ndarray
    s_hi: np.ndarray
    fsc: np.ndarray
    count: np.ndarray

    @property
    def s_mid(self) -> np.ndarray:
        return 0.5 * (self.s_lo + self.s_hi)

    def resolution_at(self, threshold: float = 0.143) -> float:
        """Resolution (Å) where the FSC first falls below ``threshold`` (linear interpolation)."""
        f = np.nan_to_num(self.fsc, nan=0.0)
        s = self.s_mid
        for i in range(1, len(f)):
            if f[i] < threshold <= f[i - 1]:
                t = (f[i - 1] - threshold) / (f[i - 1] - f[i])
                return float(1.0 / (s[i - 1] + t * (s[i] - s[i - 1])))
        return float(1.0 / s[-1]) if f[-1] >= threshold else float(1.0 / max(s[1], 1e-9))


def fsc_curve(c1: np.ndarray, c2: np.ndarray, a: np.ndarray, shape, *, s_max: float, n_shells: int) -> FSCCurve:
    """FSC of two half-space transforms of the same grid."""
    ds, lo, hi = _shells(s_max, n_shells)
    sums = _shell_cross(c1, c2, int(shape[2]), a, ds, n_shells)
    with np.errstate(invalid="ignore", divide="ignore"):
        f = sums[0] / np.sqrt(sums[1] * sums[2])
    f = np.where(sums[3] > 0, f, np.nan)
    return FSCCurve(lo, hi, f, sums[3])


def fsc_weight(fsc: np.ndarray) -> np.ndarray:
    """``sqrt(2 FSC / (1 + FSC))`` with FSC clipped to [0, 1] (Rosenthal & Henderson 2003 C_ref)."""
    f = np.clip(np.nan_to_num(np.asarray(fsc, float), nan=0.0), 0.0, 1.0)
    return np.sqrt(2.0 * f / (1.0 + f))


def scale_radial(coeffs: np.ndarray, a: np.ndarray, step: float, table: np.ndarray) -> None:
    """Multiply a half-space transform, in place, by a radial factor ``table`` sampled every ``step`` Å⁻¹."""
    _scale_radial(coeffs, a, float(step), np.ascontiguousarray(table, dtype=np.float64))


def s_squared(coeffs_shape, a: np.ndarray) -> np.ndarray:
    """|s|² (Å⁻²) of every coefficient of a half-space transform of that shape (float32)."""
    n0, n1, nl = (int(x) for x in coeffs_shape)
    return _s_squared(n0, n1, nl, np.ascontiguousarray(a, dtype=np.float64))
