"""Per-entry limits (issue 17, guards and bad input): refused from headers before anything large
is read, enforced while the entry runs, and the night goes on."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import gemmi
import mrcfile
import numpy as np
import pytest
import sqlalchemy as sa

from rerefine.common.errors import InputError, LimitError
from rerefine.flows import guard, pipeline
from rerefine.flows.pipeline import EntryJob, PipelineParams
from rerefine.harvester import sample_archive
from rerefine.refine import mapio, modelio


def header_only_map(src: Path, out: Path, n: int) -> Path:
    """A file holding only an MRC header: ``src``'s, with an n×n×n grid of the same voxel size
    (the data block is absent, so nothing can read the values)."""
    with mrcfile.open(str(src), header_only=True) as mrc:
        h = mrc.header.copy()
    vox = float(h.cella.x) / int(h.mx)
    h.nx = h.ny = h.nz = h.mx = h.my = h.mz = n
    h.cella = (vox * n,) * 3
    h.nsymbt = 0
    out.write_bytes(h.tobytes())
    return out


def test_worker_enforces_memory_and_time_and_the_next_entry_runs(pairs):
    """A stage over a 40 MiB budget fails with the one-line reason (the 5ME2 metrics need far
    more); a stage past the time limit is killed; the next entry's worker then computes the 7CEC
    metrics, CCmask as cctbx's map_model_cc reports it (0.8077, tests/test_flows.py)."""
    model, mp, res = pairs["emd_3488_5me2"]
    job = EntryJob("5me2", "EMD-3488", model, mp, [], resolution=res)
    st = modelio.read_model(model)
    box = pipeline.stage_box(st, mapio.read_map(mp))
    with guard.entry_guard("5me2", guard.EntryLimits(memory_mb=40)):
        with pytest.raises(LimitError) as err:
            guard.run(pipeline.stage_metrics, st, box, res, job, PipelineParams())
    msg = str(err.value)
    assert msg.startswith("5me2: the metrics stage needs more than the entry memory budget of 40 MiB")
    assert "\n" not in msg
    t0 = time.monotonic()
    with guard.entry_guard("slow", guard.EntryLimits(seconds=2)):
        with pytest.raises(LimitError, match=r"^slow: stopped in the sleep stage at the entry time limit of 2 s"):
            guard.run(time.sleep, 600)
    assert time.monotonic() - t0 < 300  # killed, not waited for (600 s)
    model, mp, res = pairs["emd_30342_zone_7cec_chainA"]
    job = EntryJob("7cec", "EMD-30342", model, mp, [], resolution=res)
    st = modelio.read_model(model)
    box = pipeline.stage_box(st, mapio.read_map(mp))
    with guard.entry_guard("7cec", guard.EntryLimits(memory_mb=2048, seconds=3600)) as worker:
        out = guard.run(pipeline.stage_metrics, st, box, res, job, PipelineParams())
        assert worker.proc is not None  # it ran in the worker
    assert out["cc_mask"] == pytest.approx(0.8077, abs=0.01)


def test_worker_records_each_stages_peak_and_moves_arrays_whole():
    """The worker's peak resident size per stage (what bench_scale --entry reports): a stage that
    makes a 64 MiB array peaks about 64 MiB above the worker's size before it, and a later
    small stage does not inherit that peak (VmHWM is reset before each call); arrays sent out of
    band come back equal, C- or Fortran-ordered or strided."""
    a = np.arange(2_000_000, dtype=np.float32).reshape(100, 200, 100)
    with guard.entry_guard("x", guard.EntryLimits(seconds=600)) as worker:
        guard.run(np.add, 0, 0)
        start = guard.stage_peaks()["add"]
        big = guard.run(np.full, 64 * 2**20, 1, np.uint8)
        small = guard.run(np.multiply, np.asfortranarray(a[:, :, ::3]), 2)
        peaks = guard.stage_peaks()
        assert worker.proc is not None
    assert big.size == 64 * 2**20 and int(big[-1]) == 1
    assert np.array_equal(small, a[:, :, ::3] * 2)
    # start is the add stage's peak, itself a little above the size the full stage starts from
    # (measured 213.7 vs 149.9 + 64 MiB): 90 % of the array is the margin
    assert peaks["full"] >= start + 0.9 * 64
    assert peaks["multiply"] < start + 0.9 * 64


def test_worker_carries_back_the_jobs_warnings(pairs, tmp_path):
    """A stage's warnings in the entry's metadata come back from the worker (half-maps on another
    grid: sharpened alone, with the reason)."""
    model, mp, res = pairs["emd_30342_zone_7cec_chainA"]
    st = modelio.read_model(model)
    box = pipeline.stage_box(st, mapio.read_map(mp))
    other = mapio.write_map(tmp_path / "other.mrc", mapio.read_map(pairs["emd_3488_5me2"][1]))
    job = EntryJob("7cec", "EMD-30342", model, mp, [other, other], resolution=res)
    with guard.entry_guard("7cec", guard.EntryLimits(memory_mb=2048)):
        sharp = guard.run(pipeline.stage_sharpen_entry, job, box, res)
    assert sharp.map.shape == box.shape
    assert any("half-map other.mrc is not on the primary map's grid" in w for w in job.metadata["warnings"])


def test_precheck_refuses_a_million_atoms_without_parsing(pairs, tmp_path, monkeypatch):
    """A model of 1,000,000 atoms (5ME2's atom lines repeated) is refused by its line count, with
    the default budget (8 GiB): the model is never parsed, the map never read."""
    model, mp, _res = pairs["emd_3488_5me2"]
    atoms = [ln for ln in model.read_text().splitlines(keepends=True) if ln.startswith(("ATOM", "HETATM"))]
    big = tmp_path / "big.pdb"
    with open(big, "w") as fh:
        reps, rest = divmod(1_000_000, len(atoms))
        for _ in range(reps):
            fh.writelines(atoms)
        fh.writelines(atoms[:rest])
        fh.write("END\n")

    def never(*args, **kwargs):
        raise AssertionError("read")

    monkeypatch.setattr(modelio, "read_model", never)
    monkeypatch.setattr(mapio, "read_map_header", never)
    assert guard.count_atoms(big) == 1_000_000
    with pytest.raises(LimitError, match=r"^big: a model of 1,000,000 atoms needs about [0-9,]+ MiB, above the "
                                         r"entry memory budget of 8,192 MiB \(RR_ENTRY_MEMORY_MB\)$"):
        guard.precheck("big", big, mp, guard.EntryLimits(memory_mb=8192), 8.0)


def test_precheck_refuses_a_1000_cubed_map_from_its_header(pairs, tmp_path, monkeypatch):
    """A 1000³ map (a header with no data behind it, so it cannot have been read) is refused from
    its header with a 4 GiB budget; the model outside its map is refused from the header too."""
    model, mp, _res = pairs["emd_3488_5me2"]
    huge = header_only_map(mp, tmp_path / "huge.mrc", 1000)
    frame = mapio.read_map_header(huge)
    assert frame.shape == (1000, 1000, 1000) and frame.data.strides == (0, 0, 0)
    monkeypatch.setattr(mapio, "read_map", lambda *a, **k: pytest.fail("read"))
    with pytest.raises(LimitError, match=r"^5me2: a 1000×1000×1000 map needs about 7,629 MiB to read, above the "
                                         r"entry memory budget of 4,096 MiB \(RR_ENTRY_MEMORY_MB\)$"):
        guard.precheck("5me2", model, huge, guard.EntryLimits(memory_mb=4096), 8.0)
    # chains outside the map: the model moved 500 Å away
    st = modelio.read_model(model)
    for ch in st[0]:
        for res in ch:
            for a in res:
                a.pos.x += 500.0
    away = tmp_path / "away.cif"
    st.make_mmcif_document().write_file(str(away))
    with pytest.raises(InputError, match=r"^5me2: only 0% of the model lies inside map emd_3488.mrc$"):
        guard.precheck("5me2", away, mp, guard.EntryLimits(memory_mb=4096), 8.0)
    # a NaN coordinate is named as such, as the load stage names it (tests/test_faults.py)
    st[0][0][0][0].pos = gemmi.Position(float("nan"), 1.0, 2.0)
    st.make_mmcif_document().write_file(str(away))
    with pytest.raises(InputError, match=r"^5me2: 1 of 4468 atoms have non-finite coordinates \(NaN or inf\)$"):
        guard.precheck("5me2", away, mp, guard.EntryLimits(memory_mb=4096), 8.0)


def test_a_model_in_a_region_without_density_is_refused(pairs):
    """7CEC's map with its values wiped over the model's box: one line naming the entry."""
    model, mp, _res = pairs["emd_30342_zone_7cec_chainA"]
    st = modelio.read_model(model)
    box = pipeline.stage_box(st, mapio.read_map(mp))
    pipeline.check_box_density("7cec", box)  # the real map passes
    empty = box.with_data(np.zeros(box.shape, np.float32))
    with pytest.raises(InputError, match=r"^7cec: no density around the model: map 390_emd_30342_A_z4.mrc is "
                                         r"constant \(0\) over the model's box$"):
        pipeline.check_box_density("7cec", empty)


def test_precheck_estimate_is_within_the_limits_for_the_real_pairs(pairs):
    """The real pairs pass the default limits; the estimate counts what the files hold."""
    for name, (model, mp, _res) in pairs.items():
        est = guard.precheck(name, model, mp, guard.EntryLimits(memory_mb=8192, seconds=7200), 8.0)
        st = modelio.read_model(model)
        box = pipeline.stage_box(st, mapio.read_map(mp))
        assert est.n_atoms == len(modelio.atom_positions(st))
        assert est.box_voxels == int(np.prod(box.shape))


def _env(data_dir: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RR_"))}
    env["RR_DATA_DIR"] = str(data_dir)
    env["RR_TEST_DATA"] = os.environ.get("RR_TEST_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    env["RR_MONOMER_LIB"] = str(Path(env["RR_TEST_DATA"]) / "monomers")
    env.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".numba-cache"))
    env.update(extra)
    return env


@pytest.mark.slow
def test_night_refuses_an_entry_over_budget_and_goes_on(test_data, tmp_path):
    """5ME2's map in the mirror is a 1000³ header with no data: with a 2 GiB budget that entry
    fails at the pre-check with the one-line reason, recorded in the database; 7CEC, the next
    entry of the same night, is re-refined in its limited worker."""
    mirror = tmp_path / "archive"
    sample_archive.build(mirror, test_data)
    real = test_data / "maps_models" / "emd_3488_5me2" / "emd_3488.mrc"
    head = header_only_map(real, tmp_path / "h.mrc", 1000).read_bytes()
    (mirror / "emdb/structures/EMD-3488/map/emd_3488.map.gz").write_bytes(gzip.compress(head, mtime=0))
    data = tmp_path / "data"
    summary = tmp_path / "s.json"
    r = subprocess.run([sys.executable, "-m", "rerefine.flows.cli", "nightly", "--mirror", str(mirror),
                        "--workers", "1", "--cycles", "1", "--no-adp", "--no-site", "--json", str(summary)],
                       env=_env(data, RR_ENTRY_MEMORY_MB="2048"), capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads(summary.read_text())
    failed = {f["pdb_id"]: f["reason"] for f in s["failed"]}
    assert list(failed) == ["5me2"] and s["processed"] == 1, s
    assert failed["5me2"] == ("5me2: a 1000×1000×1000 map needs about 7,629 MiB to read, above the entry "
                              "memory budget of 2,048 MiB (RR_ENTRY_MEMORY_MB)")
    eng = sa.create_engine(f"sqlite:///{data / 'rerefine.sqlite'}")
    with eng.connect() as c:
        rows = {pid.lower(): text for pid, text in c.execute(sa.text("SELECT e.pdb_id, r.status || ' ' || coalesce(r.reason, '') FROM runs r "
                                      "JOIN entries e ON e.id = r.entry_id")).all()}
    eng.dispose()
    assert rows["5me2"].startswith("failed 5me2: a 1000×1000×1000 map") and rows["7cec"].startswith("done")


def _settled(marker: str) -> list[int]:
    """The processes still holding ``marker`` once killed ones had a moment to go (≤ 10 s)."""
    import procs

    for _ in range(100):
        left = procs.processes_with(marker)
        if not left:
            break
        time.sleep(0.1)
    return left


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the process tree is read from /proc")
def test_budget_holds_for_a_stages_process_pool_and_the_next_entry_runs(monkeypatch):
    """Two pool processes (as a boxed refinement starts) holding 200 MiB each stay under their
    own address-space limit (inherited: the worker's start + 300 MiB), but together exceed the
    entry's 300 MiB budget: the entry fails with the one-line reason and the worker and every
    process under it are gone; the next entry's pool, within the budget, finishes."""
    import uuid

    import procs

    tag = uuid.uuid4().hex
    monkeypatch.setenv("RR_GUARD_TEST", tag)  # inherited by every process of the entries below
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(procs.__file__).parent),
                                                                   os.environ.get("PYTHONPATH")])))
    with guard.entry_guard("big", guard.EntryLimits(memory_mb=300)):
        with pytest.raises(LimitError) as err:
            guard.run(procs.pool_holding, 2, 200, 600)
    msg = str(err.value)
    assert msg.startswith("big: the pool_holding stage needs more than the entry memory budget of 300 MiB "
                          "(RR_ENTRY_MEMORY_MB): its ") and "\n" not in msg
    assert _settled(f"RR_GUARD_TEST={tag}") == []
    with guard.entry_guard("next", guard.EntryLimits(memory_mb=300)):
        assert guard.run(procs.pool_holding, 2, 20, 0) == 40
    assert _settled(f"RR_GUARD_TEST={tag}") == []
