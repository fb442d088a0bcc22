"""Hydrogens for refinement of models deposited without them.

What the all-atom clashscore counts (Word et al. 1999, MolProbity) are overlaps of atoms *with
hydrogens present*: most clashes a heavy-atom-only refinement adds (on 7CEC, nearly all)
involve hydrogens, which the heavy-atom repulsion cannot see. So a model without hydrogens is refined with them:
:func:`add_hydrogens` places riding hydrogens from the CCP4 monomer library the way the
validation does for its clashscore; they are then ordinary atoms of the refinement, held by the library's bond, angle and torsion restraints to their heavy atoms
(riding in effect: sigma 0.02 Å on X-H), and take part in the repulsion and the clash guard
with Probe radii; :func:`strip_added` removes them from the refined model, so the output has the
atoms of the input. Models that already carry hydrogens are refined as they are.
"""

from __future__ import annotations

import os

import gemmi


def has_hydrogens(st: gemmi.Structure) -> bool:
    """True when the first model has at least one H or D atom."""
    return any(c.atom.is_hydrogen() for c in st[0].all())


def add_hydrogens(st: gemmi.Structure, monlib_dir: str | os.PathLike) -> gemmi.Structure:
    """A copy of the first model of ``st`` with riding hydrogens added, placed as the validation
    places them for the clashscore (:func:`rerefine.refine.validation.hydrogens.add_hydrogens`:
    library X-H distances, neutral His with HE2), so refinement avoids the very contacts counted.

    Added atoms are marked with the serial ``-1`` (the input's serials are kept), which
    :func:`strip_added` uses, and get occupancy 0: the map neither pulls nor sees them.
    """
    from .validation.hydrogens import add_hydrogens as place

    src = st.clone()
    for c in src[0].all():
        if c.atom.serial < 0:
            c.atom.serial = 0
    work = place(src, monlib_dir)
    originals = {(c.chain.name, c.residue.seqid.num, c.residue.seqid.icode, c.atom.name, c.atom.altloc)
                 for c in src[0].all()}
    for c in work[0].all():
        if (c.chain.name, c.residue.seqid.num, c.residue.seqid.icode, c.atom.name, c.atom.altloc) not in originals:
            c.atom.serial = -1
            c.atom.occ = 0.0  # riding: no map term, no scattering in the model map
    # gemmi decides links from the coordinates: a stretched C-N (a model with errors) becomes a chain
    # break and the next residue gets N-terminal H2/H3, which the refinement's own peptide links
    # (realspace.refinement_topology) leave without any restraint; drop them after a consecutive residue
    from .chain_breaks import consecutive

    for ch in work[0]:
        for k in range(1, len(ch)):
            if not consecutive(ch[k - 1], ch[k]) or ch[k - 1].find_atom("C", "*") is None:
                continue
            res = ch[k]
            for m in range(len(res) - 1, -1, -1):
                if res[m].serial == -1 and res[m].name in ("H2", "H3"):
                    del res[m]
    return work


def strip_added(st: gemmi.Structure) -> int:
    """Remove the atoms :func:`add_hydrogens` added (serial -1) from ``st`` in place; returns how many."""
    n = 0
    for ch in st[0]:
        for res in ch:
            for k in range(len(res) - 1, -1, -1):
                if res[k].serial == -1:
                    del res[k]
                    n += 1
    return n
