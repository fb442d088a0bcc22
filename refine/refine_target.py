"""The target that coordinate refinement minimises, apart from its data term.

* :func:`refinement_restraints`: the library restraints as used for refinement (which torsions
  carry weight);
* :func:`restrained_target`: data term + restraints (+ clash guard) + the harmonic restraint of
  every refined atom to its reference position (sigma :data:`REFERENCE_SIGMA`, the form of
  Phenix's reference-coordinate restraints, Afonine et al. 2018, Acta Cryst. D74:531);
* :func:`model_geometry`: bond/angle RMSD of the model itself when riding hydrogens were added
  for refinement.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

#: Å, sigma of the harmonic restraint of every refined atom to its input position
#: (``sum |x - x_in|^2 / sigma^2``, the form of Phenix's optional reference-coordinate
#: restraints): the map-value target alone moves deposited models by ~0.8 Å RMS at 3-4 Å and
#: cannot average the noise of a shaken start; a looser restraint follows the map, not the
#: deposited model (benchmarks/bench_refine.py).
REFERENCE_SIGMA = 0.15

#: Torsion labels not restrained during refinement: backbone phi/psi of the peptide links
#: carry one generic value (e.g. psi 160 deg) that would drag helices towards strands;
#: Phenix restrains them only through optional Ramachandran restraints.
UNRESTRAINED_TORSIONS = ("phi", "psi")
#: Torsions kept at their library sigma; the others (side-chain chi and the generic ``sp3_sp3``
#: / ``sp2_sp3`` torsions of ligands) get ``TORSION_SIGMA_SCALE`` times theirs: the library's
#: 10 deg on a staggered chi pulls side chains off their density.
FULL_WEIGHT_TORSIONS = ("omega",)
TORSION_SIGMA_SCALE = 2.5


def _ring_bonds(n: int, bonds: np.ndarray, max_ring: int = 8) -> set:
    """Bonds (i, j), i < j, that close a ring of at most ``max_ring`` atoms."""
    adj: list[list[int]] = [[] for _ in range(n)]
    for i, j in bonds.tolist():
        adj[i].append(j)
        adj[j].append(i)
    ring = set()
    for i, j in bonds.tolist():
        # breadth-first search from i to j without the bond i-j itself
        frontier = {i}
        seen = {i}
        found = False
        for _ in range(max_ring - 1):
            nxt = set()
            for a in frontier:
                for b in adj[a]:
                    if (a == i and b == j) or b in seen:
                        continue
                    if b == j:
                        found = True
                        break
                    nxt.add(b)
                if found:
                    break
            if found or not nxt:
                break
            seen |= nxt
            frontier = nxt
        if found:
            ring.add((min(i, j), max(i, j)))
    return ring


def refinement_restraints(r):
    """The restraints as used for refinement: same arrays, but no weight on some torsions.

    Torsions get ``sigma = 0`` (the geometry kernels skip them) when their label is in
    :data:`UNRESTRAINED_TORSIONS`, or when their central bond lies in a ring: ring
    conformations (proline puckers, porphyrins) are fixed by bonds, angles and planes, and
    the library's generic staggered values for ring torsions (``sp3_sp3_*`` of acedrg
    dictionaries) contradict ring closure. Other torsions except omega are loosened by
    :data:`TORSION_SIGMA_SCALE`. Returns a shallow copy; ``r`` is not changed.
    """
    from .restraints import TorsionSet

    t = r.torsions
    sigma = np.array(t.sigma, dtype=np.float64, copy=True)
    if len(sigma):
        ring = _ring_bonds(r.n_atoms, np.asarray(r.bonds.idx))
        for k in range(len(sigma)):
            lab = t.label[k] if k < len(t.label) else ""
            j, l = int(t.idx[k, 1]), int(t.idx[k, 2])
            if lab in UNRESTRAINED_TORSIONS or (min(j, l), max(j, l)) in ring:
                sigma[k] = 0.0
            elif lab not in FULL_WEIGHT_TORSIONS:
                sigma[k] *= TORSION_SIGMA_SCALE
    tors = TorsionSet(t.idx, t.ideal, sigma, t.period, list(t.label))
    return replace(r, torsions=tors)


def restrained_target(x, p, data_e, data_g, r, free, guard, ref_k, p_ref):
    """Target on the free atoms: data term + restraints (+ clash guard) + reference-position restraint.

    ``x`` all positions (Å, (N, 3)), ``p`` the free ones flattened, ``data_e``/``data_g`` the data
    term and its gradient (N, 3), ``guard`` a :class:`.nonbonded.ClashGuard` or None, ``ref_k``
    (Å^-2) the reference restraint's ``1/sigma^2`` (a number, or one per coordinate of ``p``) and
    ``p_ref`` its positions (flattened like ``p``); returns the energy and the gradient with respect to ``p``.
    """
    from .geometry import restraint_energy_gradient

    er, grr = restraint_energy_gradient(r, x)
    g = data_g + grr
    ec = guard.energy_gradient(x, g) if guard is not None else 0.0
    gf = g[free].ravel()
    if np.any(ref_k):
        d = p - p_ref
        ec += float(np.sum(ref_k * d * d))
        gf = gf + 2.0 * ref_k * d
    return data_e + er + ec, gf


def model_geometry(r_full, r_geo, h_added, xyz) -> dict:
    """:func:`.geometry.geometry_stats` of the model as given: with hydrogens added for refinement
    (``h_added``, bool per atom), on the input's own restraints ``r_geo`` and atoms (the added ones
    dropped); else on ``r_full``."""
    from .geometry import geometry_stats

    if r_geo is None:
        return geometry_stats(r_full, xyz)
    return geometry_stats(r_geo, xyz[~h_added])
