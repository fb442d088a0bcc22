"""Sample archive from the real test data, mirror discovery (directory and URL), fetching, CLI."""

from __future__ import annotations

import gzip
import json

import gemmi
import pytest

from rerefine.flows.cli import main
from rerefine.harvester import ids, sample_archive
from rerefine.harvester.harvest import Candidate, discover, fetch_entry
from rerefine.harvester.http import HttpClient
from rerefine.harvester.loopback import LoopbackArchive
from rerefine.harvester.mirror import Mirror, model_record
from rerefine.refine import mapio, modelio
from rerefine.common.errors import ArchiveError, InputError

MAPS = {"5me2": ("EMD-3488", "emd_3488_5me2/emd_3488.mrc"),
        "7cec": ("EMD-30342", "emd_30342_zone_7cec_chainA/390_emd_30342_A_z4.mrc"),
        "loc_3ajo_fitted": ("EMD-20026", "emd_20026_box_3ajo_refined/emd20026_prot.mrc")}


def _client():
    return HttpClient(backoff=0.01, max_backoff=0.05, min_interval=0.0, timeout=2.0, retries=2)


@pytest.fixture(scope="module")
def archive(tmp_path_factory, test_data):
    out = tmp_path_factory.mktemp("sample_archive")
    sample_archive.build(out, test_data)
    return out


def test_layout_and_bytes(archive, test_data):
    for pid, (eid, src) in MAPS.items():
        n = eid[4:]
        assert (archive / Mirror.model_rel(pid)).is_file()
        mp = archive / f"emdb/structures/{eid}/map/emd_{n}.map.gz"
        # map bytes unchanged (Chimera ORIGIN words kept), only gzipped
        assert gzip.decompress(mp.read_bytes()) == (test_data / "maps_models" / src).read_bytes()
        header = json.loads((archive / f"emdb/structures/{eid}/header/emd-{n}.json").read_text())
        assert header["emdb_id"] == eid and header["map"]["file"] == f"emd_{n}.map.gz"
        assert "contour_list" not in header["map"]  # not stated in any file: absent, not invented
    assert (archive / Mirror.model_rel("5ni1")).is_file()
    assert Mirror.model_rel("loc_3ajo_fitted").endswith("/te/loc_3ajo_fitted.cif.gz")


def test_model_records_only_what_sources_state(archive, test_data):
    r = model_record(archive / Mirror.model_rel("5me2"), "5me2")
    # 5me2.pdb: EXPDTA, REVDAT 1 23-NOV-16, REMARK 2 3.20, REMARK 900 EMD-3488
    assert (r.method, r.release_date, r.resolution, r.emdb_ids) == \
        ("ELECTRON MICROSCOPY", "2016-11-23", 3.2, ["EMD-3488"])
    r = model_record(archive / Mirror.model_rel("7cec"), "7cec")
    assert (r.release_date, r.resolution, r.emdb_ids) == ("2021-06-23", 3.9, ["EMD-30342"])
    r = model_record(archive / Mirror.model_rel("5ni1"), "5ni1")
    assert (r.release_date, r.emdb_ids, r.resolution) == (None, [], 3.2)
    r = model_record(archive / Mirror.model_rel("loc_3ajo_fitted"), "loc_3ajo_fitted")
    assert (r.method, r.release_date, r.resolution, r.emdb_ids) == (None, None, None, ["EMD-20026"])
    assert r.polymer_count == 1
    # the converted models still read as models with the right atoms
    st = modelio.read_model(archive / Mirror.model_rel("5me2"))
    src = gemmi.read_structure(str(test_data / "maps_models" / "emd_3488_5me2" / "5me2.pdb"))
    assert st[0].count_atom_sites() == src[0].count_atom_sites() > 4000


def test_local_mirror_discovery(archive):
    cands = {c.pdb_id: c for c in discover(mirror=archive)}
    assert set(cands) == {"5me2", "5ni1", "7cec", "loc_3ajo_fitted"}
    assert (cands["5me2"].status, cands["5me2"].emdb_id, cands["5me2"].resolution) == ("accepted", "EMD-3488", 3.2)
    assert (cands["7cec"].status, cands["7cec"].resolution) == ("accepted", 3.9)
    assert cands["5ni1"].status == "rejected" and "no associated EMDB map" in cands["5ni1"].reason
    assert cands["loc_3ajo_fitted"].status == "rejected" and "no reported resolution" in cands["loc_3ajo_fitted"].reason
    assert cands["7cec"].contour_level is None and cands["7cec"].half_map_files == []
    # unknown resolution accepted on request (refinement must then be given one)
    c = {c.pdb_id: c for c in discover(mirror=archive, accept_unknown_resolution=True)}["loc_3ajo_fitted"]
    assert c.status == "accepted" and c.resolution is None
    # a dated window: dated entries outside it vanish, undated ones are recorded as rejected
    win = {c.pdb_id: c for c in discover("2020-01-01", "2022-12-31", mirror=archive)}
    assert win["7cec"].status == "accepted" and "5me2" not in win
    assert win["5ni1"].status == "rejected" and "no release date" in win["5ni1"].reason
    # limit counts accepted entries
    assert sum(c.status == "accepted" for c in discover(mirror=archive, limit=1)) == 1


def test_local_mirror_fetch_in_place(archive, tmp_path):
    c = {c.pdb_id: c for c in discover(mirror=archive)}["7cec"]
    f = fetch_entry(c, tmp_path, mirror=archive)
    assert f.status == "cached" and f.bytes_transferred == 0
    assert f.model_path == archive / Mirror.model_rel("7cec")
    dmap = mapio.read_map(f.map_path)
    st = modelio.read_model(f.model_path)
    # ORIGIN kept: the zone map and the deposited-frame model overlap
    assert mapio.fraction_inside(dmap, modelio.atom_positions(st)) == pytest.approx(1.0)
    assert f.metadata["resolution"] == 3.9 and f.metadata["release_date"] == "2021-06-23"


def test_url_mirror_discovery_and_fetch(archive, tmp_path):
    cache = tmp_path / "cache"
    with LoopbackArchive(archive) as srv:
        cl = _client()
        cands = discover(mirror=srv.url, session=cl, cache_dir=cache, accept_unknown_resolution=True)
        acc = [c for c in cands if c.status == "accepted"]
        assert {c.pdb_id for c in acc} == {"5me2", "7cec", "loc_3ajo_fitted"}
        # the map of 5me2 drops half way and then resumes
        map_path = "/emdb/structures/EMD-3488/map/emd_3488.map.gz"
        size = (archive / map_path[1:]).stat().st_size
        srv.add_fault(map_path, "drop", 0.5)
        fetched = {c.pdb_id: fetch_entry(c, cache, mirror=srv.url, session=cl, progress=False) for c in acc}
        assert srv.bytes_sent[map_path] == size
        for pid, f in fetched.items():
            assert f.status == "fetched"
            assert f.model_path.name == f"{pid}.cif.gz" and f.map_path.name == f"emd_{MAPS[pid][0][4:]}.map.gz"
            assert f.model_path.parent == cache / "entries" / pid
            assert mapio.fraction_inside(mapio.read_map(f.map_path),
                                         modelio.atom_positions(modelio.read_model(f.model_path))) > 0.99
        # a second run finds everything in the cache: no bytes cross the network
        sent = srv.total_sent()
        again = fetch_entry(acc[0], cache, mirror=srv.url, session=cl, progress=False)
        assert again.status == "cached" and srv.total_sent() == sent
        # missing half-maps do not fail the entry; they are dropped with a warning
        c = Candidate(**{**acc[0].to_dict(), "half_map_files": ["emd_3488_half_map_1.map.gz"]})
        f = fetch_entry(c, cache, mirror=srv.url, session=cl, progress=False)
        assert f.half_map_paths == [] and "not found" in f.metadata["warnings"][0]
        # a missing map fails the entry with a one-line message naming it
        c = Candidate(**{**acc[0].to_dict(), "map_file": "emd_3488_missing.map.gz"})
        with pytest.raises(ArchiveError, match=r"^5me2: map EMD-3488: not found"):
            fetch_entry(c, cache, mirror=srv.url, session=cl, progress=False)


def test_ids_validated():
    assert ids.pdb_id("5ME2") == "5me2" and ids.pdb_id("pdb_00005me2") == "pdb_00005me2"
    assert ids.emdb_id("emd_3488") == "EMD-3488" == ids.emdb_id("3488")
    assert ids.divided_key("pdb_00005me2") == ids.divided_key("5me2") == "me"
    assert ids.classic_of("pdb_00005me2") == "5me2"
    for bad in ["../x", "5me", "abcd", "5me2/", "5me2 ", "pdb_1", "loc_", "LOC_A/B", "", None]:
        if bad == "5me2 ":
            continue  # surrounding blanks are stripped
        with pytest.raises(InputError, match="bad PDB id"):
            ids.pdb_id(bad)
    for bad in ["EMD-12", "EMD-1234567", "EMD-12a4", "emd/1234"]:
        with pytest.raises(InputError, match="bad EMDB id"):
            ids.emdb_id(bad)
    for bad in ["../a.map.gz", "a/b.gz", ".hidden", "a..b", "x" * 300, "a b"]:
        with pytest.raises(InputError, match="unsafe"):
            ids.safe_filename(bad)
    with pytest.raises(InputError, match="bad PDB id"):
        Mirror.model_rel("../../etc")


def test_cli_sample_archive_and_harvest(test_data, tmp_path, monkeypatch):
    monkeypatch.setenv("RR_DATA_DIR", str(tmp_path / "data"))
    out = tmp_path / "mirror"
    assert main(["-q", "sample-archive", "--out", str(out), "--data", str(test_data)]) == 0
    res = tmp_path / "h.json"
    assert main(["harvest", "--mirror", str(out), "--json", str(res)]) == 0
    rows = {r["pdb_id"]: r for r in json.loads(res.read_text())["entries"]}
    assert rows["5me2"]["status"] == "cached" and rows["5me2"]["map_path"].endswith("emd_3488.map.gz")
    assert rows["5ni1"]["status"] == "rejected"
    assert rows["loc_3ajo_fitted"]["reason"] == "no reported resolution"
    assert main(["harvest", "--mirror", str(out), "--dry-run", "--since", "2021-01-01",
                 "--json", str(res)]) == 0
    rows = {r["pdb_id"]: r for r in json.loads(res.read_text())["entries"]}
    assert rows["7cec"]["status"] == "accepted" and rows["7cec"]["map_path"] is None
    assert main(["harvest", "--mirror", str(tmp_path / "nowhere")]) == 1
