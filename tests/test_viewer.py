"""Per-entry 3D-view data (reports/viewer.py, issue 20): the archive Mol* loads, checked without a
browser on real data (5ME2 and 5NI1, two real models of EMD-3488; test_viewer_browser.py draws it).
"""

from __future__ import annotations

import base64
import io
import json
import zipfile

import numpy as np
import pytest

from rerefine.refine import diffmap, mapio, modelio
from rerefine.reports import viewer


@pytest.fixture(scope="module")
def emd3488(pairs, test_data):
    model, mp, res = pairs["emd_3488_5me2"]
    st = modelio.read_model(model)
    other = modelio.read_model(test_data / "maps_models" / "emd_3488_5me2" / "5ni1_updated.cif")
    dmap = mapio.read_map(mp)
    diff, _ = diffmap.difference_map(st, dmap, res)
    return st, other, dmap, diff


def _archive(path):
    text = path.read_text()
    prefix = f"window.{viewer.GLOBAL_NAME} = "
    assert text.startswith(prefix) and text.rstrip().endswith(";")
    payload = json.loads(text[len(prefix):].rstrip().rstrip(";"))
    assert payload["format"] == "mvsx" and payload["data"].startswith("base64,")
    return payload, zipfile.ZipFile(io.BytesIO(base64.b64decode(payload["data"][7:])))


def test_viewer_data_holds_both_models_and_maps_in_their_frame(emd3488, tmp_path):
    st, other, dmap, diff = emd3488
    contour = 0.0737  # a level of EMD-3488 (its mean + 2 SD); EMDB's is not in the test data
    level = viewer.matched_level(dmap, contour, dmap)
    assert level == pytest.approx(contour, rel=0.02)  # the same map: the same level
    rows = [{"chain": "A", "seq": 10, "label": "A/<b>X 10", "why": "test"}]
    p = viewer.write_viewer_data(tmp_path / "5me2_viewer.js", st, other, dmap, diff, level, residues=rows, title="5ME2")
    payload, z = _archive(p)
    assert payload["residues"] == rows
    assert sorted(z.namelist()) == ["deposited.cif", "difference.map", "index.mvsj", "rerefined.cif", "sharpened.map"]
    mvs = json.loads(z.read("index.mvsj"))
    assert mvs["metadata"]["version"].startswith("1")
    urls = [c["params"]["url"] for c in mvs["root"]["children"] if c["kind"] == "download"]
    assert urls == ["deposited.cif", "rerefined.cif", "sharpened.map", "difference.map"]
    # models: the same atoms as the inputs
    for name, model in (("deposited.cif", st), ("rerefined.cif", other)):
        (tmp_path / name).write_bytes(z.read(name))
        back = modelio.read_model(tmp_path / name)
        assert back[0].count_atom_sites() == model[0].count_atom_sites()
    # maps: int8 steps of 0.1 SD, in the frame of the input (read back by our own reader)
    (tmp_path / "sharpened.map").write_bytes(z.read("sharpened.map"))
    back = mapio.read_map(tmp_path / "sharpened.map")
    assert back.data.dtype == np.float32 and np.abs(back.data).max() <= 127
    xyz = modelio.atom_positions(st)[::50]
    from rerefine.refine.interpolate import values_at

    v0 = values_at(dmap, xyz)
    v1 = values_at(back, xyz)
    box = mapio.cut_box(dmap, modelio.atom_positions(other), padding=viewer.PADDING)
    mean, sd = float(box.data.mean(dtype=np.float64)), float(box.data.std(dtype=np.float64))
    expect = np.clip((v0 - mean) / (sd * viewer.STEP_SD), -127, 127)
    ok = np.isfinite(v1)
    assert ok.mean() > 0.95
    assert np.max(np.abs(v1[ok] - expect[ok])) <= 0.5 + 1e-6  # rounding to the 0.1-SD step
    levels = [r["params"]["absolute_isovalue"] for c in mvs["root"]["children"] if c["kind"] == "download"
              and c["params"]["url"] == "difference.map" for r in c["children"][0]["children"][0]["children"]]
    assert levels == [30.0, -30.0]  # ±3 SD in 0.1-SD steps


def test_residue_list_picks_largest_changes_and_poorest_fits():
    before = [{"chain": "A", "seq": i, "icode": "", "resname": "ALA", "cc": 0.8} for i in range(1, 41)]
    after = [dict(r, cc=0.8 + (0.1 if r["seq"] == 7 else 0.0) - (0.5 if r["seq"] == 30 else 0.0)) for r in before]
    after.append({"chain": "A", "seq": 99, "icode": "", "resname": "HOH", "cc": 0.01})
    rows = viewer.residue_list(before, after, n=2)
    # changes: 30 (-0.5), 7 (+0.1); poorest fits: 30 (listed already), then the first at 0.80
    assert [r["label"] for r in rows] == ["A/ALA 30", "A/ALA 7", "A/ALA 1"]
    assert rows[0]["why"] == "CC 0.80 → 0.30" and rows[2]["why"] == "poorest fit: CC 0.80"
    # validation outliers of the re-refined model come first, each residue once
    val = [{"chain": "A", "seq": 7, "icode": "", "resname": "ALA", "rama": "outlier", "rotamer": None,
            "cbeta_dev": 0.31},
           {"chain": "A", "seq": 8, "icode": "", "resname": "ALA", "rama": "favored", "rotamer": "allowed",
            "cbeta_dev": 0.05}]
    rows = viewer.residue_list(before, after, n=2, validation=val)
    assert [r["label"] for r in rows] == ["A/ALA 7", "A/ALA 30", "A/ALA 1"]
    assert rows[0]["why"] == "Ramachandran outlier, Cβ deviation 0.31 Å"
    assert all("HOH" not in r["label"] for r in rows)


def test_pipeline_writes_the_viewer_artefact_and_survives_bad_input(emd3488, tmp_path):
    from rerefine.flows import pipeline

    st, other, dmap, diff = emd3488
    art = pipeline.write_viewer(tmp_path, "5ME2", st, other, dmap, diff, dmap, {"contour": 0.0737}, {})
    assert art["kind"] == "viewer_data" and art["size"] == (tmp_path / "5me2_viewer.js").stat().st_size
    # a map the viewer cannot use costs the picture, not the entry
    assert pipeline.write_viewer(tmp_path, "5ME2", st, other, None, None, dmap, {}, {}) is None


def test_large_boxes_are_block_averaged_in_place(emd3488):
    """Above MAX_VOXELS a map is averaged over k³ blocks whose centres keep their positions."""
    _, _, dmap, _ = emd3488
    small = viewer.coarsen(dmap, max_voxels=dmap.data.size // 8)  # k = 2
    assert small.shape == tuple(n // 2 for n in dmap.shape)
    assert np.allclose(small.voxel_size, 2 * dmap.voxel_size)
    assert small.data[3, 4, 5] == pytest.approx(dmap.data[6:8, 8:10, 10:12].mean(), rel=1e-5)
    centre = dmap.origin + dmap.orth_matrix @ np.array([6.5, 8.5, 10.5])
    assert np.allclose(small.origin + small.orth_matrix @ np.array([3, 4, 5]), centre)
    assert viewer.coarsen(dmap) is dmap
