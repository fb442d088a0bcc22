"""Refinement in boxes (issue 17): regions, margins held fixed, seams, merge, executors."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing

import numpy as np
import pytest

from rerefine.reports.verdict import BOND_FLOOR, BOND_TOL

#: CCmask tolerance between boxed and whole-model refinement of the same model: issue 17's
#: "quality independent of size" figure (CCmask after within 0.005 of the single-box case).
CC_TOL = 0.005


def _residues(st, lo: int, hi: int):
    """A copy of ``st`` keeping residues ``lo``-``hi`` (sequence numbers) of its first chain."""
    st = st.clone()
    ch = st[0][0]
    for i in range(len(ch) - 1, -1, -1):
        if not lo <= ch[i].seqid.num <= hi:
            del ch[i]
    return st


def _xyz(st):
    return np.array([c.atom.pos.tolist() for c in st[0].all()])


def _min_dist(a, b):
    """Distance from each point of ``a`` to the nearest of ``b`` (brute force, numpy)."""
    out = np.empty(len(a))
    for k in range(0, len(a), 512):
        d = np.linalg.norm(a[k : k + 512, None, :] - b[None, :, :], axis=2)
        out[k : k + 512] = d.min(axis=1)
    return out


def test_regions_partition_the_model_and_margins_are_the_near_residues(p5me2):
    from rerefine.refine.regions import MARGIN, residue_index, split_regions

    st, _, _ = p5me2
    xyz = _xyz(st)
    res_of = residue_index(st)
    regions = split_regions(st, max_atoms=1500)
    assert len(regions) >= 3
    cores = np.concatenate([r.core for r in regions])
    assert len(cores) == len(xyz) and len(np.unique(cores)) == len(xyz)  # disjoint, cover every atom
    for reg in regions:
        assert len(reg.core) <= 1500
        rest = np.setdiff1d(np.arange(len(xyz)), reg.core)
        near = rest[_min_dist(xyz[rest], xyz[reg.core]) <= MARGIN]
        expect = np.setdiff1d(np.flatnonzero(np.isin(res_of, res_of[near])), reg.core)
        np.testing.assert_array_equal(reg.margin, expect)
        assert not np.isin(reg.margin, reg.core).any()


def _copies(st, shifts):
    """``st`` with a copy of its chains added at each shift (Å), chains renamed per copy."""
    import gemmi

    big = st.clone()
    for k, shift in enumerate(shifts, start=1):
        for ch in st[0]:
            c = ch.clone()
            c.name = f"{ch.name}{k}"
            for res in c:
                for at in res:
                    at.pos = gemmi.Position(at.pos.x + shift[0], at.pos.y + shift[1], at.pos.z + shift[2])
            big[0].add_chain(c)
    return big


def test_regions_follow_copies_and_whole_chains(p5me2):
    """Three 5ME2 copies apart from one another: each region is one whole copy with an empty
    margin (the cuts fall in the gaps); at 1,500 atoms no chain (~1,100 atoms) is cut."""
    from rerefine.refine.regions import MARGIN, split_regions

    st, _, _ = p5me2
    xyz = _xyz(st)
    edge = float(np.ptp(xyz[:, 0]))
    big = _copies(st, [(edge + 10.0, 0.0, 0.0), (2 * edge + 20.0, 5.0, 0.0)])
    bxyz = _xyz(big)
    n = len(xyz)
    assert _min_dist(bxyz[n : 2 * n], np.concatenate([bxyz[:n], bxyz[2 * n :]])).min() > MARGIN
    regions = split_regions(big, max_atoms=6000)
    assert sorted(r.core[0] for r in regions) == [0, n, 2 * n]
    for reg in regions:
        np.testing.assert_array_equal(reg.core, np.arange(reg.core[0], reg.core[0] + n))
        assert len(reg.margin) == 0
    chain_of = np.array([ci for ci, ch in enumerate(st[0]) for res in ch for _ in res])
    for reg in split_regions(st, max_atoms=1500):
        for ci in np.unique(chain_of[reg.core]):
            assert np.isin(np.flatnonzero(chain_of == ci), reg.core).all()


@pytest.mark.parametrize("fixture,limit", [("p3ajo", 400), ("p5me2", 600)])
def test_cut_chains_give_regions_of_at_least_half_a_core(fixture, limit, request):
    """Chains larger than a core are cut into regions of between half a core and a core: no cut
    peels a residue or two off the end of a compact chain (each such region carries ten times its
    atoms as a fixed margin; 3AJO at 400 atoms once gave 134 regions, most of 1-9 atoms)."""
    from rerefine.refine.regions import split_regions

    st, _, _ = request.getfixturevalue(fixture)
    n = st[0].count_atom_sites()
    assert max(len(ch) and sum(len(r) for r in ch) for ch in st[0]) > limit  # a chain is cut
    regions = split_regions(st, max_atoms=limit)
    sizes = np.array([len(r.core) for r in regions])
    assert sizes.sum() == n
    assert sizes.min() >= limit / 2 and sizes.max() <= limit
    assert len(regions) <= 2 * n / limit


def test_seam_regions_hold_every_close_pair_across_a_cut(p5me2):
    from rerefine.refine.regions import SEAM_WIDTH, split_regions, seam_regions

    st, _, _ = p5me2
    xyz = _xyz(st)
    regions = split_regions(st, max_atoms=1500)
    seams = seam_regions(st, regions, xyz, max_atoms=1500)
    seam_atoms = np.concatenate([s.core for s in seams])
    for k, reg in enumerate(regions):
        other = np.setdiff1d(np.arange(len(xyz)), reg.core)
        d = _min_dist(xyz[reg.core], xyz[other])
        assert np.isin(reg.core[d < SEAM_WIDTH], seam_atoms).all()


@pytest.mark.parametrize("b_free", [False, True])
def test_fixed_atoms_keep_positions_and_b(p3ajo, monlib, b_free):
    """Atoms given as ``fixed_atoms`` are no parameter of any stage (coordinates, B, fit stage); with
    ``fixed_b_free`` their B are refined alongside and the input B put back in the result."""
    from rerefine.refine.realspace import refine_model

    st, dmap, res = p3ajo
    st = _residues(st, 5, 45)
    fixed = np.array([c.residue.seqid.num <= 20 for c in st[0].all()])
    x0 = _xyz(st)
    b0 = np.array([c.atom.b_iso for c in st[0].all()])
    out = refine_model(st, dmap, res, monlib, cycles=1, max_iter=30, fit_cycles=1, fit_iter=15,
                       fixed_atoms=fixed, fixed_b_free=b_free)
    assert out.status == "ok" and out.adp is not None
    x1 = _xyz(out.structure)
    b1 = np.array([c.atom.b_iso for c in out.structure[0].all()])
    np.testing.assert_array_equal(x1[fixed], x0[fixed])
    np.testing.assert_array_equal(b1[fixed], b0[fixed])
    assert np.abs(x1[~fixed] - x0[~fixed]).max() > 0.01
    assert np.abs(b1[~fixed] - b0[~fixed]).max() > 0.1
    # the B stage's own values of the held atoms: parameters only with fixed_b_free
    assert (np.abs(np.asarray(out.adp.b)[fixed] - b0[fixed]).max() > 0.1) == b_free


def _cross_bond_devs(st, monlib, regions, xyz):
    """Deviations from ideal (Å) of the library bonds joining atoms of two different region cores."""
    from rerefine.refine.geometry import bond_devs
    from rerefine.refine.peptide_links import refinement_topology

    r = refinement_topology(st, monlib)
    owner = np.full(len(xyz), -1)
    for k, reg in enumerate(regions):
        owner[reg.core] = k
    idx = np.asarray(r.bonds.idx)
    cross = owner[idx[:, 0]] != owner[idx[:, 1]]
    assert cross.any()
    return bond_devs(xyz, np.ascontiguousarray(idx[cross]), np.asarray(r.bonds.ideal)[cross])


@pytest.fixture(scope="module")
def boxed_3ajo(p3ajo, monlib):
    """3AJO refined whole and in two regions (+ seam pass), serially."""
    from rerefine.refine.boxed import refine_boxed
    from rerefine.refine.realspace import refine_model

    st, dmap, res = p3ajo
    whole = refine_model(st, dmap, res, monlib, cycles=2)
    boxed = refine_boxed(st, dmap, res, monlib, region_atoms=900, cycles=2)
    return whole, boxed


@pytest.mark.slow
def test_boxed_refinement_matches_whole_model(p3ajo, monlib, boxed_3ajo):
    """Two regions and a seam pass: CCmask within CC_TOL of the whole-model refinement; bonds across
    the cuts within the site verdict's bond allowance (reports.verdict: 0.010 + 0.002 Å RMS)."""
    from rerefine.refine.metrics import compute_metrics
    from rerefine.refine.regions import split_regions

    st, dmap, res = p3ajo
    whole, boxed = boxed_3ajo
    assert boxed.status == "ok" and len([h for h in boxed.history if "region" in h]) >= 3
    cc_w = compute_metrics(whole.structure, dmap, res)["cc_mask"]
    cc_b = compute_metrics(boxed.structure, dmap, res)["cc_mask"]
    assert abs(cc_b - cc_w) <= CC_TOL
    ga = boxed.geometry_after
    assert ga["bond_rmsd"] <= BOND_FLOOR + BOND_TOL
    devs = _cross_bond_devs(boxed.structure, monlib, split_regions(st, 900), _xyz(boxed.structure))
    assert float(np.sqrt(np.mean(devs ** 2))) <= BOND_FLOOR + BOND_TOL
    # names, order and count of atoms preserved
    assert [(c.chain.name, c.residue.seqid.num, c.atom.name) for c in st[0].all()] == \
        [(c.chain.name, c.residue.seqid.num, c.atom.name) for c in boxed.structure[0].all()]


@pytest.mark.slow
def test_process_pool_gives_the_serial_result(p3ajo, monlib):
    """Residues 5-120 of 3AJO in regions of at most 300 atoms: a 2-process pool merges the same model."""
    from rerefine.refine.boxed import refine_boxed

    st, dmap, res = p3ajo
    st = _residues(st, 5, 120)
    kw = dict(region_atoms=300, cycles=1, max_iter=30, fit_cycles=1, fit_iter=15)
    serial = refine_boxed(st, dmap, res, monlib, **kw)
    assert len(serial.history) >= 3
    with cf.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
        pooled = refine_boxed(st, dmap, res, monlib, executor=ex, workers=2, **kw)
    np.testing.assert_array_equal(_xyz(pooled.structure), _xyz(serial.structure))
    np.testing.assert_array_equal([c.atom.b_iso for c in pooled.structure[0].all()],
                                  [c.atom.b_iso for c in serial.structure[0].all()])

def test_boxes_only_for_large_models(p5me2):
    """One 5ME2 copy (4,468 atoms) keeps the whole-model path; three copies (13,404 atoms, above
    BOXED_MIN_ATOMS) are boxed."""
    from rerefine.refine.boxed import BOXED_MIN_ATOMS, use_boxes

    st, dmap, _ = p5me2
    assert not use_boxes(st, dmap)
    big = _copies(st, [(0.0, 0.0, 0.01), (0.0, 0.0, 0.02)])
    assert big[0].count_atom_sites() >= BOXED_MIN_ATOMS
    assert use_boxes(big, dmap)


@pytest.mark.slow
def test_refine_command_computes_whole_model_figures_on_the_pool(p3ajo, monlib, tmp_path, monkeypatch):
    """``rerefine refine`` on a boxed model with 2 workers runs its before/after figures (metrics,
    placement check, validation) as pool tasks: the report equals the one made in one process."""
    from rerefine.flows.commands.refine import refine_files
    from rerefine.refine import boxed, mapio, modelio

    st, dmap, res = p3ajo
    model, mp = tmp_path / "m.cif", tmp_path / "m.mrc"
    modelio.write_model(model, _residues(st, 5, 60), program="test", version="0")
    mapio.write_map(mp, dmap)
    monkeypatch.setattr(boxed, "BOXED_MIN_ATOMS", 1)
    kw = dict(resolution=res, monlib=monlib, adp=False, cycles=1)
    one = refine_files(model, mp, tmp_path / "one.cif", workers=1, **kw)
    two = refine_files(model, mp, tmp_path / "two.cif", workers=2, **kw)
    assert one["boxed"] and two["boxed"]
    for key in ("before", "after", "placement"):
        assert two[key] == one[key]


@pytest.fixture(scope="module")
def p7cec(pairs):
    """7CEC chain A (4,308 atoms, one chain) in its EMD-30342 zone map: (Structure, DensityMap, Å)."""
    from rerefine.refine import mapio, modelio

    model, mp, res = pairs["emd_30342_zone_7cec_chainA"]
    return modelio.read_model(model), mapio.read_map(mp), res


@pytest.mark.slow
def test_cut_chain_keeps_the_one_piece_fit(p7cec, monlib, test_data):
    """7CEC's one chain cut into three regions (cores of at most 1,800 atoms: the chain limit lowered
    so that the cut path runs on real data) and a seam pass, default settings, two processes: CCmask
    and CCmask with the deposited B within CC_TOL (issue 17) of the one-piece refinement, no more
    Ramachandran, rotamer or C-beta outliers (MolProbity classes), and the bonds across the cuts
    within the site verdict's bond allowance. ``benchmarks/bench_cut.py --pairs 7cec:1800`` measured
    CCmask -0.0037 and with the deposited B +0.0012; the figures' noise is ~1e-4 (CCmask spread over
    copies of the model moved below the file precision, ``bench_refine_validation --jitter 0.0005``);
    with the margin's B held at the input B (``fixed_b_free=False``) it was -0.0064."""
    from rerefine.refine.boxed import refine_boxed
    from rerefine.refine.metrics import compute_metrics
    from rerefine.refine.realspace import refine_model
    from rerefine.refine.regions import split_regions
    from rerefine.refine.validation import validate

    st, dmap, res = p7cec
    assert len(st[0]) == 1
    whole = refine_model(st, dmap, res, monlib)
    cut = refine_boxed(st, dmap, res, monlib, region_atoms=1800, workers=2)
    regions = split_regions(st, 1800)
    assert cut.status == "ok" and len(regions) == 3
    assert len([h for h in cut.history if str(h.get("region", "")).startswith("seam")]) >= 1

    def cc_dep_b(model):
        m = model.clone()
        for a, b in zip(m[0].all(), st[0].all()):
            a.atom.b_iso = b.atom.b_iso
        return compute_metrics(m, dmap, res)["cc_mask"]

    assert abs(compute_metrics(cut.structure, dmap, res)["cc_mask"]
               - compute_metrics(whole.structure, dmap, res)["cc_mask"]) <= CC_TOL
    assert cc_dep_b(cut.structure) >= cc_dep_b(whole.structure) - CC_TOL
    top = test_data / "validation" / "top8000"
    v_cut = validate(cut.structure, monlib, top8000_dir=top).summary
    v_one = validate(whole.structure, monlib, top8000_dir=top).summary
    for key in ("rama_outliers", "rotamer_outliers", "cbeta_outliers"):
        assert v_cut[key] <= v_one[key], key
    devs = _cross_bond_devs(cut.structure, monlib, regions, _xyz(cut.structure))
    assert float(np.sqrt(np.mean(devs ** 2))) <= BOND_FLOOR + BOND_TOL
