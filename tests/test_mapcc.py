"""CC_mask / CC_box / CC_volume / CC_peaks and per-residue CC against cctbx (mmtbx map_model_cc).

Reference: ../shared/data/reference/cctbx_reference.json (cctbx-base 2025.11). EMD-20026's
resolution 1.75 Å is the reference file's stated assumption; the EMD-30342 zone map's
ORIGIN is honoured by our map reader, which is what the reference did by moving the model.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from rerefine.refine import mapcc, mapio, mask, modelio, modelmap

PAIR_NAMES = ["emd_3488_5me2", "emd_30342_zone_7cec_chainA", "emd_20026_box_3ajo_refined"]


@pytest.fixture(scope="module")
def reference(test_data):
    return json.loads((test_data / "reference" / "cctbx_reference.json").read_text())


@pytest.fixture(scope="module")
def computed(pairs):
    out = {}
    for name in PAIR_NAMES:
        model_path, map_path, res = pairs[name]
        st = modelio.read_model(model_path)
        dmap = mapio.read_map(map_path)
        calc = modelmap.model_map(st, dmap, res)
        msk = mask.molecular_mask(st, dmap)
        out[name] = (st, dmap, calc, msk, res)
    return out


@pytest.mark.parametrize("name", PAIR_NAMES)
def test_five_cc_agree_with_cctbx(name, computed, reference):
    st, dmap, calc, msk, res = computed[name]
    got = mapcc.five_cc(dmap.data, calc.data, msk)
    ref = reference[name]
    for key in ("cc_mask", "cc_box", "cc_volume", "cc_peaks"):
        assert abs(got[key] - ref[key]) < 0.01, (key, got[key], ref[key])


@pytest.mark.parametrize("name", PAIR_NAMES)
def test_atom_radius_and_per_residue_cc(name, computed, reference):
    st, dmap, calc, msk, res = computed[name]
    b_mean = float(np.mean([cra.atom.b_iso for cra in st[0].all()]))
    radius = mapcc.atom_radius(res, b_mean)
    assert radius == pytest.approx(reference[name]["atom_radius"], abs=0.05)
    g = dmap.grid_coordinates(modelio.atom_positions(st))
    groups, keys, i = [], [], 0
    for ch in st[0]:
        for r in ch:
            groups.append(np.arange(i, i + len(r)))
            keys.append((ch.name, r.seqid.num, r.seqid.icode.strip()))
            i += len(r)
    cc = mapcc.group_cc(dmap.data, calc.data, g, groups, dmap.voxel_size, radius)
    ref = {}
    for row in reference[name]["per_residue"]:
        ref.setdefault((row["chain"], row["resseq"], row["icode"].strip()), row["cc"])
    diffs = np.array([cc[j] - ref[k] for j, k in enumerate(keys) if k in ref])
    assert len(diffs) == len(keys)
    assert np.abs(diffs).mean() < 0.005
    assert np.abs(diffs).max() < 0.02


def test_pearson_and_rank_semantics():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(6, 7, 8)).astype(np.float32)
    y = (x + rng.normal(size=x.shape)).astype(np.float32)
    sel = rng.random(x.shape) > 0.5
    assert mapcc.pearson(x, y) == pytest.approx(np.corrcoef(x.ravel(), y.ravel())[0, 1], abs=1e-6)
    assert mapcc.pearson(x, y, sel) == pytest.approx(np.corrcoef(x[sel], y[sel])[0, 1], abs=1e-6)
    got = mapcc.five_cc(x, y, sel)
    n = int(sel.sum())
    # cctbx keeps every point >= the value of rank n (0-based, descending): n + 1 points
    top_y = np.argsort(y.ravel())[::-1][: n + 1]
    top_x = np.argsort(x.ravel())[::-1][: n + 1]
    vol = np.corrcoef(x.ravel()[top_y], y.ravel()[top_y])[0, 1]
    union = np.union1d(top_x, top_y)
    peaks = np.corrcoef(x.ravel()[union], y.ravel()[union])[0, 1]
    assert got["cc_volume"] == pytest.approx(vol, abs=1e-6)
    assert got["cc_peaks"] == pytest.approx(peaks, abs=1e-6)
    assert got["n_mask"] == n


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kth_smallest_equals_numpy_partition(dtype):
    """The parallel selection (numba prange passes; arrays above 4 x 65,536 values, so the
    parallel path runs) gives numpy's own order statistic, ``np.partition(x, k)[k]``, on
    smooth values, on values rounded to many ties, on a block of zeros (a masked map) with
    both signs of zero, and at the first and last rank; with a NaN it is numpy's answer too."""
    from rerefine.refine.mapcc import kth_smallest

    rng = np.random.default_rng(7)
    n = 600_001
    smooth = rng.normal(size=n)
    ties = np.round(rng.normal(size=n), 2)
    masked = np.concatenate([np.zeros(n // 2), -np.zeros(n // 4), rng.exponential(size=n - n // 2 - n // 4)])
    rng.shuffle(masked)
    for x in (smooth, ties, masked):
        x = x.astype(dtype)
        for k in (0, 1, n // 3, n // 2, n - 1000, n - 1):
            assert kth_smallest(x, k) == np.partition(x, k)[k]
    with_nan = smooth.astype(dtype)
    with_nan[5] = np.nan
    assert kth_smallest(with_nan, 10) == np.partition(with_nan, 10)[10]
    with pytest.raises(ValueError):
        kth_smallest(smooth, n)
