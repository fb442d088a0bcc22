"""Refinement of unusual input (issue 16 "bad input"), on real models edited with gemmi: D-amino acids,
cis-prolines, metal ions without a dictionary. (Residues without a dictionary: test_realspace
``test_unknown_residue_stays_fixed`` and test_restraints; numbering gaps: test_realspace
``test_numbering_gap_is_never_closed``.)"""

from __future__ import annotations

import math

import gemmi
import numpy as np
import pytest

from rerefine.refine import mapio, modelio

M3AJO = "emd_20026_box_3ajo_refined"
M7CEC = "emd_30342_zone_7cec_chainA"


def _pair(pairs, name):
    model, mp, res = pairs[name]
    return modelio.read_model(model), mapio.read_map(mp), res


def _stretch(st, lo, hi, keep=()):
    """Copy of ``st`` with chain A residues ``lo..hi`` (and those numbered in ``keep``) only."""
    st = st.clone()
    ch = st[0][0]
    for i in range(len(ch) - 1, -1, -1):
        n = ch[i].seqid.num
        if not (lo <= n <= hi or n in keep):
            del ch[i]
    st.setup_entities()
    return st


def _ca_volume(res) -> float:
    """Signed chiral volume (Å^3) ``(N - CA) . ((C - CA) x (CB - CA))``: > 0 for L residues (the
    sign of the CA chirality of the library's L-peptide dictionaries)."""
    n, ca, c, cb = (np.array(res[a][0].pos.tolist()) for a in ("N", "CA", "C", "CB"))
    return float(np.dot(n - ca, np.cross(c - ca, cb - ca)))


def test_d_amino_acid_is_kept_and_gets_no_l_terms(pairs, monlib):
    """A D-alanine (3AJO ALA 30 renamed DAL, CB mirrored through the N-CA-C plane): the library has no
    DAL dictionary, so it stays fixed (warning names it), gets no Ramachandran or C-beta term
    (those are for L residues) and keeps its D hand; its neighbours are refined."""
    from rerefine.refine.cbeta_restraint import cbeta_rows
    from rerefine.refine.ramachandran_restraint import ramachandran_restraint
    from rerefine.refine.realspace import refine_model, refinement_topology
    from rerefine.refine.restraints import atom_xyz

    st, dmap, res = _pair(pairs, M3AJO)
    st = _stretch(st, 20, 50)
    r30 = next(r for r in st[0][0] if r.seqid.num == 30)
    assert r30.name == "ALA" and _ca_volume(r30) > 0
    n, ca, c, cb = (np.array(r30[a][0].pos.tolist()) for a in ("N", "CA", "C", "CB"))
    normal = np.cross(n - ca, c - ca)
    normal /= np.linalg.norm(normal)
    cb = cb - 2.0 * np.dot(cb - ca, normal) * normal
    r30["CB"][0].pos = gemmi.Position(*cb)
    r30.name = "DAL"
    assert _ca_volume(r30) < 0
    dal = np.array([c.residue.name == "DAL" for c in st[0].all()])

    r = refinement_topology(st, monlib)
    assert any("DAL" in w for w in r.warnings)
    assert np.asarray(r.fixed)[dal].all()
    rid = {int(r.residue[i]) for i in np.nonzero(dal)[0]}
    assert not rid & {int(x) for x in ramachandran_restraint(st, r).residue}
    idx = cbeta_rows(st, r)[0]
    assert not dal[idx].any()

    x0 = atom_xyz(st)
    out = refine_model(st, dmap, res, monlib, adp=False, cycles=1, max_iter=40)
    assert out.status == "ok"
    x1 = atom_xyz(out.structure)
    np.testing.assert_array_equal(x1[dal], x0[dal])
    assert np.abs(x1[~dal] - x0[~dal]).max() > 0.01
    assert _ca_volume(next(r for r in out.structure[0][0] if r.seqid.num == 30)) < 0


@pytest.mark.parametrize("records", [True, False])
def test_cis_proline_stays_cis(pairs, monlib, records):
    """7CEC's cis peptide Asn 485 - Pro 486 (``struct_mon_prot_cis``) stays cis (|omega| < 30 deg,
    MolProbity's cis; omega by gemmi) after refinement, with the file's records and without any
    (then the proline rule of peptide_links: nearer cis than trans is cis)."""
    from rerefine.refine.realspace import refine_model

    st, dmap, res = _pair(pairs, M7CEC)
    assert any(cp.partner_n.chain_name == "A" and cp.partner_n.res_id.seqid.num == 486
               and cp.partner_n.res_id.name == "PRO" for cp in st.cispeps)
    st = _stretch(st, 475, 497)
    if not records:
        st.cispeps.clear()

    def omega486(s):
        ch = s[0][0]
        k = next(i for i, r in enumerate(ch) if r.seqid.num == 486)
        return math.degrees(gemmi.calculate_omega(ch[k - 1], ch[k]))

    assert abs(omega486(st)) < 30.0
    out = refine_model(st, dmap, res, monlib, adp=False, cycles=2)
    assert out.status == "ok" and out.rmsd_moved > 0.01
    assert abs(omega486(out.structure)) < 30.0


def test_metal_ion_without_dictionary(pairs, monlib):
    """3AJO's Mg 183 (ligands Glu 27 OE2, Glu 62 OE2, His 65 ND1 at 2.25-2.51 Å) renamed to a residue
    the library does not know: the ion stays fixed (warning), is still a metal ion to the repulsion
    (single atom of a metallic element: contact distance 1.9 Å, nonbonded.D0_METAL), so its ligands
    are not pushed out to van der Waals distance; a metal connection record to it becomes a distance
    restraint to the input distance (no distance in the record)."""
    from rerefine.refine.metal_restraint import metal_bond_rows
    from rerefine.refine.realspace import refine_model, refinement_topology
    from rerefine.refine.restraints import atom_xyz

    st, dmap, res = _pair(pairs, M3AJO)
    st = _stretch(st, 20, 70, keep=(183,))
    ch = st[0][0]
    mg = next(r for r in ch if r.seqid.num == 183)
    assert mg.name == "MG"
    mg.name = "ZZM"
    lig = {(27, "OE2"), (62, "OE2"), (65, "ND1")}
    con = gemmi.Connection()
    con.name = "metalc1"
    con.type = gemmi.ConnectionType.MetalC
    glu62 = next(r for r in ch if r.seqid.num == 62)
    con.partner1 = gemmi.make_address(ch, glu62, glu62["OE2"][0])
    con.partner2 = gemmi.make_address(ch, mg, mg[0])
    st.connections.append(con)

    cras = list(st[0].all())
    i_mg = next(i for i, c in enumerate(cras) if c.residue.name == "ZZM")
    i_lig = {(c.residue.seqid.num, c.atom.name): i for i, c in enumerate(cras)
             if (c.residue.seqid.num, c.atom.name) in lig}
    x0 = atom_xyz(st)
    d0 = {k: float(np.linalg.norm(x0[i] - x0[i_mg])) for k, i in i_lig.items()}
    assert all(2.2 < d < 2.6 for d in d0.values())

    r = refinement_topology(st, monlib)
    assert any("ZZM" in w for w in r.warnings) and bool(r.fixed[i_mg]) and int(r.hb_type[i_mg]) == 5
    idx, ideal, _, _ = metal_bond_rows(st, x0)
    assert idx.tolist() == [[i_lig[(62, "OE2")], i_mg]] and ideal[0] == pytest.approx(d0[(62, "OE2")])

    out = refine_model(st, dmap, res, monlib, adp=False, cycles=1, max_iter=60)
    assert out.status == "ok"
    x1 = atom_xyz(out.structure)
    np.testing.assert_array_equal(x1[i_mg], x0[i_mg])
    d1 = {k: float(np.linalg.norm(x1[i] - x1[i_mg])) for k, i in i_lig.items()}
    # recorded ligand: held by sigma 0.02 Å (metal_restraint.SIGMA) against the map and the other terms
    assert abs(d1[(62, "OE2")] - d0[(62, "OE2")]) < 0.05
    # unrecorded ligands: no restraint, but no repulsion pushing them to the ~3 Å of a Mg-O vdW contact
    assert all(d1[k] < 2.8 for k in d1), d1
