"""Weight control of refinement (refine/weight_control.py): the automatic weight's step rule, the
per-residue classes the validation-aware acceptance reads, the acceptance itself and the per-chain
data weights. References: cctbx's ramalyze/rotalyze classes of the deposited models
(../shared/data/reference/molprobity_reference.json, Top8000 contours, Williams et al. 2018,
Protein Sci. 27:293, CC-BY 4.0)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rerefine.refine import modelio
from rerefine.refine.ramachandran_restraint import ramachandran_restraint
from rerefine.refine.realspace import refinement_restraints, refinement_topology
from rerefine.refine.restraints import atom_xyz
from rerefine.refine.weight_control import (CHAIN_FACTOR_STEP, ROTAMER_MAP_GAIN, ClassWatch, adjust_weight)

MODELS = {"5me2_deposited": "maps_models/emd_3488_5me2/5me2.pdb",
          "7cec_A_deposited": "maps_models/emd_30342_zone_7cec_chainA/390_7cec_A.cif"}
CLASS = {"Favored": 0, "Allowed": 1, "OUTLIER": 2}


def _watch(test_data, key):
    st = modelio.read_model(test_data / MODELS[key])
    r = refinement_restraints(refinement_topology(st, test_data / "monomers"))
    xyz = atom_xyz(st)
    r.ramachandran = ramachandran_restraint(st, r)
    return st, r, xyz, ClassWatch(st, r, xyz)


def _labels(st, r):
    lab = {}
    for i, c in enumerate(st[0].all()):
        lab.setdefault(int(r.residue[i]), f"{c.chain.name}:{c.residue.seqid.num}:{c.residue.name}")
    return lab


def test_adjust_weight_steps_are_bounded():
    # excess 2 -> weight / 4 (the floor), 1.5 -> / 2.25, inside 0.8-1.25 unchanged, 0.25 -> x2 (the cap)
    assert adjust_weight(8.0, 0.02, 1.0, 0.01, 1.0) == pytest.approx(2.0)
    assert adjust_weight(9.0, 0.01, 1.5, 0.01, 1.0) == pytest.approx(4.0)
    assert adjust_weight(3.0, 0.011, 0.9, 0.01, 1.0) == 3.0
    assert adjust_weight(3.0, 0.0025, 0.2, 0.01, 1.0) == pytest.approx(6.0)


@pytest.mark.parametrize("key", sorted(MODELS))
def test_classes_match_cctbx(test_data, key):
    """Ramachandran and rotamer classes of the deposited models as cctbx's ramalyze/rotalyze give them
    (every scored residue; the Ramachandran term leaves out chain ends and breaks, cctbx too)."""
    ref = json.loads((test_data / "reference" / "molprobity_reference.json").read_text())[key]
    st, r, xyz, cw = _watch(test_data, key)
    lab = _labels(st, r)
    rama = {lab[int(k)]: int(c) for k, c in zip(cw.rama.residue, cw.rama.classes(xyz))}
    want = {k: CLASS[v["eval"]] for k, v in ref["rama"].items() if k in rama}
    assert len(want) >= 0.98 * len(rama)
    assert {k: rama[k] for k in want} == want
    rota = {lab[int(k)]: int(c) for k, c in zip(cw.rot_res, cw.rotamer_classes(xyz))}
    want = {k: CLASS[v["eval"]] for k, v in ref["rota"].items() if k in rota}
    assert len(want) == len(rota) and len(want) >= ref["rota_summary"]["n_scored"] - 5
    assert {k: rota[k] for k in want} == want


def _rotate(xyz, axis_a, axis_b, atoms, deg):
    """Rotate ``atoms`` about the axis a->b by ``deg``."""
    a, b = xyz[axis_a], xyz[axis_b]
    k = (b - a) / np.linalg.norm(b - a)
    t = np.radians(deg)
    p = xyz[atoms] - a
    out = xyz.copy()
    out[atoms] = a + p * np.cos(t) + np.cross(k, p) * np.sin(t) + np.outer(p @ k, k) * (1 - np.cos(t))
    return out


def _atom(st, chain, num, name):
    for i, c in enumerate(st[0].all()):
        if c.chain.name == chain and c.residue.seqid.num == num and c.atom.name == name:
            return i
    raise KeyError((chain, num, name))


def test_step_into_rotamer_outlier_is_undone_unless_the_map_supports_it(test_data):
    """A chi1 turned 60 deg (eclipsed: a rotamer outlier, cctbx classes the deposited side chain
    Favored) is undone when the map gives its side chain no gain, and kept with a gain of
    ROTAMER_MAP_GAIN."""
    st, r, xyz, cw = _watch(test_data, "5me2_deposited")
    n, ca, cb, og1 = (_atom(st, "A", 118, a) for a in ("N", "CA", "CB", "OG1"))
    cg2 = _atom(st, "A", 118, "CG2")
    after = _rotate(xyz, ca, cb, [og1, cg2], 60.0)
    k = int(np.nonzero(cw.rot_res == r.residue[og1])[0][0])
    assert cw.rot_ref[k] < 2 and cw.rotamer_classes(after)[k] == 2
    keep = lambda x, mask: x  # noqa: E731  (no relaxation: the undone step itself is checked)
    flat = lambda x: np.zeros(len(x))  # noqa: E731
    out, undone = cw.revert_worse(xyz, after, flat, keep)
    assert undone == [int(r.residue[og1])]
    np.testing.assert_array_equal(out, xyz)
    gain = lambda x: np.where(np.all(x == after, axis=1), ROTAMER_MAP_GAIN + 0.01, 0.0)  # noqa: E731
    out, undone = cw.revert_worse(xyz, after, gain, keep)
    assert undone == [] and np.array_equal(out, after)


def test_step_into_ramachandran_outlier_is_undone_and_lowers_that_chains_weight(test_data):
    """psi of 5ME2 B:60 turned by 120 deg (all atoms after CA-C of that residue turned with it: an
    outlier) is undone for the residue and its neighbours; only chain B's data weight goes down."""
    st, r, xyz, cw = _watch(test_data, "5me2_deposited")
    ca, c = _atom(st, "B", 60, "CA"), _atom(st, "B", 60, "C")
    rid = int(r.residue[c])
    chain_b = [i for i, x in enumerate(st[0].all()) if x.chain.name == "B"]
    moving = [i for i in chain_b if r.residue[i] > rid] + [_atom(st, "B", 60, "O")]
    after = _rotate(xyz, ca, c, moving, 120.0)
    k = int(np.nonzero(cw.rama.residue == rid)[0][0])
    assert cw.rama_ref[k] == 0 and cw.rama.classes(after)[k] == 2
    out, undone = cw.revert_worse(xyz, after, lambda x: np.zeros(len(x)), lambda x, mask: x)
    assert {rid - 1, rid, rid + 1} <= set(undone)
    assert cw.rama.classes(out)[k] == 0
    f = cw.chain_factors(after)
    assert f[cw.chain_names.index("B")] == pytest.approx(CHAIN_FACTOR_STEP)
    assert all(f[i] == 1.0 for i, n in enumerate(cw.chain_names) if n != "B")
    assert cw.chain_factors(xyz)[cw.chain_names.index("B")] == pytest.approx(CHAIN_FACTOR_STEP)
