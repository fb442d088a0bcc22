"""Hydrogens for refinement of models deposited without them.

What the all-atom clashscore counts (Word et al. 1999, MolProbity) are overlaps of atoms *with
hydrogens present*: on 7CEC 109 of the 125 clashes today's refinement added involve hydrogens,
which the heavy-atom repulsion cannot see. So a model without hydrogens is refined with them:
:func:`add_hydrogens` places riding hydrogens from the CCP4 monomer library through gemmi's
topology (``HydrogenChange.ReAddButWater``: at the library's X-H distances, waters get none,
residues without a dictionary keep what they have); they are then ordinary atoms of the
refinement, held by the library's bond, angle and torsion restraints to their heavy atoms
(riding in effect: sigma 0.02 Å on X-H), and take part in the repulsion and the clash guard
with Probe radii; :func:`strip_added` removes them from the refined model, so the output has the
atoms of the input. Models that already carry hydrogens are refined as they are.
"""

from __future__ import annotations

import io
import os

import gemmi

from rerefine.common.errors import InputError


def has_hydrogens(st: gemmi.Structure) -> bool:
    """True when the first model has at least one H or D atom."""
    return any(c.atom.is_hydrogen() for c in st[0].all())


def add_hydrogens(st: gemmi.Structure, monlib_dir: str | os.PathLike) -> gemmi.Structure:
    """A copy of the first model of ``st`` with riding hydrogens added (see the module docstring).

    Added atoms carry the B of their heavy atom (gemmi) and are marked with the serial ``-1``
    (the input's serials are kept), which :func:`strip_added` uses.
    """
    work = st.clone()
    while len(work) > 1:
        del work[len(work) - 1]
    work.setup_entities()
    for c in work[0].all():
        if c.atom.serial < 0:
            c.atom.serial = 0
    model = work[0]
    label = st.name or "model"
    try:
        monlib = gemmi.read_monomer_lib(os.fspath(monlib_dir), model.get_all_residue_names(), ignore_missing=True)
        gemmi.prepare_topology(work, monlib, model_index=0, h_change=gemmi.HydrogenChange.ReAddButWater,
                               reorder=False, warnings=io.StringIO(), ignore_unknown_links=True)
    except Exception as exc:  # gemmi RuntimeError with a message
        raise InputError(f"{label}: cannot add hydrogens for refinement ({str(exc).splitlines()[0]})") from None
    originals = {(c.chain.name, c.residue.seqid.num, c.residue.seqid.icode, c.atom.name, c.atom.altloc)
                 for c in st[0].all()}
    for c in work[0].all():
        if (c.chain.name, c.residue.seqid.num, c.residue.seqid.icode, c.atom.name, c.atom.altloc) not in originals:
            c.atom.serial = -1
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
