"""The Prefect flows end to end on the sample archive made from the real test data.

Every run goes through the real CLI in a subprocess: Prefect's ephemeral mode, its home and the
database live under the test's own data directory, so no test shares global state. Refinement is
cut to one macro-cycle without ADP to keep the suite quick; the full pipeline is the benchmark's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from rerefine.flows.commands.serve import next_run
from rerefine.flows.pipeline import EntryJob, entry_dir
from rerefine.harvester import sample_archive
from rerefine.common.errors import InputError
from rerefine.reports.verdict import decide

FAST = ["--cycles", "1", "--no-adp"]


def _env(data_dir: Path) -> dict:
    env = dict(os.environ)
    for k in list(env):
        if k.startswith(("PREFECT_", "RR_")):
            del env[k]
    env["RR_DATA_DIR"] = str(data_dir)
    env["RR_TEST_DATA"] = os.environ.get("RR_TEST_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    env["RR_MONOMER_LIB"] = str(Path(env["RR_TEST_DATA"]) / "monomers")  # the test subset, asked for
    env.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".numba-cache"))
    return env


def _rerefine(args: list[str], data_dir: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rerefine.flows.cli", *args], env=_env(data_dir),
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture()
def mirror(test_data, tmp_path) -> Path:
    out = tmp_path / "archive"
    sample_archive.build(out, test_data)
    return out


def _runs(data_dir: Path) -> dict:
    eng = sa.create_engine(f"sqlite:///{data_dir / 'rerefine.sqlite'}")
    with eng.connect() as c:
        rows = c.execute(sa.text(
            "SELECT e.pdb_id, r.status, r.reason, r.verdict FROM runs r JOIN entries e ON e.id = r.entry_id"
        )).all()
    eng.dispose()
    return {r[0].lower(): {"status": r[1], "reason": r[2], "verdict": r[3]} for r in rows}


def test_entry_dir_validates_ids(tmp_path):
    assert entry_dir(tmp_path, "7cec").name == "7cec"
    for bad in ("../etc", "a/b", "", "x" * 100):
        with pytest.raises(InputError):
            entry_dir(tmp_path, bad)


def test_entry_job_roundtrip(tmp_path):
    job = EntryJob("7cec", "EMD-30342", tmp_path / "m.cif", tmp_path / "x.map", [tmp_path / "h1.map"],
                   metadata={"title": "t"}, resolution=3.9, contour=0.02)
    assert EntryJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job


def test_cron_next_run():
    assert next_run("0 2 * * *", dt.datetime(2026, 11, 25, 21, 0)) == dt.datetime(2026, 11, 26, 2, 0)
    assert next_run("30 1 * * 1", dt.datetime(2026, 11, 25, 0, 0)) == dt.datetime(2026, 11, 30, 1, 30)
    with pytest.raises(InputError):
        next_run("61 2 * * *", dt.datetime(2026, 11, 25))


def test_no_monomer_library_stops_at_once(mirror, tmp_path):
    """Without RR_MONOMER_LIB/CLIBD_MON the service does not fall back on the test subset."""
    env = _env(tmp_path / "data")
    del env["RR_MONOMER_LIB"]
    env.pop("CLIBD_MON", None)
    r = subprocess.run([sys.executable, "-m", "rerefine.flows.cli", "entry", "7cec", "--mirror", str(mirror)],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no monomer library" in lines[0] and "RR_MONOMER_LIB" in lines[0], r.stderr


@pytest.mark.slow
def test_nightly_isolates_a_bad_entry_and_skips_finished_work(mirror, tmp_path, pairs):
    # Truncate 5ME2's map in the mirror: that entry must fail with its reason, the rest go on.
    bad = mirror / "emdb/structures/EMD-3488/map/emd_3488.map.gz"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    data_dir = tmp_path / "data"
    summary_path = tmp_path / "summary.json"
    r = _rerefine(["nightly", "--mirror", str(mirror), "--workers", "1", *FAST, "--json", str(summary_path)],
                  data_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(summary_path.read_text())
    for key in ("found", "processed", "improved", "unchanged", "worse", "failed", "seconds", "site"):
        assert key in s
    assert s["found"] == 4 and s["processed"] == 1
    assert [f["pdb_id"] for f in s["failed"]] == ["5me2"]
    assert "5me2" in s["failed"][0]["reason"] and "\n" not in s["failed"][0]["reason"]
    rejected = {x["pdb_id"]: x["reason"] for x in s["rejected"]}
    assert "no associated EMDB map" in rejected["5ni1"]
    assert "resolution" in rejected["loc_3ajo_fitted"]
    runs = _runs(data_dir)
    assert runs["7cec"]["status"] == "done"
    assert runs["5me2"]["status"] == "failed"
    assert runs["5ni1"]["status"] == "skipped"
    # metrics before refinement are the deposited model's: CCmask as cctbx reports it (0.8077)
    eng = sa.create_engine(f"sqlite:///{data_dir / 'rerefine.sqlite'}")
    with eng.connect() as c:
        cc_before = c.execute(sa.text("SELECT cc_mask_before FROM metrics")).scalar()
        full_before, full_after = c.execute(sa.text('SELECT before, "after" FROM metrics_full')).one()
    from rerefine.reports import queries

    (version,) = queries.versions(eng)
    eng.dispose()
    # the monomer library's identity is a pipeline parameter: its folder and its list file's SHA-256
    lib = Path(_env(data_dir)["RR_MONOMER_LIB"]).resolve()
    digest = hashlib.sha256((lib / "list" / "mon_lib_list.cif").read_bytes()).hexdigest()[:16]
    assert version["params"]["monomer_library"] == f"{lib} sha256:{digest}"
    full_before, full_after = (json.loads(x) if isinstance(x, str) else x for x in (full_before, full_after))
    # the stored verdict is the verdict rule applied to the stored figures, and the summary counts it
    want = decide(full_before, full_after).verdict
    assert runs["7cec"]["verdict"] == want and s[want] == 1
    assert cc_before == pytest.approx(0.8077, abs=0.01)
    # the gated verdict's figures are stored: the coordinates' fit with the input B, the validation
    # of both models (its agreement with MolProbity is tests/test_validation.py's), and the
    # fallback contour is said in the run's warnings
    assert full_before["cc_mask_input_b"] == full_before["cc_mask"] and full_after["cc_mask_input_b"] is not None
    assert full_before["clashscore"] is not None and full_after["rama_favored_pct"] is not None
    assert any(r["rama"] == "outlier" for r in full_after["validation_residues"]) or full_after["rama_outliers"] == 0
    assert any("17 Å³ per non-H atom" in w for w in full_after["refinement"]["warnings"])
    assert "fsc_avg_free" not in full_after  # the sample archive has no half-maps
    # the placement check of the deposited model: 7CEC sits where its map puts it (0.09 deg)
    placement = full_before["placement"]
    assert placement["by"] == "chain" and [g["group"] for g in placement["groups"]] == ["A"]
    assert not placement["misplaced"] and placement["groups"][0]["rotation_deg"] < 0.5
    site = Path(s["site"])
    assert site.is_file() and "7cec" in site.read_text().lower()
    outdir = data_dir / "entries" / "7cec"
    assert (outdir / "7cec_rerefined.cif").is_file() and (outdir / "7cec_diff.mrc.gz").is_file()
    assert not list(data_dir.rglob(".tmp-*"))

    # A second run finds 7cec done by this version with the same inputs and hands it to no task.
    r2 = _rerefine(["nightly", "--mirror", str(mirror), "--workers", "1", *FAST, "--no-site", "--json", "-"],
                   data_dir)
    assert r2.returncode == 0, r2.stderr[-3000:]
    s2 = json.loads(r2.stdout)
    assert s2["done_before"] == 1 and s2["cached"] == 0 and s2["processed"] == 0
    assert [e["pdb_id"] for e in s2["entries"]] == ["5me2"]  # the failed one only, "not retried"
    # the two rejected entries are neither judged nor recorded again; their skip and reason stand
    assert s2["judged_before"] == 2 and s2["rejected"] == []
    assert _runs(data_dir)["5ni1"] == runs["5ni1"]


@pytest.mark.slow
def test_nightly_killed_midway_resumes_on_a_dask_cluster(mirror, tmp_path):
    data_dir = tmp_path / "data"
    env = _env(data_dir)
    proc = subprocess.Popen([sys.executable, "-m", "rerefine.flows.cli", "nightly", "--mirror", str(mirror),
                             "--workers", "1", *FAST, "--no-site"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 900
    done_first = None
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(1.0)
            if (data_dir / "rerefine.sqlite").exists():
                try:
                    runs = _runs(data_dir)
                except sa.exc.OperationalError:
                    continue  # schema not there yet
                done = [k for k, v in runs.items() if v["status"] == "done"]
                if done:
                    done_first = done[0]
                    break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the flow and Prefect's temporary server with it
        proc.wait()
    assert done_first is not None, "the first entry never finished"
    before = _runs(data_dir)
    assert sum(v["status"] == "done" for v in before.values()) == 1

    r = _rerefine(["nightly", "--mirror", str(mirror), "--workers", "2", *FAST, "--no-site", "--json", "-"],
                  data_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(r.stdout)
    # the entry finished before the kill is not redone: unchanged and done, it gets no task
    assert s["done_before"] == 1 and s["cached"] == 0
    assert s["processed"] == 1 and not s["failed"]
    after = _runs(data_dir)
    assert after["5me2"]["status"] == "done" and after["7cec"]["status"] == "done"


def test_entry_command_reports_rejection(mirror, tmp_path):
    r = _rerefine(["entry", "5ni1", "--mirror", str(mirror)], tmp_path / "data", timeout=300)
    assert r.returncode == 1
    assert "no associated EMDB map" in r.stdout
    assert "Traceback" not in r.stderr


def test_half_maps_are_cut_to_the_primary_box(pairs, tmp_path):
    from rerefine.flows import pipeline
    from rerefine.refine import mapio

    model, mp, res = pairs["emd_30342_zone_7cec_chainA"]
    job = EntryJob("7cec", "EMD-30342", model, mp, [mp, mp], resolution=res)
    st, dmap, _ = pipeline.stage_load(job)
    box = pipeline.stage_box(st, dmap)
    halves = pipeline.stage_half_boxes(job, box)
    assert len(halves) == 2 and (halves[0].data == box.data).all()
    # a half-map on another grid (here: every other voxel) is refused with the entry named
    coarse = mapio.read_map(mp)
    coarse = mapio.DensityMap(coarse.data[::2, ::2, ::2].copy(), coarse.cell,
                              tuple(s // 2 for s in coarse.sampling), (0, 0, 0), coarse.origin_shift, "coarse")
    other = mapio.write_map(tmp_path / "coarse.mrc", coarse)
    with pytest.raises(InputError, match="7cec: half-map coarse.mrc"):
        pipeline.stage_half_boxes(EntryJob("7cec", "EMD-30342", model, mp, [other, other], resolution=res), box)


def test_placement_stage_never_fails_the_entry(pairs, monkeypatch):
    """The placement check is a diagnosis: when it breaks, the stage gives None instead of failing
    the entry; when it works, it records the groups."""
    from rerefine.flows import pipeline
    from rerefine.refine import mapio, modelio, rigidbody

    model, mp, res = pairs["emd_20026_box_3ajo_refined"]
    st, dmap = modelio.read_model(model), mapio.read_map(mp)
    ok = pipeline.stage_placement(st, dmap, res)
    assert ok["by"] == "chain" and ok["groups"] and not ok["misplaced"]

    def broken(*args, **kwargs):
        raise FloatingPointError("overflow in the fit")

    monkeypatch.setattr(rigidbody, "placement_check", broken)
    assert pipeline.stage_placement(st, dmap, res) is None


def test_early_writes_move_into_the_entry_folder_or_leave_it_alone(pairs, tmp_path):
    """The outputs written in a thread while the stage worker measures: on success the refined model
    and the sharpened map land in the entry's folder (read back: gemmi finds the same atoms, the
    map has the same values) with records whose checksums are the files', and the radial profiles equal
    :func:`radial_profiles`; on failure the folder keeps the previous run's file untouched."""
    import gemmi
    import numpy as np

    from rerefine.flows import pipeline
    from rerefine.refine import mapio, modelio

    model, mp, res = pairs["emd_20026_box_3ajo_refined"]
    st, dmap = modelio.read_model(model), mapio.read_map(mp)
    out = entry_dir(tmp_path, "3ajo")
    early = pipeline.EarlyWrites(out, "3ajo", st, dmap, dmap, dmap, version="test")
    assert early.radial() == pipeline.radial_profiles(dmap, dmap)
    early.add_difference_map(dmap)
    arts = early.finish()
    assert [a["kind"] for a in arts] == ["refined_model", "sharpened_map", "difference_map"]
    assert sorted(p.name for p in out.iterdir()) == ["3ajo_diff.mrc.gz", "3ajo_rerefined.cif",
                                                     "3ajo_sharpened.mrc.gz"]
    for a in arts:
        assert Path(a["path"]).parent == out
        assert a["sha256"] == hashlib.sha256(Path(a["path"]).read_bytes()).hexdigest()
    back = gemmi.read_structure(str(out / "3ajo_rerefined.cif"))
    assert back[0].count_atom_sites() == st[0].count_atom_sites()
    for name in ("3ajo_sharpened.mrc.gz", "3ajo_diff.mrc.gz"):
        np.testing.assert_array_equal(mapio.read_map(out / name).data, dmap.data)
    before = (out / "3ajo_rerefined.cif").read_bytes()
    failed = pipeline.EarlyWrites(out, "3ajo", st.clone(), dmap, dmap, dmap, version="other")
    failed.discard()
    assert (out / "3ajo_rerefined.cif").read_bytes() == before
    assert not (out / ".partial").exists()
