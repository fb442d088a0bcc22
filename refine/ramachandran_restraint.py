"""Ramachandran restraint: Top8000 (phi, psi) landscapes and densities as a refinement pseudo-energy.

Form
----
For every amino acid ``i`` linked to both neighbours by a peptide bond, with backbone
dihedrals ``phi_i = C(i-1)-N(i)-CA(i)-C(i)`` and ``psi_i = N(i)-CA(i)-C(i)-N(i+1)``::

    E_rama = - w * sum_i U_c(i)(phi_i, psi_i)
    U_c    = V_c + lambda * ln(max(p_c, p_floor))

* ``V`` is the smooth, differentiable Top8000 landscape made for use as an energy
  (``*.rama.combined.data``: ala for general and Ile/Val, gly, pro for cis and trans Pro,
  prepro), dimensionless, larger is more favourable: about +17 in the alpha-helix core, +4
  in the beta region, down to -26 where no residue goes (-84 for pre-Pro). It has a slope
  everywhere, also deep in disallowed regions.
* ``p`` is the Top8000 density that MolProbity validation classifies with
  (``rama8000-*.data``; favoured at ``p >= 0.02``, outlier below 0.0005 (general) or 0.001;
  peaks are 1), in MolProbity's six categories :data:`CATEGORIES` (general, Gly, trans-Pro,
  cis-Pro (peptide before it restrained cis), pre-Pro (non-Gly, non-Pro followed by Pro),
  Ile/Val). ``ln p`` makes the refinement see the very contours it is judged by: the
  landscape ``V`` alone let a Gly of 7CEC slide from allowed (p 0.0057) into the outlier
  region, where ``V`` is no lower. ``p_floor`` (:data:`DENSITY_FLOOR`) bounds the log.

Both grids are 2 deg, 180 x 180 points at -179, -177, ..., 179 deg, periodic in both angles;
``U`` is built on that grid once and interpolated with periodic bicubic Catmull-Rom
convolution (C1-continuous), so the analytic gradient
``dE/dx = -w (dU/dphi dphi/dx + dU/dpsi dpsi/dx)`` through the dihedral derivatives (Blondel &
Karplus 1996, :func:`rerefine.refine.geometry.dihedral_gradient`) is exact for the interpolant.

This is what Phenix does for real-space refinement (Ramachandran plot restraints, on by
default; its ``emsley8k`` potential uses the same Top8000 data) and Coot's "Ramachandran
restraints". ``w`` (:data:`RAMA_WEIGHT`) is in units of the restraint target (sum of squared
sigma-scaled deviations, i.e. -2 ln L for a Gaussian); ``lambda`` (:data:`DENSITY_SCALE`).
Both were measured on 5ME2/EMD-3488 and 7CEC/EMD-30342 (benchmarks/bench_refine_validation.py).

Data
----
The Top8000 Ramachandran data of MolProbity (Richardson lab; Williams et al. 2018, "MolProbity:
More and better reference data for improved all-atom structure validation", Protein Sci
27:293-315), CC-BY 4.0, read from the Top8000 folder the validation reads (``RR_TOP8000``:
``ramachandran/*.rama.combined.data`` and ``rama8000-*.data``), once per process.

Residues left out (no term): residues missing any of the five backbone atoms, residues whose
backbone atoms carry alternative conformers, chain ends and residues next to a chain break
(no peptide bond restraint to a neighbour: see ``realspace.refinement_topology``), residues
of which any of the five atoms is fixed (no dictionary), and D-amino acids (:data:`.validation.residues.D_AMINO`;
their landscapes would be the mirror images).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
from numba import njit

from rerefine.common.errors import InputError

from .geometry import dihedral_gradient
from .validation.residues import D_AMINO
from .validation.tables import default_top8000_dir, read_table

#: MolProbity's Ramachandran categories, the order of the ``density`` grids.
CATEGORIES = ("general", "gly", "transpro", "cispro", "prepro", "ileval")
#: Which combined landscape (ala, gly, pro, prepro) each category uses.
COMBINED_OF = (0, 1, 2, 2, 3, 0)
#: Weight ``w`` of ``-w U`` in the restraint target (dimensionless). Measured, see the module docstring.
RAMA_WEIGHT = 1.0
#: ``lambda``: weight of ``ln p`` relative to ``V`` inside ``U``.
DENSITY_SCALE = 4.0
#: Floor of the density under the log (below MolProbity's outlier limits 0.0005 / 0.001).
DENSITY_FLOOR = 1.0e-5


#: The combined landscapes (ala, gly, pro, prepro) and the validation densities (:data:`CATEGORIES`
#: order), file stems under the Top8000 folder's ``ramachandran/``.
COMBINED_FILES = ("ala", "gly", "pro", "prepro")
DENSITY_FILES = ("rama8000-general-noGPIVpreP", "rama8000-gly-sym", "rama8000-transpro", "rama8000-cispro",
                 "rama8000-prepro-noGP", "rama8000-ileval-nopreP")


def _read_combined(path: Path) -> np.ndarray:
    """(180, 180) grid ``[phi, psi]`` of one ``*.rama.combined.data`` file (lines ``value phi psi``,
    phi and psi from -179 to 179 deg in 2-deg steps)."""
    if not path.is_file():
        raise InputError(f"{path}: Top8000 landscape not found (set RR_TOP8000 to the Top8000 folder)")
    a = np.loadtxt(path, ndmin=2)
    if a.shape != (180 * 180, 3):
        raise InputError(f"{path}: expected 32400 lines of 'value phi psi', got {a.shape[0]}")
    grid = np.full((180, 180), np.nan)
    grid[np.rint((a[:, 1] + 179.0) / 2.0).astype(int), np.rint((a[:, 2] + 179.0) / 2.0).astype(int)] = a[:, 0]
    if np.isnan(grid).any():
        raise InputError(f"{path}: grid points missing")
    return grid


def landscapes(top8000_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The Top8000 grids: ``combined`` ``(4, 180, 180)`` (ala, gly, pro, prepro) and
    ``density`` ``(6, 180, 180)`` (:data:`CATEGORIES`), float64, indexed ``[k, phi, psi]``;
    grid point ``[k, i, j]`` is at ``phi = -179 + 2 i``, ``psi = -179 + 2 j`` degrees.

    Read from ``top8000_dir`` (default :func:`rerefine.refine.validation.tables.default_top8000_dir`,
    i.e. ``RR_TOP8000``), the same folder the validation reads, once per process."""
    return _landscapes(str(top8000_dir or default_top8000_dir()))


@lru_cache(maxsize=2)
def _landscapes(top8000_dir: str) -> tuple[np.ndarray, np.ndarray]:
    root = Path(top8000_dir) / "ramachandran"
    comb = np.stack([_read_combined(root / f"{f}.rama.combined.data") for f in COMBINED_FILES])
    dens = np.stack([read_table(root / f"{f}.data").values.reshape(180, 180) for f in DENSITY_FILES])
    comb.setflags(write=False)
    dens.setflags(write=False)
    return comb, dens


def potential_table(density_scale: float = DENSITY_SCALE, top8000_dir: str | Path | None = None) -> np.ndarray:
    """``U`` on the grid, ``(6, 180, 180)`` in :data:`CATEGORIES` order (see the module docstring)."""
    return _potential_table(str(top8000_dir or default_top8000_dir()), float(density_scale))


@lru_cache(maxsize=4)
def _potential_table(top8000_dir: str, density_scale: float) -> np.ndarray:
    comb, dens = _landscapes(top8000_dir)
    u = comb[list(COMBINED_OF)] + density_scale * np.log(np.maximum(dens, DENSITY_FLOOR))
    u.setflags(write=False)
    return u


@njit(cache=True)
def _catmull_rom(t):
    """Catmull-Rom weights of the 4 grid points around fraction ``t`` and their derivatives d/dt."""
    t2 = t * t
    t3 = t2 * t
    w0 = 0.5 * (-t3 + 2.0 * t2 - t)
    w1 = 0.5 * (3.0 * t3 - 5.0 * t2 + 2.0)
    w2 = 0.5 * (-3.0 * t3 + 4.0 * t2 + t)
    w3 = 0.5 * (t3 - t2)
    d0 = 0.5 * (-3.0 * t2 + 4.0 * t - 1.0)
    d1 = 0.5 * (9.0 * t2 - 10.0 * t)
    d2 = 0.5 * (-9.0 * t2 + 8.0 * t + 1.0)
    d3 = 0.5 * (3.0 * t2 - 2.0 * t)
    return (w0, w1, w2, w3), (d0, d1, d2, d3)


@njit(cache=True)
def landscape_value(table, cat, phi, psi):
    """Interpolated ``table[cat]`` and its d/dphi, d/dpsi (per degree) at ``phi``, ``psi`` (degrees)."""
    u = (phi + 179.0) / 2.0
    v = (psi + 179.0) / 2.0
    iu = math.floor(u)
    iv = math.floor(v)
    wu, du = _catmull_rom(u - iu)
    wv, dv = _catmull_rom(v - iv)
    val = 0.0
    gphi = 0.0
    gpsi = 0.0
    for a in range(4):
        ia = (iu - 1 + a) % 180
        for b in range(4):
            ib = (iv - 1 + b) % 180
            t = table[cat, ia, ib]
            val += wu[a] * wv[b] * t
            gphi += du[a] * wv[b] * t
            gpsi += wu[a] * dv[b] * t
    return val, 0.5 * gphi, 0.5 * gpsi


@njit(cache=True)
def rama_energy_gradient(xyz, idx, cat, table, wts, g):
    """``-sum_k w_k U(phi_k, psi_k)`` over rows ``idx`` (n, 5) = C(i-1), N, CA, C, N(i+1), weights
    ``wts`` (n,); adds dE/dxyz into ``g``."""
    deg = 180.0 / math.pi
    acc = 0.0
    d1 = np.empty((4, 3))
    d2 = np.empty((4, 3))
    for k in range(idx.shape[0]):
        phi, ok1 = dihedral_gradient(xyz, idx[k, 0], idx[k, 1], idx[k, 2], idx[k, 3], d1)
        psi, ok2 = dihedral_gradient(xyz, idx[k, 1], idx[k, 2], idx[k, 3], idx[k, 4], d2)
        if not (ok1 and ok2):
            continue
        weight = wts[k]
        val, gphi, gpsi = landscape_value(table, cat[k], phi * deg, psi * deg)
        acc -= weight * val
        fphi = -weight * gphi * deg  # dE/dphi per radian
        fpsi = -weight * gpsi * deg
        for a in range(4):
            at = idx[k, a]
            for t in range(3):
                g[at, t] += fphi * d1[a, t]
            at = idx[k, a + 1]
            for t in range(3):
                g[at, t] += fpsi * d2[a, t]
    return acc


@njit(cache=True)
def density_bilinear(dens, cat, phi, psi):
    """Top8000 density of category ``cat`` at ``phi``, ``psi`` (degrees), bilinear on the periodic
    grid (the interpolation MolProbity's table lookup uses)."""
    u = (phi + 179.0) / 2.0
    v = (psi + 179.0) / 2.0
    iu = math.floor(u)
    iv = math.floor(v)
    tu = u - iu
    tv = v - iv
    i0, i1 = iu % 180, (iu + 1) % 180
    j0, j1 = iv % 180, (iv + 1) % 180
    return ((1 - tu) * (1 - tv) * dens[cat, i0, j0] + (1 - tu) * tv * dens[cat, i0, j1]
            + tu * (1 - tv) * dens[cat, i1, j0] + tu * tv * dens[cat, i1, j1])


#: MolProbity's Ramachandran classes on the Top8000 density: favoured at ``p >= 0.02``, outlier
#: below 0.0005 for the general category and 0.001 for the others (Williams et al. 2018).
FAVORED_P = 0.02
OUTLIER_P = (0.0005, 0.001, 0.001, 0.001, 0.001, 0.001)
#: Validation watch (:meth:`RamachandranRestraint.watch`): factor on the weight of a residue whose
#: class got worse than in the input model, and the largest total factor.
WATCH_FACTOR = 4.0
WATCH_MAX = 64.0


class RamachandranRestraint:
    """The Ramachandran term of one model: which residues, which landscape, what weight.

    Attributes
    ----------
    idx : ndarray of int64 (n, 5)
        Atoms C(i-1), N(i), CA(i), C(i), N(i+1) per restrained residue.
    category : ndarray of int64 (n,)
        Index into :data:`CATEGORIES`.
    residue : ndarray of int64 (n,)
        Residue serial (model order) of each restrained residue.
    weight : float
        ``w`` of ``-w U``.
    table : ndarray (6, 180, 180)
        ``U`` on the grid (:func:`potential_table`).
    """

    def __init__(self, idx: np.ndarray, category: np.ndarray, residue: np.ndarray, weight: float = RAMA_WEIGHT,
                 density_scale: float = DENSITY_SCALE, top8000_dir: str | Path | None = None):
        self.idx = np.ascontiguousarray(idx, dtype=np.int64).reshape(-1, 5)
        self.category = np.ascontiguousarray(category, dtype=np.int64)
        self.residue = np.ascontiguousarray(residue, dtype=np.int64)
        self.weight = float(weight)
        self.top8000_dir = top8000_dir
        self.table = potential_table(float(density_scale), top8000_dir)
        self.row_weight = np.ones(len(self.idx))
        self.class_ref = None

    def __len__(self) -> int:
        return len(self.idx)

    def energy_gradient(self, xyz: np.ndarray, grad: np.ndarray) -> float:
        """Energy; adds the gradient (1/Å) into ``grad`` (N, 3)."""
        if not len(self.idx) or self.weight == 0.0:
            return 0.0
        return float(rama_energy_gradient(xyz, self.idx, self.category, self.table, self.weight * self.row_weight,
                                          grad))

    def classes(self, xyz: np.ndarray) -> np.ndarray:
        """MolProbity class of each restrained residue: 0 favoured, 1 allowed, 2 outlier
        (:data:`FAVORED_P`, :data:`OUTLIER_P` on the Top8000 density, bilinear)."""
        dens = landscapes(self.top8000_dir)[1]
        pp = self.phi_psi(xyz)
        out = np.zeros(len(self.idx), dtype=np.int64)
        for k in range(len(self.idx)):
            c = int(self.category[k])
            p = density_bilinear(dens, c, pp[k, 0], pp[k, 1])
            out[k] = 0 if p >= FAVORED_P else (2 if p < OUTLIER_P[c] else 1)
        return out

    def watch(self, xyz: np.ndarray) -> int:
        """Validation watch: raise the weight of residues whose class is worse than in the input.

        The first call records the classes of ``xyz`` as the reference (call it with the input
        model). Later calls multiply by :data:`WATCH_FACTOR` (up to :data:`WATCH_MAX`) the weight
        of every residue now in a worse class (favoured to allowed or outlier, allowed to outlier)
        than in the reference, so that the next minimisation pulls it back unless the map holds it
        there harder. Returns how many residues were raised.
        """
        cls = self.classes(xyz)
        if self.class_ref is None:
            self.class_ref = cls
            return 0
        worse = (cls > self.class_ref) & (self.row_weight < WATCH_MAX)
        self.row_weight[worse] = np.minimum(self.row_weight[worse] * WATCH_FACTOR, WATCH_MAX)
        return int(worse.sum())

    def phi_psi(self, xyz: np.ndarray) -> np.ndarray:
        """(n, 2) phi, psi in degrees of the restrained residues."""
        out = np.empty((len(self.idx), 2))
        d = np.empty((4, 3))
        for k, row in enumerate(self.idx):
            out[k, 0] = dihedral_gradient(xyz, row[0], row[1], row[2], row[3], d)[0]
            out[k, 1] = dihedral_gradient(xyz, row[1], row[2], row[3], row[4], d)[0]
        return np.degrees(out)


def ramachandran_restraint(st, r, weight: float = RAMA_WEIGHT, density_scale: float = DENSITY_SCALE,
                           top8000_dir: str | Path | None = None) -> RamachandranRestraint:
    """The Ramachandran term for the first model of ``st`` with restraints ``r``.

    A residue is restrained when both its peptide bonds (C(i-1)-N(i) and C(i)-N(i+1)) are bond
    restraints of ``r`` (so chain breaks and unlinked neighbours give no phi or psi), all five
    atoms are present without alternative conformers and none is fixed. A proline is cis-Pro
    when the omega restraint of its peptide has ideal 0 (see ``realspace.refinement_topology``).
    See the module docstring for the categories.
    """
    cras = list(st[0].all())
    bonded = {(int(i), int(j)) for i, j in np.asarray(r.bonds.idx).tolist()}
    bonded |= {(j, i) for i, j in bonded}
    cis_n = set()
    t = r.torsions
    for k, lab in enumerate(t.label):
        if lab == "omega" and abs(float(t.ideal[k])) < 90.0:
            cis_n.add(int(t.idx[k, 2]))
    res_atoms: dict[int, dict[str, int]] = {}
    res_name: dict[int, str] = {}
    for i, c in enumerate(cras):
        rid = int(r.residue[i])
        res_name[rid] = c.residue.name
        if c.atom.name in ("N", "CA", "C") and not r.altloc[i] and not r.fixed[i]:
            res_atoms.setdefault(rid, {})[c.atom.name] = i
    rows, cats, rids = [], [], []
    for rid, at in res_atoms.items():
        name = res_name[rid]
        if len(at) < 3 or name in D_AMINO:
            continue
        prev, nxt = res_atoms.get(rid - 1, {}), res_atoms.get(rid + 1, {})
        if "C" not in prev or "N" not in nxt:
            continue
        if (prev["C"], at["N"]) not in bonded or (at["C"], nxt["N"]) not in bonded:
            continue
        if name == "GLY":
            cat = 1
        elif name == "PRO":
            cat = 3 if at["N"] in cis_n else 2
        elif res_name.get(rid + 1) == "PRO":
            cat = 4
        elif name in ("ILE", "VAL"):
            cat = 5
        else:
            cat = 0
        rows.append((prev["C"], at["N"], at["CA"], at["C"], nxt["N"]))
        cats.append(cat)
        rids.append(rid)
    return RamachandranRestraint(np.array(rows, dtype=np.int64).reshape(-1, 5), np.array(cats, dtype=np.int64),
                                 np.array(rids, dtype=np.int64), weight, density_scale, top8000_dir)
