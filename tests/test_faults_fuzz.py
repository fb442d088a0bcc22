"""One-field fuzz of every field of the recorded archive answers (issue 18, item 1).

Each case changes ONE field of a recorded answer - the EMDB API entry EMD-25107 (every field, leaf
or object), the RCSB Data API entry of 7SGD (the schema-checked mock of
test_harvester_discovery.py, holding only facts the EMDB answer states), the recorded RCSB search
answer, and the fields discovery reads from a mirror mmCIF (7CEC) - into a wrong type, NaN, a
negative or huge number, an impossible date, text with units, an empty or very long string, or
removes it. Discovery replays each over loopback (or a local mirror) and must end, for the entry, in
exactly one candidate that is accepted, rejected or failed with a one-line reason naming it - never
an exception: a night is never aborted by one record. The stored form of every distinct outcome is
written to a real results database (what the nightly records for it) without error.
"""

from __future__ import annotations

import copy
import gzip
import json
import math

import gemmi
import pytest

from rerefine.common.errors import ArchiveError
from rerefine.harvester import rcsb, sample_archive
from rerefine.harvester.harvest import discover
from rerefine.harvester.http import HttpClient
from rerefine.harvester.loopback import LoopbackArchive
from rerefine.harvester.mirror import Mirror
from rerefine.reports import db, store

SEARCH = "/rcsbsearch/v2/query"
DATA = "/rest/v1/core/entry"
EMDB_API = "/emdb/api/entry"
DELETE = object()
# One-field mutations of a leaf; objects and lists get the structural ones only.
LEAF = [("missing", DELETE), ("null", None), ("nan text", "nan"), ("NaN", math.nan), ("negative", -1),
        ("huge", 1e308), ("list", []), ("object", {}), ("date", "2021-02-30"), ("units", "4.2 A"),
        ("long", "x" * 5000), ("bool", True)]
CONTAINER = [("missing", DELETE), ("null", None), ("scalar", "nan"), ("empty list", []), ("empty object", {})]


def _paths(node, prefix=()):
    """Every path (tuple of keys/indices) into a JSON document, containers and leaves."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    for k, v in items:
        yield prefix + (k,), v
        yield from _paths(v, prefix + (k,))


def _mutated(doc, path, value):
    out = copy.deepcopy(doc)
    parent = out
    for k in path[:-1]:
        parent = parent[k]
    if value is DELETE:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out


def _cases(doc):
    for path, v in _paths(doc):
        for name, value in (CONTAINER if isinstance(v, (dict, list)) else LEAF):
            yield "/".join(map(str, path)) + f" <- {name}", _mutated(doc, path, value)


def _client():
    return HttpClient(backoff=0.0, max_backoff=0.0, min_interval=0.0, timeout=5.0, retries=0)


def _check(cands, pid: str, case: str, outcomes: dict) -> None:
    """One candidate for the entry, a known status, a one-line reason that names a failed entry."""
    assert len(cands) == 1, case
    c = cands[0]
    assert c.pdb_id == pid and c.status in ("accepted", "rejected", "failed"), case
    assert "\n" not in c.reason, case
    if c.status == "failed":
        assert c.reason.startswith(pid), (case, c.reason)
    key = (c.status, c.emdb_id, c.title, c.resolution, c.release_date)
    outcomes.setdefault(key, c)


def _store_outcomes(outcomes: dict, tmp_path) -> None:
    """Every distinct outcome stored as the nightly stores it (a rejected/failed run, entry metadata)."""
    engine = db.make_engine(f"sqlite:///{tmp_path / 'fuzz.sqlite'}")
    db.upgrade(engine)
    for c in outcomes.values():
        store.store_result(engine, entry={"pdb_id": c.pdb_id, "emdb_id": c.emdb_id, "title": c.title,
                                          "resolution": c.resolution, "release_date": c.release_date},
                           pipeline_version="fuzz", params={}, status="skipped" if c.status != "failed" else "failed",
                           reason=c.reason or c.status)
    engine.dispose()


@pytest.fixture(scope="module")
def api(test_data):
    return test_data / "api"


@pytest.fixture(scope="module")
def entry_7sgd():
    # The mock of tests/test_harvester_discovery.py (schema-checked there): facts of EMD-25107's answer.
    return {"rcsb_id": "7SGD",
            "rcsb_entry_container_identifiers": {"entry_id": "7SGD", "emdb_ids": ["EMD-25107"]},
            "rcsb_entry_info": {"structure_determination_methodology": "experimental"},
            "exptl": [{"method": "ELECTRON MICROSCOPY"}],
            "pdbx_database_related": [{"db_name": "EMDB", "db_id": "EMD-25107",
                                       "content_type": "associated EM volume"}]}


@pytest.mark.slow
def test_every_field_of_the_recorded_rcsb_and_emdb_answers(api, entry_7sgd, tmp_path):
    emdb_doc = json.loads((api / "emdb" / "EMD-25107.entry.json").read_text())
    search = {"result_type": "entry", "total_count": 1, "result_set": [{"identifier": "7SGD"}]}
    routes = {SEARCH: json.dumps(search), f"{DATA}/7SGD": json.dumps(entry_7sgd),
              f"{EMDB_API}/EMD-25107": json.dumps(emdb_doc)}
    outcomes: dict = {}
    n = 0
    with LoopbackArchive(routes=routes) as srv:
        kw = dict(search_url=srv.url + SEARCH, data_url=srv.url + DATA, emdb_api_url=srv.url + EMDB_API,
                  session=_client())
        (base,) = discover("2022-10-01", **kw)
        assert base.status == "accepted"  # the unmutated answers are a good entry
        for route, doc in ((f"{EMDB_API}/EMD-25107", emdb_doc), (f"{DATA}/7SGD", entry_7sgd)):
            for case, mutated in _cases(doc):
                srv.add_route(route, json.dumps(mutated))  # NaN is written as the token NaN, as a broken server may
                _check(discover("2022-10-01", **kw), "7sgd", case, outcomes)
                n += 1
            srv.add_route(route, json.dumps(doc))
        # The search answer: one field at a time; the run finds the entry, finds nothing, or fails as a
        # whole with one ArchiveError line (the night's harvest then fails cleanly) - never anything else.
        for case, mutated in _cases(search):
            srv.add_route(SEARCH, json.dumps(mutated))
            try:
                cands = discover("2022-10-01", **kw)
            except ArchiveError as exc:
                assert "\n" not in str(exc), case
                continue
            assert [c.pdb_id for c in cands] in ([], ["7sgd"]), case
            n += 1
    assert n > 3000  # every field of the three answers, about a dozen ways each
    _store_outcomes(outcomes, tmp_path)


MMCIF_TAGS = ["_exptl.method", "_pdbx_audit_revision_history.revision_date", "_pdbx_audit_revision_history.ordinal",
              "_pdbx_database_related.db_name", "_pdbx_database_related.db_id",
              "_pdbx_database_related.content_type", "_em_3d_reconstruction.resolution", "_entity.type",
              "_struct.title", "_audit_author.name"]
CIF_VALUES = [("unknown", "?"), ("inapplicable", "."), ("nan", "nan"), ("negative", "-1"), ("huge", "1e999"),
              ("date", "2021-02-30"), ("units", "'4.2 A'"), ("long", "x" * 5000), ("digits", "²")]


@pytest.mark.slow
def test_every_field_discovery_reads_from_a_mirror_mmcif(test_data, tmp_path):
    mirror = tmp_path / "archive"
    sample_archive.build(mirror, test_data)
    rel = Mirror.model_rel("7cec")
    for pid in ("5me2", "5ni1", "loc_3ajo_fitted"):  # a mirror of the one entry
        (mirror / Mirror.model_rel(pid)).unlink()
    original = gzip.decompress((mirror / rel).read_bytes()).decode()
    outcomes: dict = {}
    (base,) = discover(mirror=mirror)
    assert base.status == "accepted"
    for tag in MMCIF_TAGS:
        for name, value in CIF_VALUES + [("missing", DELETE), ("category missing", "CATEGORY")]:
            doc = gemmi.cif.read_string(original)
            block = doc.sole_block()
            if value == "CATEGORY":
                block.find_mmcif_category(tag.split(".")[0] + ".").erase()
            elif value is DELETE:
                block.find_values(tag).erase()
            else:
                col = block.find_values(tag)
                for i in range(len(col)):
                    col[i] = value
            (mirror / rel).write_bytes(gzip.compress(doc.as_string().encode(), 1))
            for window in ({}, {"since": "2021-01-01"}):
                _check(discover(mirror=mirror, **window), "7cec", f"{tag} <- {name} {window}", outcomes)
    _store_outcomes(outcomes, tmp_path)
