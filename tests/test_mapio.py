"""Map and model input layer on the real pairs and on broken files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from rerefine.refine import mapio, modelio
from rerefine.common.errors import InputError


@pytest.mark.parametrize("name", ["emd_3488_5me2", "emd_30342_zone_7cec_chainA", "emd_20026_box_3ajo_refined"])
def test_real_pairs_overlap(pairs, name):
    model, mp, _ = pairs[name]
    dmap = mapio.read_map(mp)
    st = modelio.read_model(model)
    assert mapio.fraction_inside(dmap, modelio.atom_positions(st)) >= 0.99


def test_chimera_origin_is_off_grid_and_honoured(pairs):
    # EMD-30342 zone map: NSTART 0, ORIGIN (145.825, 112.825, 120.517) Å = 131.02, 101.37, 108.28 voxels.
    dmap = mapio.read_map(pairs["emd_30342_zone_7cec_chainA"][1])
    assert dmap.start == (0, 0, 0)
    np.testing.assert_allclose(dmap.origin, [145.825, 112.825, 120.517], atol=1e-3)
    steps = dmap.origin / dmap.voxel_size
    np.testing.assert_allclose(steps, [131.02, 101.37, 108.28], atol=0.01)


def test_axis_order_and_nstart(test_data):
    # EMD-3001: MAPC/MAPR/MAPS = 3,1,2, NSTART (0,-21,-12) in column/row/section order.
    dmap = mapio.read_map(test_data / "maps_models/maps_only_mrcfile/EMD-3001.map")
    assert dmap.shape == (43, 25, 73)  # x from rows, y from sections, z from columns
    assert dmap.start == (-21, -12, 0)
    assert dmap.sampling == (40, 12, 72)
    assert not dmap.is_orthogonal
    # data[x, y, z] must be the file's value at section y, row x, column z.
    import mrcfile

    with mrcfile.open(test_data / "maps_models/maps_only_mrcfile/EMD-3001.map") as m:
        raw = np.asarray(m.data)
    assert dmap.data[5, 7, 11] == raw[7, 5, 11]


def test_gzip_map_same_as_plain(test_data):
    d = test_data / "maps_models/maps_only_mrcfile"
    a = mapio.read_map(d / "EMD-3001.map")
    b = mapio.read_map(d / "emd_3001.map.gz")
    np.testing.assert_array_equal(a.data, b.data)


def test_truncated_map(pairs, tmp_path):
    src = pairs["emd_3488_5me2"][1].read_bytes()
    bad = tmp_path / "trunc.mrc"
    bad.write_bytes(src[: len(src) // 2])
    with pytest.raises(InputError, match="trunc.mrc"):
        mapio.read_map(bad)


def test_corrupt_gzip(pairs, tmp_path):
    data = gzip.compress(pairs["emd_3488_5me2"][1].read_bytes())
    bad = tmp_path / "bad.map.gz"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="bad.map.gz"):
        mapio.read_map(bad)


def test_nan_map_rejected(pairs, tmp_path):
    dmap = mapio.read_map(pairs["emd_3488_5me2"][1])
    dmap.data[3, 4, 5] = np.nan
    with pytest.warns(RuntimeWarning, match="NaN"):  # mrcfile warns when it writes such a map
        p = mapio.write_map(tmp_path / "nan.mrc", dmap)
    with pytest.raises(InputError, match="NaN"):
        mapio.read_map(p)


def test_write_read_roundtrip_keeps_frame(pairs, tmp_path):
    model, mp, _ = pairs["emd_30342_zone_7cec_chainA"]
    dmap = mapio.read_map(mp)
    xyz = modelio.atom_positions(modelio.read_model(model))
    box = mapio.cut_box(dmap, xyz[:200], padding=4.0)
    assert box.shape < dmap.shape
    for name in ("box.mrc", "box.mrc.gz"):
        back = mapio.read_map(mapio.write_map(tmp_path / name, box))
        np.testing.assert_allclose(back.origin, box.origin, atol=1e-3)
        np.testing.assert_array_equal(back.data, box.data)
    # the same absolute point has the same value in the map and in the box
    g_full = np.round(dmap.grid_coordinates(box.origin)).astype(int)[0]
    assert box.data[0, 0, 0] == dmap.data[tuple(g_full)]
    assert not list(tmp_path.glob(".tmp-*"))


def test_cut_box_outside(pairs):
    dmap = mapio.read_map(pairs["emd_3488_5me2"][1])
    with pytest.raises(InputError, match="does not overlap"):
        mapio.cut_box(dmap, np.array([[1000.0, 1000.0, 1000.0]]))


def test_empty_model(tmp_path):
    p = tmp_path / "empty.pdb"
    p.write_text("HEADER    EMPTY\nEND\n")
    with pytest.raises(InputError, match="no atoms"):
        modelio.read_model(p)


def test_garbage_model(tmp_path):
    p = tmp_path / "junk.cif"
    p.write_text("data_x\nloop_\n_atom_site.id\n'unterminated\n")
    with pytest.raises(InputError, match="junk.cif"):
        modelio.read_model(p)


def test_model_roundtrip_records_program(pairs, tmp_path):
    st = modelio.read_model(pairs["emd_20026_box_3ajo_refined"][0])
    out = modelio.write_model(tmp_path / "out.cif", st, program="rerefine", version="0.1.0")
    text = out.read_text()
    assert "rerefine" in text and "_software" in text
    assert modelio.read_model(out)[0].count_atom_sites() == st[0].count_atom_sites()


@pytest.mark.parametrize("name", ["emd_3488_5me2", "emd_30342_zone_7cec_chainA", "emd_20026_box_3ajo_refined"])
def test_box_read_is_the_box_cut_from_the_whole_map(pairs, name, tmp_path):
    """read_map_box (memory-mapped, or decompressed for .gz) gives the voxels, start and origin
    cut_box cuts from the whole map; read_map_header gives the frame without the data."""
    model, mp, _res = pairs[name]
    xyz = modelio.atom_positions(modelio.read_model(model))
    whole = mapio.read_map(mp)
    want = mapio.cut_box(whole, xyz, padding=8.0)
    gz = tmp_path / (mp.name + ".gz")
    gz.write_bytes(gzip.compress(mp.read_bytes(), 1))
    for path in (mp, gz):
        got = mapio.read_map_box(path, xyz, padding=8.0)
        assert got.shape == want.shape and got.start == want.start
        assert np.allclose(got.origin, want.origin) and np.array_equal(got.data, want.data)
    head = mapio.read_map_header(mp)
    assert head.shape == whole.shape and head.start == whole.start and np.allclose(head.origin, whole.origin)
    assert head.data.strides == (0, 0, 0)  # no values behind the frame


def test_compressed_box_read_of_part_of_a_model(pairs, tmp_path):
    """gzip and bzip2, streamed section by section: a box around 200 atoms of 5ME2 (a real cut
    on every axis) holds the voxels cut_box cuts from the whole map; a file cut short within the
    box's sections is refused with a one-line reason."""
    import bz2

    model, mp, _res = pairs["emd_3488_5me2"]
    xyz = modelio.atom_positions(modelio.read_model(model))[:200]
    whole = mapio.read_map(mp)
    want = mapio.cut_box(whole, xyz, padding=3.0)
    assert all(w < n for w, n in zip(want.shape, whole.shape))
    for path, data in ((tmp_path / "m.map.gz", gzip.compress(mp.read_bytes(), 1)),
                       (tmp_path / "m.map.bz2", bz2.compress(mp.read_bytes()))):
        path.write_bytes(data)
        got = mapio.read_map_box(path, xyz, padding=3.0)
        assert got.shape == want.shape and got.start == want.start and np.array_equal(got.data, want.data)
    lo, hi = mapio.box_bounds(whole, xyz, 3.0)
    section = whole.shape[0] * whole.shape[1] * 4  # 5ME2's map: x fastest, z the sections, float32
    short = tmp_path / "short.map.gz"
    short.write_bytes(gzip.compress(mp.read_bytes()[: 1024 + section * int(lo[2] + 2)], 1))
    with pytest.raises(InputError, match="short.map.gz: truncated"):
        mapio.read_map_box(short, xyz, padding=3.0)


def test_compressed_box_read_checks_the_whole_stream(pairs, tmp_path):
    """A streamed box read refuses what reading the whole file refuses, even when the fault lies
    after the box's sections: a gzip whose CRC-32 does not match (the stored checksum changed) and
    a file whose data end before the sections its header states."""
    model, mp, _res = pairs["emd_3488_5me2"]
    raw = mp.read_bytes()
    xyz = modelio.atom_positions(modelio.read_model(model))[:200]
    data = bytearray(gzip.compress(raw, 1))
    data[-8] ^= 0xFF  # the gzip trailer: CRC-32 of the data, then their length
    bad = tmp_path / "crc.map.gz"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match="crc.map.gz"):
        mapio.read_map(bad)
    with pytest.raises(InputError, match="crc.map.gz: corrupt"):
        mapio.read_map_box(bad, xyz, padding=3.0)
    whole = mapio.read_map(mp)
    _, hi = mapio.box_bounds(whole, xyz, 3.0)
    assert hi[2] < whole.shape[2] - 2  # the box ends before the last sections
    short = tmp_path / "end.map.gz"
    short.write_bytes(gzip.compress(raw[: len(raw) - whole.shape[0] * whole.shape[1] * 4], 1))
    with pytest.raises(InputError, match="end.map.gz"):
        mapio.read_map(short)
    with pytest.raises(InputError, match="end.map.gz: truncated"):
        mapio.read_map_box(short, xyz, padding=3.0)


def test_header_of_a_map_with_another_axis_order(test_data):
    """EMD-3001 (MAPC/MAPR/MAPS = 3,1,2): the header alone gives the grid gemmi sets up."""
    import gemmi

    p = test_data / "maps_models" / "maps_only_mrcfile" / "EMD-3001.map"
    g = gemmi.read_ccp4_map(str(p))
    g.setup(float("nan"))
    head = mapio.read_map_header(p)
    assert head.shape == (43, 25, 73) and head.start == (-21, -12, 0)  # as test_axis_order_and_nstart
    assert head.sampling == (g.grid.nu, g.grid.nv, g.grid.nw) == (40, 12, 72)
