"""Restraints from the monomer library (rerefine.refine.restraints) on the real models in ../shared/data.

Reference figures: restraint counts of gemmi 0.7.5's topology with the same library, listed in
../shared/data/README.md section 2 (bonds/angles/torsions/chirs/planes and link types).
"""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from rerefine.common.errors import InputError
from rerefine.refine.geometry import geometry_stats
from rerefine.refine.modelio import atom_positions, read_model
from rerefine.refine.restraints import atom_xyz, build_restraints, set_xyz

MODELS = {
    "5me2": "maps_models/emd_3488_5me2/5me2.pdb",
    "7cec_A": "maps_models/emd_30342_zone_7cec_chainA/390_7cec_A.cif",
    "3ajo": "maps_models/emd_20026_box_3ajo_refined/3ajo_fitted_refined.pdb",
    "6v5b_rna": "maps_models/models_only/6v5b_drna.pdb",
}
# README section 2 (gemmi 0.7.5, h_change=NoChange, ignore_unknown_links=True)
README_COUNTS = {
    "5me2": dict(bonds=4608, angles=6326, torsions=3326, chirs=692, planes=810),
    "7cec_A": dict(bonds=4405, angles=5966, torsions=3154, chirs=641, planes=795),
    "3ajo": dict(bonds=1442, angles=1942, torsions=1031, chirs=204, planes=257),
    "6v5b_rna": dict(bonds=1844, angles=2866, torsions=1940, chirs=388, planes=78),
}


@pytest.fixture(scope="module")
def built(test_data, monlib):
    out = {}
    for name, rel in MODELS.items():
        st = read_model(test_data / rel)
        out[name] = (st, build_restraints(st, monlib))
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_counts_match_gemmi_topology_readme(built, name):
    st, r = built[name]
    c = r.counts()
    for key, ref in README_COUNTS[name].items():
        assert c[key] == ref, (name, key, c[key], ref)
    assert r.n_atoms == st[0].count_atom_sites()
    assert not r.fixed.any()
    assert r.warnings == []


def test_links_match_readme(built):
    # README: 5ME2 TRANS 534 + PTRANS 28; 6V5B RNA p 76 (+1 gap); 7CEC has 5 disulfide extras
    assert built["5me2"][1].links == {"TRANS": 534, "PTRANS": 28}
    assert built["6v5b_rna"][1].links.get("p") == 76
    assert built["7cec_A"][1].links.get("disulf") == 5


def test_atom_order_and_xyz_roundtrip(built):
    st, r = built["3ajo"]
    xyz = atom_xyz(st)
    assert xyz.shape == (r.n_atoms, 3)
    np.testing.assert_array_equal(xyz, atom_positions(st))
    st2 = st.clone()
    set_xyz(st2, xyz + 1.0)
    np.testing.assert_allclose(atom_xyz(st2), xyz + 1.0, atol=1e-9)
    with pytest.raises(ValueError):
        set_xyz(st2, xyz[:-1])
    # bonded atoms of the restraint list are really close in the model (index convention)
    d = np.linalg.norm(xyz[r.bonds.idx[:, 0]] - xyz[r.bonds.idx[:, 1]], axis=1)
    assert np.abs(d - r.bonds.ideal).max() < 0.2


def test_structure_not_modified(test_data, monlib):
    st = read_model(test_data / MODELS["3ajo"])
    before = [(c.atom.serial, c.atom.b_iso) for c in st[0].all()]
    build_restraints(st, monlib)
    assert [(c.atom.serial, c.atom.b_iso) for c in st[0].all()] == before


def test_chiral_signs_of_deposited_models(built):
    """Every signed chiral centre of the deposited models has the dictionary's hand (L-amino acids, D-ribose)."""
    from rerefine.refine.geometry import _chiral_volume

    for name, (st, r) in built.items():
        xyz = atom_xyz(st)
        v = np.array([_chiral_volume(xyz, *q) for q in r.chirals.idx])
        signed = ~r.chirals.both
        assert (np.sign(v[signed]) == np.sign(r.chirals.ideal[signed])).all(), name
        # CCP4 ideal tetrahedral volumes of C/N centres are ~2.4-2.7 Å³
        assert 2.0 < np.abs(r.chirals.ideal).min() and np.abs(r.chirals.ideal).max() < 3.5


def test_rna_one_pucker_family_per_nucleotide(built):
    """C2'-endo and C3'-endo torsion sets are never both active; A-form RNA is mostly C3'-endo."""
    st, r = built["6v5b_rna"]
    lab = np.array(r.torsions.label)
    active = r.torsions.sigma > 0
    res = r.residue[r.torsions.idx[:, 1]]
    c3 = 0
    nres = 0
    for rid in np.unique(res):
        m = (res == rid) & active
        fams = {lb[:3] for lb in lab[m] if lb.startswith(("C2e", "C3e"))}
        assert len(fams) == 1, rid
        c3 += fams == {"C3e"}
        nres += 1
    assert nres == 78
    assert c3 / nres > 0.8


def test_unknown_residue_is_fixed_with_warning(test_data, monlib):
    st = read_model(test_data / MODELS["3ajo"])
    res = st[0][0][10]
    res.name = "ZZQ"
    n_res_atoms = len(res)
    r = build_restraints(st, monlib)
    assert r.fixed.sum() == n_res_atoms
    assert any("ZZQ" in w and "fixed" in w for w in r.warnings)
    fixed_idx = np.nonzero(r.fixed)[0]
    for arr in (r.bonds.idx, r.angles.idx, r.torsions.idx, r.chirals.idx):
        assert not np.isin(arr, fixed_idx).all(axis=1).any()  # nothing purely inside the fixed residue
    s = geometry_stats(r, atom_xyz(st))
    assert s["n_bonds"] < 1442 and s["bond_rmsd"] < 0.02
    # fixed atoms get no gradient even when the rest of the model is distorted
    from rerefine.refine.geometry import restraint_energy_gradient

    xyz = atom_xyz(st) + np.random.default_rng(1).normal(0, 0.3, (r.n_atoms, 3))
    e, g = restraint_energy_gradient(r, xyz)
    assert np.isfinite(e) and (g[r.fixed] == 0).all() and np.abs(g[~r.fixed]).max() > 0


def test_missing_atoms_warned_and_restraints_dropped(test_data, monlib):
    st = read_model(test_data / MODELS["3ajo"])
    ref = build_restraints(st, monlib)
    # delete the side-chain NZ of the first lysine
    for res in st[0][0]:
        if res.name == "LYS":
            target = res
            break
    del target[[a.name for a in target].index("NZ")]
    r = build_restraints(st, monlib)
    assert len(r.bonds) == len(ref.bonds) - 1  # CE-NZ
    assert any(f"LYS{target.seqid.num}" in w and "NZ" in w for w in r.warnings)


def test_duplicate_atom_name_is_input_error(test_data, monlib):
    st = read_model(test_data / MODELS["3ajo"])
    res = st[0][0][30]
    res[2].name = res[1].name
    with pytest.raises(InputError, match="duplicate atom name"):
        build_restraints(st, monlib)


def test_bad_monomer_library_is_input_error(test_data, tmp_path):
    st = read_model(test_data / MODELS["3ajo"])
    with pytest.raises(InputError, match="monomer library"):
        build_restraints(st, tmp_path)


def test_empty_model_is_input_error(monlib):
    st = gemmi.Structure()
    st.add_model(gemmi.Model(1))
    with pytest.raises(InputError, match="no atoms"):
        build_restraints(st, monlib)


def test_model_with_hydrogens(test_data, monlib):
    """Hydrogens are kept as in the model: one bond per H, polar H (on N/O) recognised."""
    st = read_model(test_data / MODELS["3ajo"])
    st.remove_waters()
    ml = gemmi.read_monomer_lib(str(monlib), st[0].get_all_residue_names(), ignore_missing=True)
    gemmi.prepare_topology(st, ml, h_change=gemmi.HydrogenChange.ReAdd, ignore_unknown_links=True)
    r = build_restraints(st, monlib)
    is_h = r.element == "H"
    n_h = int(is_h.sum())
    assert n_h > 1300  # ~1 H per heavy atom of protein
    h_bonds = is_h[r.bonds.idx].any(axis=1)
    assert h_bonds.sum() == n_h
    partner = np.where(is_h[r.bonds.idx[h_bonds, 0]], r.bonds.idx[h_bonds, 1], r.bonds.idx[h_bonds, 0])
    h_atoms = np.where(is_h[r.bonds.idx[h_bonds, 0]], r.bonds.idx[h_bonds, 0], r.bonds.idx[h_bonds, 1])
    on_no = np.isin(r.element[partner], ["N", "O"])
    assert (r.hb_type[h_atoms[on_no]] == 4).all()  # polar
    assert (r.hb_type[h_atoms[r.element[partner] == "C"]] != 4).all()  # not polar
    s = geometry_stats(r, atom_xyz(st))
    assert s["bond_rmsd"] < 0.02 and s["angle_rmsd"] < 2.0


def test_replace_copy_has_own_weights_and_shares_neighbour_list(built):
    from dataclasses import replace

    st, r = built["3ajo"]
    assert r.counts()["nonbonded_pairs"] > 1000  # list built with the restraints
    r2 = replace(r, torsions=r.torsions)
    r2.weights["nonbonded"] = 5.0
    assert r.weights["nonbonded"] == 1.0


def test_alternative_conformers(test_data, monlib):
    """A side chain in two conformers: restraints for each, no repulsion between A and B."""
    st = read_model(test_data / MODELS["3ajo"])
    res = st[0][0][20]
    assert res.name == "ASN"
    for a in res:
        if a.name not in ("N", "CA", "C", "O"):
            a.altloc = "A"
            a.occ = 0.5
    copies = []
    for a in res:
        if a.altloc == "A":
            b = a.clone()
            b.altloc = "B"
            b.pos = gemmi.Position(a.pos.x + 0.3, a.pos.y, a.pos.z)
            copies.append(b)
    for b in copies:
        res.add_atom(b)
    r = build_restraints(st, monlib)
    assert len(r.bonds) == 1442 + 4  # CA-CB, CB-CG, CG-OD1, CG-ND2 of conformer B
    nb = r.nonbonded
    pair_alt = {(int(a), int(b)) for a, b in zip(r.altloc[nb.pi], r.altloc[nb.pj])}
    assert (ord("A"), ord("B")) not in pair_alt and (ord("B"), ord("A")) not in pair_alt
    assert (ord("A"), ord("A")) in pair_alt or (0, ord("A")) in pair_alt or (ord("A"), 0) in pair_alt
    assert geometry_stats(r, atom_xyz(st))["nonbonded_overlaps"] == 0
