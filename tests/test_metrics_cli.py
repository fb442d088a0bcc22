"""``rerefine metrics`` / ``rerefine diffmap`` and the bad-input treatment of compute_metrics."""

from __future__ import annotations

import json
from dataclasses import replace

import gemmi
import numpy as np
import pytest

from rerefine.flows.cli import main
from rerefine.refine import diffmap, mapio, metrics, modelio
from rerefine.common.errors import InputError

from test_inclusion import gemmi_inclusion  # noqa: E402  (tests/ is on sys.path under pytest)


@pytest.fixture(scope="module")
def zone(pairs):
    model, mp, res = pairs["emd_30342_zone_7cec_chainA"]
    return model, mp, res


@pytest.fixture(scope="module")
def reference(test_data):
    return json.loads((test_data / "reference" / "cctbx_reference.json").read_text())


def test_metrics_cli_json(zone, reference, tmp_path, capsys):
    model, mp, res = zone
    out = tmp_path / "m.json"
    # no --resolution: the model states 3.9 Å (_em_3d_reconstruction)
    assert main(["-q", "metrics", str(model), str(mp), "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert tuple(got) == metrics.KEYS
    assert got["resolution"] == pytest.approx(3.9)
    ref = reference["emd_30342_zone_7cec_chainA"]
    for key in ("cc_mask", "cc_box", "cc_volume", "cc_peaks"):
        assert abs(got[key] - ref[key]) < 0.01
    # MapQ's own chain-A figure shipped with the pair is 0.45 (sigma 0.6)
    assert abs(got["per_chain"]["A"]["q_score"] - 0.45) < 0.015
    st = modelio.read_model(model)
    assert len(got["per_residue"]) == sum(len(ch) for ch in st[0])
    row = got["per_residue"][0]
    assert set(row) == {"chain", "seq", "icode", "resname", "cc", "q_score", "atom_inclusion"}
    assert got["contour_source"].startswith("default")
    assert "WARNING" in capsys.readouterr().err  # the fallback contour is said loudly
    # atom inclusion at the reported contour, computed by gemmi alone (7CEC chain A: all amino acids)
    assert got["atom_inclusion"] == pytest.approx(gemmi_inclusion(model, mp, got["contour"]), abs=1e-12)
    assert got["atom_inclusion_backbone"] == pytest.approx(
        gemmi_inclusion(model, mp, got["contour"], names={"N", "CA", "C", "O"}), abs=1e-12)


def test_metrics_cli_contour_and_stdout(zone, capsys):
    model, mp, res = zone
    assert main(["-q", "metrics", str(model), str(mp), "--resolution", "3.9", "--contour", "0.03",
                 "--q-sigma", "0.4", "--json", "-"]) == 0
    cap = capsys.readouterr()
    got = json.loads(cap.out)
    assert got["contour"] == 0.03 and got["contour_source"] == "user" and "WARNING" not in cap.err
    assert got["q_sigma"] == 0.4
    assert got["q_score_expected"] == pytest.approx(-0.1866 * 3.9 + 1.1242, abs=1e-6)


def test_metrics_cli_resolution_errors(pairs, capsys):
    model, mp, _ = pairs["emd_20026_box_3ajo_refined"]  # the model states no resolution
    assert main(["metrics", str(model), str(mp)]) == 1
    err = capsys.readouterr().err
    assert "give --resolution" in err and len(err.strip().splitlines()) == 1
    assert main(["metrics", str(model), str(mp), "--resolution", "0"]) == 1
    assert "positive" in capsys.readouterr().err
    assert main(["metrics", str(model), str(mp), "--resolution", "-1.5"]) == 1


def test_bad_inputs(pairs, tmp_path, capsys):
    model, mp, res = pairs["emd_20026_box_3ajo_refined"]
    st = modelio.read_model(model)
    dmap = mapio.read_map(mp)
    # model outside the map
    far = st.clone()
    far[0].transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(500, 0, 0)))
    path = tmp_path / "far.pdb"
    far.write_pdb(str(path))
    assert main(["metrics", str(path), str(mp), "--resolution", "1.75"]) == 1
    assert "outside" in capsys.readouterr().err
    # unknown element
    bad = st.clone()
    bad[0][0][0][0].element = gemmi.Element("X")
    with pytest.raises(InputError, match="unknown element"):
        metrics.compute_metrics(bad, dmap, res)
    # NaN in the map
    nan = dmap.data.copy()
    nan[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        metrics.compute_metrics(st, replace(dmap, data=nan), res)
    with pytest.raises(InputError, match="resolution"):
        metrics.compute_metrics(st, dmap, None)


def test_zero_occupancy_is_scored_but_adds_no_density(pairs):
    model, mp, res = pairs["emd_20026_box_3ajo_refined"]
    st = modelio.read_model(model)
    dmap = mapio.read_map(mp)
    base = metrics.compute_metrics(st, dmap, res)
    zero = st.clone()
    target = zero[0][0][20]
    for atom in target:
        atom.occ = 0.0
    got = metrics.compute_metrics(zero, dmap, res)
    row0 = base["per_residue"][20]
    row = got["per_residue"][20]
    # Q and atom inclusion depend on positions only: unchanged
    assert row["q_score"] == pytest.approx(row0["q_score"], abs=1e-9)
    assert row["atom_inclusion"] == row0["atom_inclusion"]
    # the model map no longer holds the residue: its local CC drops
    assert np.isfinite(row["cc"]) and row["cc"] < row0["cc"] - 0.05
    assert got["cc_mask"] < base["cc_mask"]


def test_diffmap_cli_finds_a_deleted_side_chain(pairs, tmp_path):
    model, mp, res = pairs["emd_20026_box_3ajo_refined"]
    st = modelio.read_model(model)
    # delete the side chain of the first TRP beyond CB: its density is then unexplained
    cut = st.clone()
    removed = []
    for res_ in cut[0][0]:
        if res_.name == "TRP":
            for i in range(len(res_) - 1, -1, -1):
                if res_[i].name not in ("N", "CA", "C", "O", "CB"):
                    removed.append(res_[i].pos.tolist())
                    del res_[i]
            break
    path = tmp_path / "cut.pdb"
    cut.write_pdb(str(path))
    out_map = tmp_path / "diff.mrc"
    out_json = tmp_path / "diff.json"
    assert main(["-q", "diffmap", str(path), str(mp), "--resolution", str(res), "-o", str(out_map),
                 "--peaks", "300", "--json", str(out_json)]) == 0
    got = json.loads(out_json.read_text())
    diff = mapio.read_map(out_map)
    np.testing.assert_allclose(diff.voxel_size, mapio.read_map(mp).voxel_size, rtol=1e-5)
    assert abs(float(diff.data.mean())) < 1e-3 * got["sd"] * 100
    removed = np.array(removed)
    near = [p for p in got["positive_peaks"]
            if np.min(np.linalg.norm(removed - np.array(p["xyz"]), axis=1)) < 1.5]
    assert near and max(p["height_sd"] for p in near) > 8.0


def test_difference_map_of_model_against_itself_is_flat(pairs):
    model, mp, res = pairs["emd_20026_box_3ajo_refined"]
    st = modelio.read_model(model)
    dmap = mapio.read_map(mp)
    from rerefine.refine import modelmap

    own = modelmap.model_map(st, dmap, res)
    scaled = replace(dmap, data=(3.0 * own.data).astype(np.float32))
    diff, info = diffmap.difference_map(st, scaled, res)
    assert np.allclose(info["shell_scale"], 3.0, rtol=0.02)
    assert info["sd"] < 0.02 * float(scaled.data.std())


@pytest.mark.parametrize("min_sd", [1.0, 3.0])
def test_local_maxima_equal_scipy_maximum_filter(pairs, min_sd):
    """The difference-peak search (only voxels above the threshold examined) finds the same
    voxels, in the same order, as scipy.ndimage.maximum_filter (3×3×3, edge repeated) over the
    whole box, on a real map (3AJO's box, both signs) and on a grid with ties and edge maxima."""
    from scipy import ndimage

    from rerefine.refine.diffmap import local_maxima

    _, mp, _ = pairs["emd_20026_box_3ajo_refined"]
    data = np.asarray(mapio.read_map(mp).data, np.float32)
    sd = float(data.std())
    ties = np.zeros((5, 6, 7), np.float32)
    ties[0, 0, 0] = ties[0, 0, 1] = 5.0  # a tie at the corner: both are maxima
    ties[4, 5, 6] = 4.0
    ties[2, 3, 3] = 4.0
    ties[2, 3, 4] = 3.9
    for v, thr in ((data, min_sd * sd), (-data, min_sd * sd), (ties, min_sd)):
        ref = (v == ndimage.maximum_filter(v, size=3, mode="nearest")) & (v >= thr)
        idx, heights = local_maxima(v, thr)
        assert np.array_equal(idx, np.argwhere(ref))
        assert np.array_equal(heights, v[ref])
        assert len(idx) > 0
