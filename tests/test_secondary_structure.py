"""Secondary-structure restraints (refine/secondary_structure.py): kernel gradient, hydrogen-bond lists
against the files' own annotation, models without annotation."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from rerefine.refine import modelio
from rerefine.refine.restraints import atom_xyz
from rerefine.refine.secondary_structure import (OUTLIER_CUTOFF, HBondRestraint, hbond_energy_gradient,
                                                 hbond_pairs, secondary_structure_terms)

M5ME2 = "maps_models/emd_3488_5me2/5me2.pdb"
M7CEC = "maps_models/emd_30342_zone_7cec_chainA/390_7cec_A.cif"


@pytest.mark.parametrize("slack", [0.0, 0.1])
def test_kernel_gradient_matches_finite_differences(slack):
    """Analytic gradient of the flat-bottom harmonic O-N term against central differences (scipy's
    approx_fprime would do the same; h = 1e-6 Å gives ~1e-7 relative error on this smooth term)."""
    rng = np.random.default_rng(1)
    xyz = rng.normal(0.0, 2.0, (12, 3))
    pairs = np.array([[0, 1], [2, 3], [4, 5], [1, 6], [7, 8], [9, 11]], dtype=np.int32)
    ideal = np.full(len(pairs), 2.9)
    sigma = np.full(len(pairs), 0.05)
    g = np.zeros_like(xyz)
    e = hbond_energy_gradient(xyz, pairs, ideal, sigma, slack, g)
    assert e > 0
    num = np.zeros_like(xyz)
    h = 1e-6
    for i in range(xyz.shape[0]):
        for k in range(3):
            xp, xm = xyz.copy(), xyz.copy()
            xp[i, k] += h
            xm[i, k] -= h
            num[i, k] = (hbond_energy_gradient(xp, pairs, ideal, sigma, slack, np.zeros_like(xyz))
                         - hbond_energy_gradient(xm, pairs, ideal, sigma, slack, np.zeros_like(xyz))) / (2 * h)
    np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-4 * np.abs(num).max())
    assert not g[10].any()  # an atom in no pair gets no force


def test_kernel_flat_bottom_and_fixed_atoms():
    """Inside the slack the term is zero; fixed atoms get no gradient from the term."""
    xyz = np.array([[0.0, 0.0, 0.0], [2.95, 0.0, 0.0], [10.0, 0, 0], [13.5, 0, 0]])
    pairs = np.array([[0, 1], [2, 3]], dtype=np.int32)
    term = HBondRestraint(pairs, np.array([False, False, True, False]), slack=0.1)
    g = np.zeros_like(xyz)
    e = term.energy_gradient(xyz, g)
    # first pair within 2.9 +- 0.1: nothing; second 3.5 - 3.0 = 0.5 Å over -> (0.5 / 0.05)^2
    assert e == pytest.approx((0.5 / 0.05) ** 2)
    assert not g[:3].any() and g[3, 0] > 0



def _on_o_n(st, a, b):
    """O of residue ``a`` to N of residue ``b`` (gemmi residues), Å."""
    return a["O"][0].pos.dist(b["N"][0].pos)


def test_helix_of_5me2_gives_its_i_i4_pairs(test_data):
    """HELIX 3 of 5me2.pdb (alpha, A:20-36): every O(i) -> N(i+4) with both ends in the helix, none
    to a proline N, none farther than the outlier cut-off in the file (distances from gemmi)."""
    st = modelio.read_model(test_data / M5ME2)
    _, source, labels = hbond_pairs(st, atom_xyz(st))
    assert source == "annotation"
    helix = next(h for h in st.helices if h.start.res_id.seqid.num == 20)
    assert helix.end.res_id.seqid.num == 36 and helix.pdb_helix_class.value == 1
    ch = st[0]["A"]
    expected = set()
    for i in range(20, 33):
        a, b = ch[str(i)][0], ch[str(i + 4)][0]
        if b.name != "PRO" and _on_o_n(st, a, b) <= OUTLIER_CUTOFF:
            expected.add(f"A:{i} O -> A:{i + 4} N")
    assert len(expected) >= 10
    got = {lab for lab in labels if lab.startswith("A:") and 20 <= int(lab.split()[0].split(":")[1]) <= 32
           and int(lab.split()[3].split(":")[1]) <= 36}
    assert got == expected


def test_sheet_pairs_of_7cec_include_the_registered_bonds(test_data):
    """Every hydrogen bond the mmCIF registers between strands (``_pdbx_struct_sheet_hbond``) that lies
    within the outlier cut-off in the model is among the restrained pairs."""
    path = test_data / M7CEC
    st = modelio.read_model(path)
    _, source, labels = hbond_pairs(st, atom_xyz(st))
    assert source == "annotation" and len(st.sheets)
    table = gemmi.cif.read(str(path)).sole_block().find(
        "_pdbx_struct_sheet_hbond.", ["range_1_auth_atom_id", "range_1_auth_asym_id", "range_1_auth_seq_id",
                                      "range_2_auth_atom_id", "range_2_auth_asym_id", "range_2_auth_seq_id"])
    chains = {ch.name for ch in st[0]}
    checked = 0
    for row in table:
        ends = [(row[0], row[1], row[2]), (row[3], row[4], row[5])]
        if any(c not in chains for _, c, _ in ends):
            continue  # the zone model holds chain A only
        (_, oc, on), (_, nc, nn) = sorted(ends, key=lambda e: e[0] != "O")
        if _on_o_n(st, st[0][oc][on][0], st[0][nc][nn][0]) > OUTLIER_CUTOFF:
            continue
        assert f"{oc}:{on} O -> {nc}:{nn} N" in labels
        checked += 1
    assert checked >= 10


def test_model_without_annotation_gets_dssp_like_pairs(test_data):
    """With the helix records removed, the Kabsch-Sander assignment finds the annotated helices' i -> i+4
    bonds of 5ME2 (the file's annotation as reference): measured 243 of 251 found, none outside them."""
    st = modelio.read_model(test_data / M5ME2)
    xyz = atom_xyz(st)
    _, _, annotated = hbond_pairs(st, xyz)
    st.helices.clear()
    st.sheets.clear()
    pairs, source, labels = hbond_pairs(st, xyz)
    assert source == "dssp"
    assert len(set(labels) & set(annotated)) >= 0.9 * len(annotated)
    assert len(set(labels) - set(annotated)) <= 0.05 * len(labels)
    # O then N atoms
    names = [c.atom.name for c in st[0].all()]
    assert {names[i] for i in pairs[:, 0]} == {"O"} and {names[j] for j in pairs[:, 1]} == {"N"}


def test_model_without_secondary_structure_gets_no_term(test_data):
    """A stretch with no helix or sheet (5ME2 residues 1-5, annotation removed) gives no pairs and no term."""
    st = modelio.read_model(test_data / M5ME2)
    st.helices.clear()
    st.sheets.clear()
    ch = st[0]["A"]
    while len(ch) > 5:
        del ch[len(ch) - 1]
    for name in [c.name for c in st[0]][1:]:
        st[0].remove_chain(name)
    pairs, source, _ = hbond_pairs(st, atom_xyz(st))
    assert source == "dssp" and len(pairs) == 0

    class _R:
        fixed = np.zeros(st[0].count_atom_sites(), bool)

    assert secondary_structure_terms(st, _R(), atom_xyz(st)) == ()


def test_refinement_with_the_term_holds_the_helix_bonds(pairs, test_data):
    """refine_model(secondary_structure=True) adds the term: on 5ME2's helix A:20-36 the restrained
    O...N distances end nearer the 2.9 Å ideal than without it (same refinement otherwise; measured
    RMS deviation from 2.9 Å 0.16 Å with the term, 0.34 Å without)."""
    from rerefine.refine import mapio
    from rerefine.refine.realspace import refine_model
    from rerefine.refine.secondary_structure import IDEAL

    model, mp, res = pairs["emd_3488_5me2"]
    st = modelio.read_model(model)
    for name in [c.name for c in st[0]][1:]:
        st[0].remove_chain(name)
    ch = st[0]["A"]
    for i in range(len(ch) - 1, -1, -1):
        if not 18 <= ch[i].seqid.num <= 38:
            del ch[i]
    st.setup_entities()
    pairs_idx, _, _ = hbond_pairs(st, atom_xyz(st))
    assert len(pairs_idx) >= 10
    dmap = mapio.read_map(mp)
    dev = {}
    for on in (False, True):
        out = refine_model(st, dmap, res, test_data / "monomers", adp=False, cycles=1, max_iter=60, secondary_structure=on)
        x = atom_xyz(out.structure)
        d = np.linalg.norm(x[pairs_idx[:, 0]] - x[pairs_idx[:, 1]], axis=1)
        dev[on] = float(np.sqrt(np.mean((d - IDEAL) ** 2)))
    assert dev[True] < dev[False], dev
