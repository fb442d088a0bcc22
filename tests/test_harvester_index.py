"""Mirror discovery at archive scale (issue 17, item 5): a local mirror's model files are parsed
once; later walks parse only new or changed files."""

from __future__ import annotations

import gzip
import os
import shutil

from rerefine.harvester import mirror as mirror_mod
from rerefine.harvester import sample_archive
from rerefine.harvester.harvest import discover
from rerefine.harvester.mirror import Mirror


def test_only_new_and_changed_model_files_are_parsed(test_data, tmp_path, monkeypatch):
    archive = tmp_path / "archive"
    sample_archive.build(archive, test_data)
    cache = tmp_path / "cache"
    parsed = []
    real = mirror_mod.model_record

    def counting(path, pid):
        parsed.append(pid)
        return real(path, pid)

    monkeypatch.setattr(mirror_mod, "model_record", counting)
    first = {c.pdb_id: (c.status, c.emdb_id, c.resolution, c.reason) for c in discover(mirror=archive, cache_dir=cache)}
    assert sorted(parsed) == ["5me2", "5ni1", "7cec", "loc_3ajo_fitted"]
    parsed.clear()
    again = {c.pdb_id: (c.status, c.emdb_id, c.resolution, c.reason) for c in discover(mirror=archive, cache_dir=cache)}
    assert parsed == [] and again == first  # nothing re-read, the same judgement
    # a changed file (7CEC recompressed: other bytes, new time), a new entry, a removed one
    p7 = archive / Mirror.model_rel("7cec")
    p7.write_bytes(gzip.compress(gzip.decompress(p7.read_bytes()), 1, mtime=0))
    os.utime(p7, ns=(p7.stat().st_atime_ns, p7.stat().st_mtime_ns + 10**9))
    new = archive / Mirror.model_rel("9me2")
    new.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(archive / Mirror.model_rel("5me2"), new)
    (archive / Mirror.model_rel("5ni1")).unlink()
    third = {c.pdb_id: (c.status, c.emdb_id, c.resolution) for c in discover(mirror=archive, cache_dir=cache)}
    assert sorted(parsed) == ["7cec", "9me2"]
    assert third["9me2"] == ("accepted", "EMD-3488", 3.2) and third["7cec"] == first["7cec"][:3]
    assert "5ni1" not in third
    parsed.clear()
    discover(mirror=archive, cache_dir=cache)
    assert parsed == []


def test_unreadable_model_is_a_failed_candidate_and_read_again(test_data, tmp_path):
    archive = tmp_path / "archive"
    sample_archive.build(archive, test_data)
    bad = archive / Mirror.model_rel("7cec")
    bad.write_bytes(gzip.compress(b"data_x\nloop_\n_a.b\n'unclosed\n"))
    for _ in range(2):  # not indexed: the same failure again, not a silent skip
        cands = {c.pdb_id: c for c in discover(mirror=archive, cache_dir=tmp_path / "cache")}
        assert cands["7cec"].status == "failed" and cands["7cec"].reason.startswith("7cec: ")
        assert cands["5me2"].status == "accepted"
