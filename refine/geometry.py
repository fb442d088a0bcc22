"""Restraint target, its analytic gradient, and geometry statistics (numba kernels).

Target (least squares, as in Refmac/phenix geometry restraints)::

    T = w_b Σ ((d - d0)/σ)²            bonds, Å
      + w_a Σ ((θ - θ0)/σ)²            angles, degrees
      + w_t Σ ((Δφ mod 360/p)/σ)²      torsions, degrees, periodicity p (σ = 0: not restrained)
      + w_c Σ ((V - V0)/σ)²            chiral volumes, Å³ (|V| vs |V0| for "both")
      + w_p Σ_planes Σ_atoms (δ/σ)²    distance δ of each atom to the least-squares plane, Å
      + w_n Σ ((d0 - d)/σ_nb)²  d<d0   nonbonded repulsion (:mod:`rerefine.refine.nonbonded`)

with ``w_*`` = ``Restraints.weights`` (1.0 by default). Coordinates are ``(N, 3)`` float64 in
``st[0].all()`` order (see :mod:`rerefine.refine.restraints`). Rows of the gradient that belong
to fixed atoms (``Restraints.fixed``) are zero.

Every ``*_range`` kernel makes one pass over a slice of its packed arrays. One parallel
region (:func:`_restraint_pass`) splits every restraint type into as many contiguous chunks
as numba has threads; each thread adds into its own gradient buffer (no write races) and the
buffers are summed at the end. A single parallel region per evaluation matters on a busy
machine: every region entry waits for all worker threads to be scheduled. Models below
:data:`rerefine.refine.threads.PARALLEL_MIN_ATOMS` (and any model when ``NUMBA_NUM_THREADS=1``)
take the serial driver unless ``parallel=True`` is asked for.

Length: the kernels of every restraint term are called from the one restraint pass
(:func:`_pass_chunk`), and the statistics reuse them; they stay together.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numba
import numpy as np
from numba import njit, prange

from .nonbonded import CLASH_OVERLAP, SIGMA_NB, count_overlaps, nonbonded_range, probe_radii
from .threads import use_parallel

if TYPE_CHECKING:  # annotations only: restraints.py uses this module's kernels (no import cycle)
    from .restraints import Restraints

RAD = math.pi / 180.0
DEG = 180.0 / math.pi


# --------------------------------------------------------------------------- kernels

@njit(cache=True)
def flat_bottom_range(xyz, idx, ideal, sigma, slack, weight, g, lo, hi):
    """Σ w((|d - d0| - slack)_+ / σ)² over the atom pairs ``idx[lo:hi]`` (M, 2) of ``xyz`` (N, 3), d in Å;
    gradient (1/Å) added into ``g`` (N, 3); pairs with σ ≤ 0 skipped. ``slack`` 0 is the harmonic bond
    term (:func:`bond_range`); the secondary-structure H-bond restraint uses a flat bottom of ±slack Å."""
    acc = 0.0
    for k in range(lo, hi):
        s = sigma[k]
        if s <= 0.0:
            continue
        i = idx[k, 0]
        j = idx[k, 1]
        dx = xyz[i, 0] - xyz[j, 0]
        dy = xyz[i, 1] - xyz[j, 1]
        dz = xyz[i, 2] - xyz[j, 2]
        d = math.sqrt(dx * dx + dy * dy + dz * dz)
        dev = d - ideal[k]
        if dev > slack:
            dev -= slack
        elif dev < -slack:
            dev += slack
        else:
            continue
        r = dev / s
        acc += weight * r * r
        if d > 1e-12:
            f = 2.0 * weight * r / (s * d)
            g[i, 0] += f * dx
            g[i, 1] += f * dy
            g[i, 2] += f * dz
            g[j, 0] -= f * dx
            g[j, 1] -= f * dy
            g[j, 2] -= f * dz
    return acc


@njit(cache=True)
def bond_range(xyz, idx, ideal, sigma, weight, g, lo, hi):
    """Σ w((d-d0)/σ)² over bonds ``lo:hi``; gradient added into ``g`` (N, 3)."""
    return flat_bottom_range(xyz, idx, ideal, sigma, 0.0, weight, g, lo, hi)


@njit(cache=True, inline="always")
def fold_period(delta, period):
    """An angle difference ``delta`` (degrees) folded into [-180/period, 180/period) (period 1, 2, 3...)."""
    per = 360.0 / period
    return delta - per * math.floor(delta / per + 0.5)


@njit(cache=True)
def angle_range(xyz, idx, ideal, sigma, weight, g, lo, hi):
    """Σ w((θ-θ0)/σ)² over angles (degrees), vertex = idx[:, 1]."""
    acc = 0.0
    for k in range(lo, hi):
        s = sigma[k]
        if s <= 0.0:
            continue
        i = idx[k, 0]
        j = idx[k, 1]
        l = idx[k, 2]
        ux = xyz[i, 0] - xyz[j, 0]
        uy = xyz[i, 1] - xyz[j, 1]
        uz = xyz[i, 2] - xyz[j, 2]
        vx = xyz[l, 0] - xyz[j, 0]
        vy = xyz[l, 1] - xyz[j, 1]
        vz = xyz[l, 2] - xyz[j, 2]
        lu = math.sqrt(ux * ux + uy * uy + uz * uz)
        lv = math.sqrt(vx * vx + vy * vy + vz * vz)
        if lu < 1e-12 or lv < 1e-12:
            continue
        ux /= lu
        uy /= lu
        uz /= lu
        vx /= lv
        vy /= lv
        vz /= lv
        cs = ux * vx + uy * vy + uz * vz
        cs = min(1.0, max(-1.0, cs))
        th = math.acos(cs) * DEG
        r = (th - ideal[k]) / s
        acc += weight * r * r
        sn = math.sqrt(max(1.0 - cs * cs, 1e-16))
        # dθ/dx_i = -(v̂ - cosθ û)/(|u| sinθ), in radians; chain to degrees
        f = 2.0 * weight * r / s * DEG * (-1.0 / sn)
        gix = f * (vx - cs * ux) / lu
        giy = f * (vy - cs * uy) / lu
        giz = f * (vz - cs * uz) / lu
        gkx = f * (ux - cs * vx) / lv
        gky = f * (uy - cs * vy) / lv
        gkz = f * (uz - cs * vz) / lv
        g[i, 0] += gix
        g[i, 1] += giy
        g[i, 2] += giz
        g[l, 0] += gkx
        g[l, 1] += gky
        g[l, 2] += gkz
        g[j, 0] -= gix + gkx
        g[j, 1] -= giy + gky
        g[j, 2] -= giz + gkz
    return acc


@njit(cache=True)
def dihedral_gradient(xyz, a, b, c, d, out):
    """Dihedral angle (rad, IUPAC sign) of a-b-c-d; its gradient w.r.t. the 4 atoms into out (4, 3)."""
    b1x = xyz[b, 0] - xyz[a, 0]
    b1y = xyz[b, 1] - xyz[a, 1]
    b1z = xyz[b, 2] - xyz[a, 2]
    b2x = xyz[c, 0] - xyz[b, 0]
    b2y = xyz[c, 1] - xyz[b, 1]
    b2z = xyz[c, 2] - xyz[b, 2]
    b3x = xyz[d, 0] - xyz[c, 0]
    b3y = xyz[d, 1] - xyz[c, 1]
    b3z = xyz[d, 2] - xyz[c, 2]
    mx = b1y * b2z - b1z * b2y
    my = b1z * b2x - b1x * b2z
    mz = b1x * b2y - b1y * b2x
    nx = b2y * b3z - b2z * b3y
    ny = b2z * b3x - b2x * b3z
    nz = b2x * b3y - b2y * b3x
    lb2 = math.sqrt(b2x * b2x + b2y * b2y + b2z * b2z)
    m2 = mx * mx + my * my + mz * mz
    n2 = nx * nx + ny * ny + nz * nz
    if lb2 < 1e-12 or m2 < 1e-16 or n2 < 1e-16:
        out[:, :] = 0.0
        return 0.0, False
    y = lb2 * (b1x * nx + b1y * ny + b1z * nz)
    x = mx * nx + my * ny + mz * nz
    phi = math.atan2(y, x)
    # Blondel & Karplus (1996) gradient
    fa = -lb2 / m2
    fd = lb2 / n2
    out[0, 0] = fa * mx
    out[0, 1] = fa * my
    out[0, 2] = fa * mz
    out[3, 0] = fd * nx
    out[3, 1] = fd * ny
    out[3, 2] = fd * nz
    p = (b1x * b2x + b1y * b2y + b1z * b2z) / (lb2 * lb2)
    q = (b3x * b2x + b3y * b2y + b3z * b2z) / (lb2 * lb2)
    for t in range(3):
        out[1, t] = -(1.0 + p) * out[0, t] + q * out[3, t]
        out[2, t] = p * out[0, t] - (1.0 + q) * out[3, t]
    return phi, True


@njit(cache=True)
def torsion_range(xyz, idx, ideal, sigma, period, weight, g, lo, hi):
    """Σ w((Δφ wrapped to ±180/p)/σ)² over torsions (degrees); σ ≤ 0 skipped."""
    acc = 0.0
    dg = np.empty((4, 3))
    for k in range(lo, hi):
        s = sigma[k]
        if s <= 0.0:
            continue
        phi, ok = dihedral_gradient(xyz, idx[k, 0], idx[k, 1], idx[k, 2], idx[k, 3], dg)
        if not ok:
            continue
        delta = fold_period(phi * DEG - ideal[k], period[k])
        r = delta / s
        acc += weight * r * r
        f = 2.0 * weight * r / s * DEG
        for a in range(4):
            at = idx[k, a]
            g[at, 0] += f * dg[a, 0]
            g[at, 1] += f * dg[a, 1]
            g[at, 2] += f * dg[a, 2]
    return acc


@njit(cache=True)
def _chiral_volume(xyz, c0, c1, c2, c3):
    ax = xyz[c1, 0] - xyz[c0, 0]
    ay = xyz[c1, 1] - xyz[c0, 1]
    az = xyz[c1, 2] - xyz[c0, 2]
    bx = xyz[c2, 0] - xyz[c0, 0]
    by = xyz[c2, 1] - xyz[c0, 1]
    bz = xyz[c2, 2] - xyz[c0, 2]
    cx = xyz[c3, 0] - xyz[c0, 0]
    cy = xyz[c3, 1] - xyz[c0, 1]
    cz = xyz[c3, 2] - xyz[c0, 2]
    return ax * (by * cz - bz * cy) + ay * (bz * cx - bx * cz) + az * (bx * cy - by * cx)


@njit(cache=True)
def chiral_range(xyz, idx, ideal, sigma, both, weight, g, lo, hi):
    """Σ w((V-V0)/σ)², V = (r1-c)·((r2-c)×(r3-c)); "both": (|V|-|V0|)."""
    acc = 0.0
    for k in range(lo, hi):
        s = sigma[k]
        if s <= 0.0:
            continue
        i0 = idx[k, 0]
        i1 = idx[k, 1]
        i2 = idx[k, 2]
        i3 = idx[k, 3]
        ax = xyz[i1, 0] - xyz[i0, 0]
        ay = xyz[i1, 1] - xyz[i0, 1]
        az = xyz[i1, 2] - xyz[i0, 2]
        bx = xyz[i2, 0] - xyz[i0, 0]
        by = xyz[i2, 1] - xyz[i0, 1]
        bz = xyz[i2, 2] - xyz[i0, 2]
        cx = xyz[i3, 0] - xyz[i0, 0]
        cy = xyz[i3, 1] - xyz[i0, 1]
        cz = xyz[i3, 2] - xyz[i0, 2]
        # dV/da = b×c, dV/db = c×a, dV/dc = a×b
        gax = by * cz - bz * cy
        gay = bz * cx - bx * cz
        gaz = bx * cy - by * cx
        gbx = cy * az - cz * ay
        gby = cz * ax - cx * az
        gbz = cx * ay - cy * ax
        gcx = ay * bz - az * by
        gcy = az * bx - ax * bz
        gcz = ax * by - ay * bx
        v = ax * gax + ay * gay + az * gaz
        if both[k]:
            sg = 1.0 if v >= 0.0 else -1.0
            r = (abs(v) - abs(ideal[k])) / s
        else:
            sg = 1.0
            r = (v - ideal[k]) / s
        acc += weight * r * r
        f = 2.0 * weight * r / s * sg
        g[i1, 0] += f * gax
        g[i1, 1] += f * gay
        g[i1, 2] += f * gaz
        g[i2, 0] += f * gbx
        g[i2, 1] += f * gby
        g[i2, 2] += f * gbz
        g[i3, 0] += f * gcx
        g[i3, 1] += f * gcy
        g[i3, 2] += f * gcz
        g[i0, 0] -= f * (gax + gbx + gcx)
        g[i0, 1] -= f * (gay + gby + gcy)
        g[i0, 2] -= f * (gaz + gbz + gcz)
    return acc


@njit(cache=True)
def _smallest_eigvec(a00, a01, a02, a11, a12, a22):
    """Unit eigenvector of the smallest eigenvalue of a symmetric 3×3 matrix (closed form)."""
    p1 = a01 * a01 + a02 * a02 + a12 * a12
    q = (a00 + a11 + a22) / 3.0
    p2 = (a00 - q) ** 2 + (a11 - q) ** 2 + (a22 - q) ** 2 + 2.0 * p1
    p = math.sqrt(p2 / 6.0)
    if p < 1e-300:
        return 0.0, 0.0, 1.0
    b00 = (a00 - q) / p
    b11 = (a11 - q) / p
    b22 = (a22 - q) / p
    b01 = a01 / p
    b02 = a02 / p
    b12 = a12 / p
    detb = b00 * (b11 * b22 - b12 * b12) - b01 * (b01 * b22 - b12 * b02) + b02 * (b01 * b12 - b11 * b02)
    rr = min(1.0, max(-1.0, detb / 2.0))
    ph = math.acos(rr) / 3.0
    lam = q + 2.0 * p * math.cos(ph + 2.0 * math.pi / 3.0)
    # the eigenvector is orthogonal to the rows of (A - λI): take the best-conditioned cross product
    r0x, r0y, r0z = a00 - lam, a01, a02
    r1x, r1y, r1z = a01, a11 - lam, a12
    r2x, r2y, r2z = a02, a12, a22 - lam
    c1x, c1y, c1z = r0y * r1z - r0z * r1y, r0z * r1x - r0x * r1z, r0x * r1y - r0y * r1x
    c2x, c2y, c2z = r0y * r2z - r0z * r2y, r0z * r2x - r0x * r2z, r0x * r2y - r0y * r2x
    c3x, c3y, c3z = r1y * r2z - r1z * r2y, r1z * r2x - r1x * r2z, r1x * r2y - r1y * r2x
    n1 = c1x * c1x + c1y * c1y + c1z * c1z
    n2 = c2x * c2x + c2y * c2y + c2z * c2z
    n3 = c3x * c3x + c3y * c3y + c3z * c3z
    if n1 >= n2 and n1 >= n3:
        nn = math.sqrt(n1)
        if nn == 0.0:
            return 0.0, 0.0, 1.0
        return c1x / nn, c1y / nn, c1z / nn
    if n2 >= n3:
        nn = math.sqrt(n2)
        return c2x / nn, c2y / nn, c2z / nn
    nn = math.sqrt(n3)
    return c3x / nn, c3y / nn, c3z / nn


@njit(cache=True)
def _plane_normal(xyz, atoms, lo, hi):
    cx = 0.0
    cy = 0.0
    cz = 0.0
    for t in range(lo, hi):
        a = atoms[t]
        cx += xyz[a, 0]
        cy += xyz[a, 1]
        cz += xyz[a, 2]
    inv = 1.0 / (hi - lo)
    cx *= inv
    cy *= inv
    cz *= inv
    s00 = s01 = s02 = s11 = s12 = s22 = 0.0
    for t in range(lo, hi):
        a = atoms[t]
        x = xyz[a, 0] - cx
        y = xyz[a, 1] - cy
        z = xyz[a, 2] - cz
        s00 += x * x
        s01 += x * y
        s02 += x * z
        s11 += y * y
        s12 += y * z
        s22 += z * z
    nx, ny, nz = _smallest_eigvec(s00, s01, s02, s11, s12, s22)
    return cx, cy, cz, nx, ny, nz


@njit(cache=True)
def plane_range(xyz, atoms, offsets, sigma, weight, g, lo, hi):
    """Σ_planes Σ_atoms w(δ/σ)², δ = distance to the least-squares plane.

    The gradient of the smallest eigenvalue is 2δ_i n̂ per atom (the normal's own change
    does not contribute at the minimum, and Σ δ_i = 0 removes the centroid term).
    """
    acc = 0.0
    for k in range(lo, hi):
        s = sigma[k]
        if s <= 0.0:
            continue
        a0 = offsets[k]
        a1 = offsets[k + 1]
        cx, cy, cz, nx, ny, nz = _plane_normal(xyz, atoms, a0, a1)
        w = weight / (s * s)
        for t in range(a0, a1):
            a = atoms[t]
            dlt = (xyz[a, 0] - cx) * nx + (xyz[a, 1] - cy) * ny + (xyz[a, 2] - cz) * nz
            acc += w * dlt * dlt
            f = 2.0 * w * dlt
            g[a, 0] += f * nx
            g[a, 1] += f * ny
            g[a, 2] += f * nz
    return acc


@njit(cache=True)
def _pass_chunk(c, nchunk, xyz, b_idx, b_ideal, b_sigma, a_idx, a_ideal, a_sigma, t_idx, t_ideal, t_sigma,
                t_period, c_idx, c_ideal, c_sigma, c_both, p_atoms, p_offsets, p_sigma, nb_pi, nb_pj, nb_d0,
                sigma_nb, weights, gbuf, eterms):
    """Chunk ``c`` of ``nchunk`` of every restraint term, gradient into gbuf[c], energies into eterms[c]."""
    g = gbuf[c]
    g[:, :] = 0.0
    m = b_ideal.shape[0]
    eterms[c, 0] = bond_range(xyz, b_idx, b_ideal, b_sigma, weights[0], g, c * m // nchunk, (c + 1) * m // nchunk)
    m = a_ideal.shape[0]
    eterms[c, 1] = angle_range(xyz, a_idx, a_ideal, a_sigma, weights[1], g, c * m // nchunk,
                               (c + 1) * m // nchunk)
    m = t_ideal.shape[0]
    eterms[c, 2] = torsion_range(xyz, t_idx, t_ideal, t_sigma, t_period, weights[2], g, c * m // nchunk,
                                 (c + 1) * m // nchunk)
    m = c_ideal.shape[0]
    eterms[c, 3] = chiral_range(xyz, c_idx, c_ideal, c_sigma, c_both, weights[3], g, c * m // nchunk,
                                (c + 1) * m // nchunk)
    m = p_sigma.shape[0]
    eterms[c, 4] = plane_range(xyz, p_atoms, p_offsets, p_sigma, weights[4], g, c * m // nchunk,
                               (c + 1) * m // nchunk)
    m = nb_d0.shape[0]
    if weights[5] != 0.0:
        eterms[c, 5] = nonbonded_range(xyz, nb_pi, nb_pj, nb_d0, sigma_nb, weights[5], g, c * m // nchunk,
                                       (c + 1) * m // nchunk)
    else:
        eterms[c, 5] = 0.0


# Two drivers with distinct names (numba's on-disk cache is keyed by function name and line,
# so one py_func compiled twice, parallel and serial, would share -- and confuse -- a cache entry).
@njit(parallel=True, cache=True)
def _restraint_pass(xyz, b_idx, b_ideal, b_sigma, a_idx, a_ideal, a_sigma, t_idx, t_ideal, t_sigma, t_period,
                    c_idx, c_ideal, c_sigma, c_both, p_atoms, p_offsets, p_sigma, nb_pi, nb_pj, nb_d0, sigma_nb,
                    weights, gbuf, eterms):
    """All restraint terms in one parallel region; chunk c of every term goes to gbuf[c]."""
    nchunk = gbuf.shape[0]
    for c in prange(nchunk):
        _pass_chunk(c, nchunk, xyz, b_idx, b_ideal, b_sigma, a_idx, a_ideal, a_sigma, t_idx, t_ideal, t_sigma,
                    t_period, c_idx, c_ideal, c_sigma, c_both, p_atoms, p_offsets, p_sigma, nb_pi, nb_pj, nb_d0,
                    sigma_nb, weights, gbuf, eterms)


@njit(cache=True)
def _restraint_pass_serial(xyz, b_idx, b_ideal, b_sigma, a_idx, a_ideal, a_sigma, t_idx, t_ideal, t_sigma,
                           t_period, c_idx, c_ideal, c_sigma, c_both, p_atoms, p_offsets, p_sigma, nb_pi, nb_pj,
                           nb_d0, sigma_nb, weights, gbuf, eterms):
    """Same as :func:`_restraint_pass` on the calling thread only.

    Used below :data:`rerefine.refine.threads.PARALLEL_MIN_ATOMS` atoms (see that module).
    """
    nchunk = gbuf.shape[0]
    for c in range(nchunk):
        _pass_chunk(c, nchunk, xyz, b_idx, b_ideal, b_sigma, a_idx, a_ideal, a_sigma, t_idx, t_ideal, t_sigma,
                    t_period, c_idx, c_ideal, c_sigma, c_both, p_atoms, p_offsets, p_sigma, nb_pi, nb_pj, nb_d0,
                    sigma_nb, weights, gbuf, eterms)


@njit(cache=True)
def _reduce(gbuf, fixed, out):
    nchunk = gbuf.shape[0]
    for i in range(gbuf.shape[1]):
        if fixed[i]:
            out[i, 0] = 0.0
            out[i, 1] = 0.0
            out[i, 2] = 0.0
            continue
        for d in range(3):
            s = 0.0
            for c in range(nchunk):
                s += gbuf[c, i, d]
            out[i, d] = s


# --------------------------------------------------------------------------- public API

def _check_xyz(r: Restraints, xyz) -> np.ndarray:
    xyz = np.ascontiguousarray(xyz, dtype=np.float64)
    if xyz.shape != (r.n_atoms, 3):
        raise ValueError(f"coordinates of shape {xyz.shape} do not match {r.n_atoms} restrained atoms")
    return xyz


TERMS = ("bond", "angle", "torsion", "chiral", "plane", "nonbonded")


def energy_terms(r: Restraints, xyz: np.ndarray, grad: np.ndarray | None = None, *,
                 parallel: bool | None = None) -> dict:
    """Per-term restraint energies (dimensionless, weights applied); optional gradient into ``grad``.

    Keys ``bond``, ``angle``, ``torsion``, ``chiral``, ``plane``, ``nonbonded``, and
    ``ramachandran`` when ``r.ramachandran`` is set
    (:class:`rerefine.refine.ramachandran_restraint.RamachandranRestraint`, refinement only), and
    one key per term of ``r.extra_terms`` (its ``name``).
    Refreshes the nonbonded neighbour list when needed. ``parallel``: force the threaded (True)
    or serial (False) drivers; by default :func:`rerefine.refine.threads.use_parallel` decides. Not re-entrant for one ``r``: the
    per-thread gradient buffers are kept on ``r`` between calls (use one Restraints per thread).
    """
    xyz = _check_xyz(r, xyz)
    parallel = use_parallel(r.n_atoms, parallel)
    nchunk = max(1, numba.get_num_threads()) if parallel else 1
    # reuse the per-thread gradient buffers between calls: a fresh multi-MB array costs page
    # faults on every evaluation (the kernel zeroes them itself)
    gbuf = getattr(r, "_gbuf", None)
    if gbuf is None or gbuf.shape != (nchunk, r.n_atoms, 3):
        gbuf = np.empty((nchunk, r.n_atoms, 3))
        r._gbuf = gbuf
    eterms = np.zeros((nchunk, len(TERMS)))
    weights = np.array([float(r.weights[k]) for k in TERMS])
    nb = r.nonbonded
    if nb is not None and weights[5] != 0.0:
        nb.update(xyz, parallel=parallel)
        pi, pj, d0 = nb.pi, nb.pj, nb.d0
    else:
        pi = pj = np.zeros(0, dtype=np.int32)
        d0 = np.zeros(0)
    b, a, t, c, p = r.bonds, r.angles, r.torsions, r.chirals, r.planes
    kernel = _restraint_pass if parallel else _restraint_pass_serial
    kernel(xyz, b.idx, b.ideal, b.sigma, a.idx, a.ideal, a.sigma, t.idx, t.ideal, t.sigma, t.period,
           c.idx, c.ideal, c.sigma, c.both, p.atoms, p.offsets, p.sigma, pi, pj, d0, SIGMA_NB,
           weights, gbuf, eterms)
    if grad is not None:
        _reduce(gbuf, r.fixed, grad)
    tot = eterms.sum(axis=0)
    out = {k: float(tot[i]) for i, k in enumerate(TERMS)}
    rama = getattr(r, "ramachandran", None)
    if rama is not None:
        # its rows never contain fixed atoms (see ramachandran_restraint), so no masking needed
        out["ramachandran"] = rama.energy_gradient(xyz, grad if grad is not None else np.zeros_like(xyz))
    for term in getattr(r, "extra_terms", ()):
        out[term.name] = term.energy_gradient(xyz, grad if grad is not None else np.zeros_like(xyz))
    return out


def restraint_energy_gradient(r: Restraints, xyz: np.ndarray, *, parallel: bool | None = None
                              ) -> tuple[float, np.ndarray]:
    """Total restraint target and its analytic gradient.

    Parameters
    ----------
    r : Restraints
        From :func:`rerefine.refine.restraints.build_restraints`; its nonbonded list is
        refreshed in place when an atom moved more than half the list buffer.
    xyz : ndarray (N, 3)
        Coordinates, Å, ``st[0].all()`` order.
    parallel : bool, optional
        Force the threaded or the serial drivers (default: by model size, see :mod:`.threads`).

    Returns
    -------
    (float, ndarray (N, 3))
        Target (sum of squared σ-scaled deviations, see module docstring) and dT/dxyz
        (1/Å), zero rows for fixed atoms.
    """
    grad = np.empty((r.n_atoms, 3))
    terms = energy_terms(r, xyz, grad, parallel=parallel)
    return float(sum(terms.values())), grad


@njit(cache=True)
def bond_devs(xyz, idx, ideal):
    """Bond length minus its ideal (Å) of each bond ``idx`` (M, 2) at coordinates ``xyz`` (N, 3, Å)."""
    out = np.empty(ideal.shape[0])
    for k in range(ideal.shape[0]):
        i = idx[k, 0]
        j = idx[k, 1]
        out[k] = math.sqrt((xyz[i, 0] - xyz[j, 0]) ** 2 + (xyz[i, 1] - xyz[j, 1]) ** 2
                           + (xyz[i, 2] - xyz[j, 2]) ** 2) - ideal[k]
    return out


@njit(cache=True)
def angle_devs(xyz, idx, ideal):
    """Bond angle minus its ideal (degrees) of each angle ``idx`` (M, 3; vertex in the middle)."""
    out = np.empty(ideal.shape[0])
    for k in range(ideal.shape[0]):
        i = idx[k, 0]
        j = idx[k, 1]
        l = idx[k, 2]
        u = xyz[i] - xyz[j]
        v = xyz[l] - xyz[j]
        cs = (u[0] * v[0] + u[1] * v[1] + u[2] * v[2]) / math.sqrt(
            (u[0] ** 2 + u[1] ** 2 + u[2] ** 2) * (v[0] ** 2 + v[1] ** 2 + v[2] ** 2) + 1e-300)
        out[k] = math.acos(min(1.0, max(-1.0, cs))) * DEG - ideal[k]
    return out


@njit(cache=True)
def dihedral_angles(xyz, idx):
    """Dihedral angle (radians) of each atom quadruple ``idx`` (M, 4) of ``xyz`` (N, 3), and whether it is
    defined (False where three of its atoms are collinear; see :func:`dihedral_gradient`)."""
    phi = np.empty(idx.shape[0])
    ok = np.empty(idx.shape[0], np.bool_)
    dg = np.empty((4, 3))
    for k in range(idx.shape[0]):
        phi[k], ok[k] = dihedral_gradient(xyz, idx[k, 0], idx[k, 1], idx[k, 2], idx[k, 3], dg)
    return phi, ok


@njit(cache=True)
def torsion_devs(xyz, idx, ideal, period):
    """Torsion angle minus its ideal (degrees), folded into ±180/period, of each torsion ``idx`` (M, 4)."""
    phi, _ok = dihedral_angles(xyz, idx)
    out = np.empty(ideal.shape[0])
    for k in range(ideal.shape[0]):
        out[k] = fold_period(phi[k] * DEG - ideal[k], period[k])
    return out


@njit(cache=True)
def _chiral_devs(xyz, idx, ideal, both):
    out = np.empty(ideal.shape[0])
    for k in range(ideal.shape[0]):
        v = _chiral_volume(xyz, idx[k, 0], idx[k, 1], idx[k, 2], idx[k, 3])
        out[k] = abs(v) - abs(ideal[k]) if both[k] else v - ideal[k]
    return out


@njit(cache=True)
def _plane_devs(xyz, atoms, offsets):
    out = np.empty(atoms.shape[0])
    for k in range(offsets.shape[0] - 1):
        lo = offsets[k]
        hi = offsets[k + 1]
        cx, cy, cz, nx, ny, nz = _plane_normal(xyz, atoms, lo, hi)
        for t in range(lo, hi):
            a = atoms[t]
            out[t] = (xyz[a, 0] - cx) * nx + (xyz[a, 1] - cy) * ny + (xyz[a, 2] - cz) * nz
    return out


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


#: The headline geometry figures reported before/after refinement (all keys of :func:`geometry_stats`).
GEOMETRY_KEYS = ("bond_rmsd", "angle_rmsd", "chirality_rmsd", "planarity_rmsd", "torsion_rmsd",
                 "nonbonded_overlaps")


def geometry_stats(r: Restraints, xyz: np.ndarray) -> dict:
    """Geometry deviations from the restraint library (what phenix/MolProbity report).

    Returns
    -------
    dict
        ``bond_rmsd`` (Å), ``angle_rmsd`` (deg): RMS deviation from the library ideal over
        all bond/angle restraints (hydrogens included when present, as phenix does);
        ``chirality_rmsd`` (Å³): RMS of ``V - V0``; ``planarity_rmsd`` (Å): RMS distance of
        plane atoms to their least-squares planes; ``torsion_rmsd`` (deg): restrained
        torsions (σ > 0) after periodicity; ``nonbonded_overlaps``: MolProbity/Probe-style
        clash count -- pairs of atoms not 1-2/1-3/1-4 related, not an H-bond donor/acceptor
        pair, not metal contacts, not alternative conformers of each other, closer than the
        sum of their Probe vdW radii minus 0.4 Å (Word et al. 1999; C 1.70, N 1.55,
        O 1.40, S 1.80, H 1.17, polar H 1.00 Å). Without hydrogens in the model the count is a
        heavy-atom-only lower bound of MolProbity's. ``max_bond_dev`` (Å), ``max_angle_dev``
        (deg), ``n_bonds``, ``n_angles``, ``n_torsions``, ``n_chirals``, ``n_planes``.
    """
    xyz = _check_xyz(r, xyz)
    bd = bond_devs(xyz, r.bonds.idx, r.bonds.ideal)
    ad = angle_devs(xyz, r.angles.idx, r.angles.ideal)
    tmask = r.torsions.sigma > 0
    td = torsion_devs(xyz, r.torsions.idx[tmask], r.torsions.ideal[tmask], r.torsions.period[tmask])
    cd = _chiral_devs(xyz, r.chirals.idx, r.chirals.ideal, r.chirals.both)
    pd = _plane_devs(xyz, r.planes.atoms, r.planes.offsets)
    nb = r.nonbonded
    overlaps = 0
    if nb is not None:
        nb.update(xyz)
        overlaps = int(count_overlaps(xyz, nb.pi, nb.pj, nb.kind, probe_radii(r), r.hb_type, CLASH_OVERLAP))
    return {
        "bond_rmsd": _rms(bd),
        "angle_rmsd": _rms(ad),
        "chirality_rmsd": _rms(cd),
        "planarity_rmsd": _rms(pd),
        "torsion_rmsd": _rms(td),
        "nonbonded_overlaps": overlaps,
        "max_bond_dev": float(np.abs(bd).max()) if bd.size else 0.0,
        "max_angle_dev": float(np.abs(ad).max()) if ad.size else 0.0,
        "n_bonds": int(len(r.bonds)),
        "n_angles": int(len(r.angles)),
        "n_torsions": int(len(r.torsions)),
        "n_chirals": int(len(r.chirals)),
        "n_planes": int(len(r.planes)),
    }


def bond_angle_rmsds(r: Restraints, xyz: np.ndarray, *, heavy_only: bool = False) -> dict:
    """RMS deviations (from the library ideals) of bond lengths (Å) and angles (deg).

    With ``heavy_only`` only restraints among non-hydrogen atoms count (what cctbx/MolProbity
    report for models validated without hydrogens); otherwise every bond and angle, as
    :func:`geometry_stats`. Returns ``bond_rmsd``, ``angle_rmsd``, ``n_bonds``, ``n_angles``.
    """
    xyz = _check_xyz(r, xyz)
    b_idx, b_ideal = r.bonds.idx, r.bonds.ideal
    a_idx, a_ideal = r.angles.idx, r.angles.ideal
    if heavy_only:
        heavy = (r.element != "H") & (r.element != "D")
        kb = heavy[b_idx].all(axis=1)
        ka = heavy[a_idx].all(axis=1)
        b_idx, b_ideal = np.ascontiguousarray(b_idx[kb]), b_ideal[kb]
        a_idx, a_ideal = np.ascontiguousarray(a_idx[ka]), a_ideal[ka]
    bd = bond_devs(xyz, b_idx, b_ideal)
    ad = angle_devs(xyz, a_idx, a_ideal)
    return {"bond_rmsd": _rms(bd), "angle_rmsd": _rms(ad), "n_bonds": int(bd.size), "n_angles": int(ad.size)}
