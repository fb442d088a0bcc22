"""Discovery through the RCSB Search/Data APIs and the EMDB API, replayed on loopback.

Recorded answers come from ../shared/data/api (EMDB entry EMD-25107, RCSB search responses).
No recorded Data API ``core/entry`` answer for an EM entry exists, so the one used here is a
hand-made mock that holds only facts stated by the recorded EMDB answer (7SGD is the model
fitted to EMD-25107, EM, 3.97 Å) and is validated against the real Data API schema.
"""

from __future__ import annotations

import datetime as dt
import json

import jsonschema
import pytest

from rerefine.harvester import emdb, rcsb
from rerefine.harvester.harvest import discover, emdb_metadata
from rerefine.harvester.http import HttpClient
from rerefine.harvester.loopback import LoopbackArchive
from rerefine.common.errors import ArchiveError

SEARCH = "/rcsbsearch/v2/query"
DATA = "/rest/v1/core/entry"
EMDB_API = "/emdb/api/entry"


def _client():
    return HttpClient(backoff=0.01, max_backoff=0.05, min_interval=0.0, timeout=2.0, retries=2)


@pytest.fixture(scope="module")
def api(test_data):
    return test_data / "api"


@pytest.fixture(scope="module")
def entry_7sgd(api):
    mock = {
        "rcsb_id": "7SGD",
        "rcsb_entry_container_identifiers": {"entry_id": "7SGD", "emdb_ids": ["EMD-25107"]},
        "rcsb_entry_info": {"structure_determination_methodology": "experimental"},
        "exptl": [{"method": "ELECTRON MICROSCOPY"}],
        "pdbx_database_related": [{"db_name": "EMDB", "db_id": "EMD-25107", "content_type": "associated EM volume"}],
    }
    schema = json.loads((api / "rcsb_data" / "entry.schema.json").read_text())
    errors = [e.message[:200] for e in jsonschema.Draft4Validator(schema).iter_errors(mock)]
    assert errors == []
    return mock


def _kw(srv, **extra):
    kw = dict(search_url=srv.url + SEARCH, data_url=srv.url + DATA, emdb_api_url=srv.url + EMDB_API,
              session=_client())
    kw.update(extra)
    return kw


def test_emdb_recorded_entry_parsed(api):
    info = emdb.parse_json_bytes((api / "emdb" / "EMD-25107.entry.json").read_bytes(), source="EMD-25107")
    assert info.emdb_id == "EMD-25107"
    assert info.resolution == pytest.approx(3.97)
    assert info.contour_level == pytest.approx(0.02)
    assert info.map_file == "emd_25107.map.gz"
    assert info.half_map_files == ["emd_25107_half_map_1.map.gz", "emd_25107_half_map_2.map.gz"]
    assert info.map_size_bytes == 42593 * 1000  # size_kbytes; 220^3 float32 + 1024 header = 42,593,024
    assert info.release_date == "2022-10-12"
    assert info.pdb_ids == ["7sgd"]


def test_emdb_header_xml_same_as_json():
    # An EMDB v3 header in the element/attribute layout the API JSON serialises.
    xml = b"""<?xml version="1.0" encoding="UTF-8"?>
<emd emdb_id="EMD-25107" version="3.0.2.8"><admin><key_dates><map_release>2022-10-12</map_release></key_dates>
<title>Lassa</title></admin><crossreferences><pdb_list><pdb_reference><pdb_id>7sgd</pdb_id></pdb_reference></pdb_list>
</crossreferences><structure_determination_list><structure_determination><singleparticle_processing>
<final_reconstruction><resolution res_type="BY AUTHOR" units="A">3.97</resolution></final_reconstruction>
</singleparticle_processing></structure_determination></structure_determination_list>
<map format="CCP4" size_kbytes="42593"><file>emd_25107.map.gz</file><contour_list><contour primary="true">
<level>0.02</level><source>AUTHOR</source></contour></contour_list></map>
<interpretation><half_map_list><half_map format="CCP4" size_kbytes="42593"><file>emd_25107_half_map_1.map.gz</file>
</half_map><half_map format="CCP4" size_kbytes="42593"><file>emd_25107_half_map_2.map.gz</file></half_map>
</half_map_list></interpretation></emd>"""
    info = emdb.parse_xml_bytes(xml, source="x")
    assert (info.resolution, info.contour_level, info.map_file, len(info.half_map_files), info.pdb_ids) == \
        (3.97, 0.02, "emd_25107.map.gz", 2, ["7sgd"])
    with pytest.raises(ArchiveError, match="DOCTYPE"):
        emdb.parse_xml_bytes(b'<!DOCTYPE x [<!ENTITY a "b">]><emd/>', source="x")
    with pytest.raises(ArchiveError, match="malformed XML"):
        emdb.parse_xml_bytes(b"<emd><map>", source="x")


def test_unsafe_file_name_in_metadata_is_refused(api):
    entry = json.loads((api / "emdb" / "EMD-25107.entry.json").read_text())
    entry["map"]["file"] = "../../etc/passwd"
    with pytest.raises(Exception, match="unsafe"):
        emdb.parse_entry(entry)


def test_recorded_search_answer_replayed(api):
    """The recorded Search API answer (6 theoretical-model ids) drives discovery; the Data API
    knows none of them here, so each ends as a clear per-entry failure."""
    with LoopbackArchive(routes={SEARCH: api / "rcsb_search" / "theoretical_model.response.json"}) as srv:
        cands = discover("2024-01-01", "2024-01-31", **_kw(srv))
        body = json.loads(srv.posted[0][1])
    assert [c.pdb_id for c in cands] == ["1dwl", "1e08", "1gx7", "1oln", "1ur6", "1vyc"]
    assert all(c.status == "failed" and "not found" in c.reason and c.pdb_id in c.reason for c in cands)
    # the query we sent: EM entries in the window, sorted by release date
    terms = {n["parameters"]["attribute"]: n["parameters"] for n in body["query"]["nodes"]}
    assert terms["exptl.method"]["value"] == "ELECTRON MICROSCOPY"
    assert body["return_type"] == "entry"
    dates = [n["parameters"] for n in body["query"]["nodes"]
             if n["parameters"]["attribute"] == "rcsb_accession_info.initial_release_date"]
    assert {d["operator"]: d["value"] for d in dates} == {"greater_or_equal": "2024-01-01T00:00:00Z",
                                                          "less_or_equal": "2024-01-31T23:59:59Z"}


def test_computed_model_ids_skipped_and_204(api):
    with LoopbackArchive(routes={SEARCH: api / "rcsb_search" / "combo_af.response.json"}) as srv:
        assert rcsb.search_em_entries(_client(), srv.url + SEARCH, dt.date(2024, 1, 1), None) == []
    with LoopbackArchive(routes={SEARCH: (b"", "application/json", 204)}) as srv:
        assert discover("2024-01-01", **_kw(srv)) == []


def test_accepted_entry_with_recorded_emdb(api, entry_7sgd):
    routes = {
        SEARCH: json.dumps({"result_type": "entry", "total_count": 1, "result_set": [{"identifier": "7SGD"}]}),
        f"{DATA}/7SGD": json.dumps(entry_7sgd),
        f"{EMDB_API}/EMD-25107": api / "emdb" / "EMD-25107.entry.json",
    }
    with LoopbackArchive(routes=routes) as srv:
        (c,) = discover(dt.date(2022, 10, 1), **_kw(srv))
        assert (c.pdb_id, c.emdb_id, c.status, c.reason) == ("7sgd", "EMD-25107", "accepted", "")
        assert c.resolution == pytest.approx(3.97) and c.contour_level == pytest.approx(0.02)
        assert c.map_file == "emd_25107.map.gz" and len(c.half_map_files) == 2
        # selection rules
        (c,) = discover(dt.date(2022, 10, 1), **_kw(srv, max_resolution=3.5))
        assert c.status == "rejected" and "3.97 Å worse than the 3.5 Å limit" in c.reason
        (c,) = discover(dt.date(2022, 10, 1), **_kw(srv, max_map_mb=10))
        assert c.status == "rejected" and "MiB over the 10 MiB limit" in c.reason
        # EMDB answers garbage once: the entry fails with a one-line reason, then recovers
        srv.add_fault(f"{EMDB_API}/EMD-25107", "body", b'{"emdb_id": "EMD-25107", "map": {')
        (c,) = discover(dt.date(2022, 10, 1), **_kw(srv))
        assert c.status == "failed" and "malformed JSON" in c.reason and "7sgd" in c.reason
        srv.add_fault(f"{EMDB_API}/EMD-25107", "status", 503)
        (c,) = discover(dt.date(2022, 10, 1), **_kw(srv))
        assert c.status == "accepted"


def test_emdb_answer_for_wrong_entry(api):
    with LoopbackArchive(routes={f"{EMDB_API}/EMD-1234": api / "emdb" / "EMD-25107.entry.json"}) as srv:
        with pytest.raises(ArchiveError, match="answered for EMD-25107"):
            emdb_metadata("EMD-1234", emdb_api_url=srv.url + EMDB_API, session=_client())


def test_search_needs_since_and_sane_window(api):
    with pytest.raises(Exception, match="since"):
        discover(None, search_url="http://127.0.0.1:9/x", data_url="http://127.0.0.1:9/y")
    with pytest.raises(Exception, match="after until"):
        discover("2024-02-01", "2024-01-01", mirror=".")
    with pytest.raises(Exception, match="bad date"):
        discover("yesterday", mirror=".")
