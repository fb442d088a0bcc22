"""Discovery through the RCSB Search/Data APIs and the EMDB API, replayed on loopback.

Recorded answers come from ../shared/data/api (EMDB entry EMD-25107, RCSB search responses).
No recorded Data API ``core/entry`` answer for an EM entry exists, so the one used here is a
hand-made mock that holds only facts stated by the recorded EMDB answer (7SGD is the model
fitted to EMD-25107, EM, 3.97 Å) and is validated against the real Data API schema.
"""

from __future__ import annotations

import datetime as dt
import gzip
import os
import json
import logging

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


# -- a local mirror: only new or changed entries are judged (issue 17, item 5) ------------------

def _mirror_night(archive, cache, monkeypatch, **kw):
    """One ``discover(only_changed=True)`` on a local mirror: (candidates by id, ids whose model was
    parsed, EMDB ids whose metadata was read). Nothing is remembered."""
    from rerefine.harvester import harvest
    from rerefine.harvester import mirror as mirror_mod

    parsed, headers = [], []
    real_record, real_emdb = mirror_mod.model_record, harvest.emdb_metadata

    def record(path, pid):
        parsed.append(pid)
        return real_record(path, pid)

    def metadata(eid, **k):
        headers.append(eid)
        return real_emdb(eid, **k)

    monkeypatch.setattr(mirror_mod, "model_record", record)
    monkeypatch.setattr(harvest, "emdb_metadata", metadata)
    found = discover(mirror=archive, cache_dir=cache, only_changed=True, **kw)
    monkeypatch.undo()
    return found, sorted(parsed), sorted(headers)


def _touch(path, seconds=10):
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + seconds * 10**9))


@pytest.fixture
def sample_mirror(test_data, tmp_path):
    from rerefine.harvester import sample_archive

    archive = tmp_path / "archive"
    sample_archive.build(archive, test_data)
    return archive


def test_only_new_or_changed_entries_are_judged(sample_mirror, tmp_path, monkeypatch):
    from rerefine.harvester.mirror import Mirror

    archive, cache = sample_mirror, tmp_path / "cache"
    first, parsed, headers = _mirror_night(archive, cache, monkeypatch)
    by_id = {c.pdb_id: c for c in first}
    assert sorted(by_id) == ["5me2", "5ni1", "7cec", "loc_3ajo_fitted"] and first.unchanged == 0
    assert parsed == sorted(by_id) and headers == ["EMD-20026", "EMD-30342", "EMD-3488"]
    assert [by_id[p].status for p in sorted(by_id)] == ["accepted", "rejected", "accepted", "rejected"]
    # not remembered (e.g. the night ended before recording them): everything is judged again
    again, parsed, headers = _mirror_night(archive, cache, monkeypatch)
    assert len(again) == 4 and parsed == [] and len(headers) == 3
    assert again.remember() == 4

    # nothing changed: no model parsed, no EMDB metadata read; the accepted entries come back as
    # judged then, the rejected ones are left out and counted
    same, parsed, headers = _mirror_night(archive, cache, monkeypatch)
    assert parsed == [] and headers == [] and same.unchanged == 2
    assert [c.to_dict() for c in same] == [by_id["5me2"].to_dict(), by_id["7cec"].to_dict()]
    same.remember()

    # a changed model file (new time), a changed EMDB header, a new entry: those three are judged
    _touch(archive / Mirror.model_rel("5ni1"))
    (header,) = [archive / r for r in Mirror.header_rels("EMD-20026") if (archive / r).is_file()]
    _touch(header)
    new = archive / Mirror.model_rel("9me2")
    new.parent.mkdir(parents=True, exist_ok=True)
    new.write_bytes((archive / Mirror.model_rel("5me2")).read_bytes())
    changed, parsed, headers = _mirror_night(archive, cache, monkeypatch)
    assert parsed == ["5ni1", "9me2"] and headers == ["EMD-20026", "EMD-3488"]
    judged = {c.pdb_id: (c.status, c.reason) for c in changed}
    assert judged["5ni1"] == ("rejected", by_id["5ni1"].reason)
    assert judged["loc_3ajo_fitted"] == ("rejected", by_id["loc_3ajo_fitted"].reason)
    assert judged["9me2"][0] == "accepted" and sorted(judged) == ["5me2", "5ni1", "7cec", "9me2", "loc_3ajo_fitted"]
    assert changed.unchanged == 0
    changed.remember()
    # a replaced map file re-judges its entry too
    _touch(archive / Mirror.map_rel("EMD-30342", by_id["7cec"].map_file))
    _f, parsed, headers = _mirror_night(archive, cache, monkeypatch)
    assert parsed == [] and headers == ["EMD-30342"]

    # a changed setting re-judges every entry (from the kept model records: nothing parsed)
    strict, parsed, headers = _mirror_night(archive, cache, monkeypatch, max_resolution=3.5)
    assert parsed == [] and len(strict) == 5 and strict.unchanged == 0
    assert {c.pdb_id: c.status for c in strict}["7cec"] == "rejected"  # 3.9 Å
    strict.remember()
    back, _p, headers = _mirror_night(archive, cache, monkeypatch)  # and back to the default
    assert len(back) == 5 and len(headers) == 4
    other_run, _p, _h = _mirror_night(archive, cache, monkeypatch, run_key="other parameters")
    assert len(other_run) == 5


def test_failed_entry_is_judged_every_time(sample_mirror, tmp_path, monkeypatch):
    from rerefine.harvester.mirror import Mirror

    bad = sample_mirror / Mirror.model_rel("7cec")
    bad.write_bytes(gzip.compress(b"data_x\nloop_\n_a.b\n'unclosed\n"))
    for _ in range(2):
        found, parsed, _h = _mirror_night(sample_mirror, tmp_path / "cache", monkeypatch)
        assert "7cec" in parsed
        (c,) = [c for c in found if c.pdb_id == "7cec"]
        assert c.status == "failed" and c.reason.startswith("7cec: ")
        found.remember()


def test_nightly_records_each_skip_once_and_keeps_its_reason(sample_mirror, tmp_path, monkeypatch):
    """The nightly's recording of discovery (``record_judgements``): a skip is written to the project
    database the night it is judged; later nights write nothing for it and its reason stays."""
    import sqlalchemy as sa

    from rerefine.flows import nightly
    from rerefine.reports import db

    database = f"sqlite:///{tmp_path / 'rr.sqlite'}"
    db.upgrade(database)
    engine = db.make_engine(database)

    def night():
        found, _p, _h = _mirror_night(sample_mirror, tmp_path / "cache", monkeypatch)
        summary = {"rejected": [], "failed": []}
        accepted = nightly.record_judgements(engine, found, {}, summary)
        with engine.connect() as conn:
            runs = conn.execute(sa.text("SELECT e.pdb_id, r.status, r.reason, r.updated_at FROM runs r "
                                        "JOIN entries e ON e.id = r.entry_id")).all()
        return summary, [a["pdb_id"] for a in accepted], {r[0].lower(): tuple(r[1:]) for r in runs}

    s1, acc1, runs1 = night()
    assert acc1 == ["5me2", "7cec"] and s1["judged_before"] == 0
    assert sorted(x["pdb_id"] for x in s1["rejected"]) == ["5ni1", "loc_3ajo_fitted"]
    assert runs1["5ni1"][:2] == ("skipped", "no associated EMDB map stated")
    s2, acc2, runs2 = night()
    assert acc2 == ["5me2", "7cec"] and s2["rejected"] == [] and s2["judged_before"] == 2
    assert runs2 == runs1  # no row written or updated; the reasons are still there
    engine.dispose()


def test_has_runs_tells_a_new_database(sample_mirror, tmp_path, monkeypatch):
    """``has_runs`` is False on a new database, True once a night recorded its skips: the nightly judges
    only changed entries when it is True, so a new database gets every skip recorded even though the
    mirror's state file remembers the judgements."""
    from rerefine.flows import nightly
    from rerefine.reports import db

    engines = []
    for name in ("old.sqlite", "new.sqlite"):
        database = f"sqlite:///{tmp_path / name}"
        db.upgrade(database)
        engines.append(db.make_engine(database))
    old, new = engines
    assert not nightly.has_runs(old)
    found, _p, _h = _mirror_night(sample_mirror, tmp_path / "cache", monkeypatch)
    nightly.record_judgements(old, found, {}, {"rejected": [], "failed": []})
    assert nightly.has_runs(old) and not nightly.has_runs(new)
    for e in engines:
        e.dispose()


def test_a_done_entry_is_handed_to_no_task_until_something_asks_for_a_run(sample_mirror, tmp_path, monkeypatch,
                                                                          caplog):
    """The nightly's hand-off (``record_judgements`` then ``leave_done``): an accepted entry unchanged on
    the mirror whose latest run under this pipeline version and parameters is ``done`` gets no per-entry
    task and is counted in ``done_before``; a failed or interrupted run, a changed file (also one whose
    night ended before its run started), another pipeline version or parameters, and ``--force`` (no
    judgement kept) are handed to a task again. Runs are made through ``reports.store``."""
    from rerefine.flows import nightly
    from rerefine.flows.pipeline import PipelineParams
    from rerefine.harvester.mirror import Mirror
    from rerefine.reports import db, store

    database = f"sqlite:///{tmp_path / 'rr.sqlite'}"
    db.upgrade(database)
    engine = db.make_engine(database)
    params = PipelineParams().to_dict()

    def night(**kw):
        found, _p, _h = _mirror_night(sample_mirror, tmp_path / "cache", monkeypatch, **kw)
        store.recover_interrupted(engine)  # as the nightly does at its start
        summary = {"rejected": [], "failed": []}
        todo = nightly.leave_done(engine, found, nightly.record_judgements(engine, found, params, summary),
                                  params, summary)
        return [c["pdb_id"] for c in todo], summary

    def run(pid, status, sha="a", leave_running=False):
        entry = {"pdb_id": pid}
        files = [{"role": "model", "path": f"{pid}.cif.gz", "size": 1, "sha256": sha}]
        store.mark_running(engine, entry=entry, pipeline_version=nightly.__version__, params=params,
                           input_files=files)
        if not leave_running:
            store.store_result(engine, entry=entry, pipeline_version=nightly.__version__, params=params,
                               status=status, reason=None if status == "done" else f"{pid}: broken",
                               input_files=files)

    todo, s = night()
    assert todo == ["5me2", "7cec"] and s["done_before"] == 0  # first night: nothing kept
    run("7cec", "done")
    run("5me2", "failed")
    todo, s = night()
    assert todo == ["5me2"] and s["done_before"] == 1  # the failed one only
    run("5me2", "done")
    with caplog.at_level(logging.INFO, logger="rerefine.flows.nightly"):
        todo, s = night()
    assert todo == [] and s["done_before"] == 2
    assert "2 accepted entries left as done" in caplog.text and "0 handed to per-entry tasks" in caplog.text
    # a later run of 7cec (other inputs) left running by a killed night: interrupted, run again
    run("7cec", "done", sha="b", leave_running=True)
    todo, s = night()
    assert todo == ["7cec"] and s["done_before"] == 1
    run("7cec", "done", sha="b")
    assert night()[0] == []
    # another pipeline version, other parameters: no done run under them (the mirror unchanged)
    def hand_off(pars):
        found, _p, _h = _mirror_night(sample_mirror, tmp_path / "cache", monkeypatch)
        s = {"rejected": [], "failed": []}
        todo = nightly.leave_done(engine, found, [c.to_dict() for c in found if c.status == "accepted"], pars, s)
        return [c["pdb_id"] for c in todo], s["done_before"]

    assert hand_off(params) == ([], 2)
    assert hand_off({**params, "macro_cycles": params["macro_cycles"] + 1}) == (["5me2", "7cec"], 0)
    with monkeypatch.context() as m:
        m.setattr(nightly, "__version__", "0.0.0-other")
        found, _p, _h = discover(mirror=sample_mirror, cache_dir=tmp_path / "cache", only_changed=True), 0, 0
        todo = nightly.leave_done(engine, found, [c.to_dict() for c in found if c.status == "accepted"], params,
                                  {})
    assert found.kept_inputs and [c["pdb_id"] for c in todo] == ["5me2", "7cec"]
    # a changed model file: judged again and run, also the night after when its run never started
    # (the night was killed after keeping the judgement): its done run is older than the file
    _touch(sample_mirror / Mirror.model_rel("7cec"))
    assert night()[0] == ["7cec"]
    todo, s = night()
    assert todo == ["7cec"] and s["done_before"] == 1
    # --force: discovery keeps no judgement, every accepted entry gets its task
    found = discover(mirror=sample_mirror, cache_dir=tmp_path / "cache", only_changed=False)
    s = {"rejected": [], "failed": []}
    accepted = [c.to_dict() for c in found if c.status == "accepted"]
    assert [c["pdb_id"] for c in nightly.leave_done(engine, found, accepted, params, s)] == ["5me2", "7cec"]
    assert s["done_before"] == 0
    engine.dispose()
