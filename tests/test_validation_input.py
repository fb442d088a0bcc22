"""Validation on awkward input: the documented treatment of each case, and one-line errors.

Models are the real shared files, edited in memory where a case is not in the data
(missing atoms, alternative conformers, zero occupancy, a one-residue chain).
"""

from __future__ import annotations

import json

import gemmi
import pytest

from realdata import DATA, MONLIB
from rerefine.common.errors import InputError
from rerefine.refine.validation import validate

TOP = str(DATA / "validation" / "top8000")
AJO = "emd_20026_box_3ajo_refined/3ajo_fitted_refined.pdb"


def _read(test_data, rel):
    st = gemmi.read_structure(str(test_data / "maps_models" / rel))
    st.setup_entities()
    return st


def _row(rep, chain, seq):
    return next(r for r in rep.per_residue if r["chain"] == chain and r["seq"] == seq)


@pytest.fixture(scope="module")
def base(test_data):
    st = _read(test_data, AJO)
    return st, validate(st, MONLIB, top8000_dir=TOP)


def _first(st, name):
    for ch in st[0]:
        for k, res in enumerate(ch):
            if res.name == name and 2 <= k < len(ch) - 2:
                return ch, k, res
    raise AssertionError(name)


def test_missing_side_chain_atoms_not_scored(base):
    st0, rep0 = base
    st = st0.clone()
    ch, k, res = _first(st, "LEU")
    for i in range(len(res) - 1, -1, -1):
        if res[i].name in ("CD1", "CD2"):
            del res[i]
    rep = validate(st, MONLIB, top8000_dir=TOP)
    row = _row(rep, ch.name, res.seqid.num)
    assert row["rotamer"] is None and row["chis"] is None
    assert row["rama"] == _row(rep0, ch.name, res.seqid.num)["rama"]  # backbone intact
    assert rep.summary["n_rotamer"] == rep0.summary["n_rotamer"] - 1
    assert any("misses atoms" in w for w in rep.warnings)


def test_missing_backbone_atom_breaks_phi_psi(base):
    st0, rep0 = base
    st = st0.clone()
    ch, k, res = _first(st, "ALA")
    for i in range(len(res) - 1, -1, -1):
        if res[i].name == "C":
            del res[i]
    rep = validate(st, MONLIB, top8000_dir=TOP)
    seq = res.seqid.num
    prev_seq = ch[k - 1].seqid.num
    nxt_seq = ch[k + 1].seqid.num
    # no C: no psi, no C-beta deviation here; no peptide link to the next residue (no phi there)
    assert _row(rep, ch.name, seq)["rama"] is None and _row(rep, ch.name, seq)["cbeta_dev"] is None
    assert _row(rep, ch.name, nxt_seq)["phi"] is None and _row(rep, ch.name, nxt_seq)["rama"] is None
    assert _row(rep, ch.name, prev_seq)["rama"] == _row(rep0, ch.name, prev_seq)["rama"]
    assert rep.summary["n_rama"] == rep0.summary["n_rama"] - 2


def test_one_residue_chain(base):
    st0, _ = base
    st = gemmi.Structure()
    st.add_model(gemmi.Model("1"))
    ch = gemmi.Chain("A")
    ch.add_residue(st0[0][0][5])
    st[0].add_chain(ch)
    st.setup_entities()
    rep = validate(st, MONLIB, top8000_dir=TOP)
    assert rep.summary["n_rama"] == 0 and rep.summary["rama_favored_pct"] is None
    assert rep.summary["cis_peptides"] == 0
    assert len(rep.per_residue) == 1 and rep.summary["clashscore"] is not None


def test_alternative_conformers_first_is_scored(base):
    st0, rep0 = base
    st = st0.clone()
    ch, k, res = _first(st, "SER")
    og = next(a for a in res if a.name == "OG")
    og.altloc = "A"
    og.occ = 0.6
    b = og.clone()
    b.altloc = "B"
    b.occ = 0.4
    b.pos = gemmi.Position(og.pos.x + 0.8, og.pos.y, og.pos.z)
    res.add_atom(b)
    rep = validate(st, MONLIB, top8000_dir=TOP)
    row = _row(rep, ch.name, res.seqid.num)
    ref_row = _row(rep0, ch.name, res.seqid.num)
    assert row["chis"] == pytest.approx(ref_row["chis"])
    assert row["rotamer"] == ref_row["rotamer"]
    # the two conformers of OG (0.8 Å apart) never clash with each other
    assert not any("SER/OG" in c["a"] and "SER/OG" in c["b"] for c in rep.clashes)


def test_zero_occupancy_atoms_do_not_clash(test_data, base):
    st0, rep0 = base
    assert rep0.clashes
    worst = rep0.clashes[0]
    st = st0.clone()
    chain, seq, rest = worst["a"].split(":")
    resname, atom = rest.split("/")
    for ch in st[0]:
        for res in ch:
            if ch.name == chain and str(res.seqid.num) == seq:
                for a in res:
                    if a.name == atom:
                        a.occ = 0.0
    rep = validate(st, MONLIB, top8000_dir=TOP)
    assert not any(worst["a"] in (c["a"], c["b"]) for c in rep.clashes)
    assert rep.summary["n_clashes"] < rep0.summary["n_clashes"]


def test_model_with_hydrogens_gets_them_replaced(base):
    from rerefine.refine.validation.hydrogens import add_hydrogens

    st0, rep0 = base
    with_h = add_hydrogens(st0, MONLIB)
    rep = validate(with_h, MONLIB, top8000_dir=TOP)
    assert rep.summary["clashscore"] == pytest.approx(rep0.summary["clashscore"])
    assert rep.summary["n_atoms_clash"] == rep0.summary["n_atoms_clash"]


def test_nucleic_acid_only_model(test_data):
    st = _read(test_data, "models_only/6v5b_drna.pdb")
    rep = validate(st, MONLIB, top8000_dir=TOP)
    s = rep.summary
    assert s["n_rama"] == 0 and s["n_rotamer"] == 0 and s["rama_favored_pct"] is None
    assert s["clashscore"] is not None and s["bond_rmsd_heavy"] is not None
    assert any("no amino-acid residues" in w for w in rep.warnings)


def test_residue_without_dictionary(test_data):
    """7KJR's PEE lipids have no dictionary: no hydrogens, fixed, still in the clash count."""
    st = _read(test_data, "models_only/7kjr_nanodisc/7kjr.pdb")
    rep = validate(st, MONLIB, top8000_dir=TOP)
    assert any("PEE" in w for w in rep.warnings)
    pee = [r for r in rep.per_residue if r["resname"] == "PEE"]
    assert pee and all(r["rama"] is None for r in pee)
    assert rep.summary["n_rama"] > 400


def test_no_atoms_is_an_input_error():
    st = gemmi.Structure()
    st.add_model(gemmi.Model("1"))
    with pytest.raises(InputError):
        validate(st, MONLIB, top8000_dir=TOP)


def test_bad_top8000_folder_is_an_input_error(base, tmp_path):
    with pytest.raises(InputError, match="Top8000"):
        validate(base[0], MONLIB, top8000_dir=tmp_path)


def test_cli_validate_json(test_data, tmp_path, capsys):
    from rerefine.flows.cli import main
    from rerefine.refine.validation import SUMMARY_KEYS

    out = tmp_path / "v.json"
    rc = main(["validate", str(test_data / "maps_models" / AJO), "--monlib", str(MONLIB), "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "Williams et al. (2018)" in text and "clashscore" in text
    d = json.loads(out.read_text())
    for k in SUMMARY_KEYS:
        assert k in d
    row = d["per_residue"][10]
    for k in ("chain", "seq", "icode", "resname", "rama", "rotamer", "cbeta_dev"):
        assert k in row


@pytest.mark.parametrize("content", [None, "garbage\n", "HEADER    EMPTY\nEND\n"])
def test_cli_validate_bad_files_one_line(tmp_path, capsys, content):
    from rerefine.flows.cli import main

    path = tmp_path / "m.pdb"
    if content is not None:
        path.write_text(content)
    rc = main(["validate", str(path), "--monlib", str(MONLIB)])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rerefine validate: error: m.pdb")
