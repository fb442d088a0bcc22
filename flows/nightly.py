"""Prefect flows: the per-entry pipeline and the nightly run.

``entry_flow`` runs one entry's stages as Prefect tasks (load the model and its map box, sharpen, metrics before,
refine, metrics after, difference map, store); ``nightly_flow`` harvests new entries and runs
``entry_flow`` for each on a task runner (threads, a local Dask cluster, or a remote Dask
scheduler), isolating failures, then rebuilds the site incrementally.

Call :func:`rerefine.flows.prefect_home.configure_prefect` before importing this module: Prefect
reads its settings when it is imported. Without ``PREFECT_API_URL`` Prefect starts its own
temporary API server at the first flow call.

Length (~600 lines): one job, the Prefect layer: a thin task around each of the pipeline's stages
(:mod:`rerefine.flows.pipeline`, plain functions) and the flows that call them in order; the stage
order of one entry (``entry_flow``) is its longest part.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import socket
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

from prefect import flow, task
from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner

from rerefine.flows import __version__, guard, pipeline
from rerefine.flows.cluster import region_workers
from rerefine.flows.pipeline import EntryJob, PipelineParams, timed
from rerefine.common.errors import ArchiveError, RerefineError

log = logging.getLogger(__name__)


def _is_archive_error(task, task_run, state) -> bool:
    """Retry only transient archive failures (timeouts, 5xx, dropped connections); a 404, garbage
    or a corrupt file, like bad input, does not get better by retrying."""
    try:
        state.result()
    except ArchiveError as exc:
        return exc.transient
    except Exception:
        return False
    return False


# ---- per-entry tasks ------------------------------------------------------------------

@task(name="load", retries=0)
def load_task(job: EntryJob, padding: float):
    return pipeline.stage_load(job, padding)


@task(name="sharpen")
def sharpen_task(job: EntryJob, box, resolution: float):
    return guard.run(pipeline.stage_sharpen_entry, job, box, resolution)


@task(name="metrics")
def metrics_task(st, box, resolution: float, job: EntryJob, params: PipelineParams, geometry: dict | None):
    return guard.run(pipeline.stage_metrics, st, box, resolution, job, params, geometry)


@task(name="refine")
def refine_task(st, sharpened, box, resolution: float, monlib, params: PipelineParams, top8000=None):
    # On a Dask cluster the regions of a large model become tasks of the whole cluster: the stage
    # runs in the entry's guarded worker (its time and memory limits hold) with a client of its own
    # (flows/cluster.py), while this Dask task leaves its worker's slot (worker_client secedes) so
    # that the regions can use it. Elsewhere the regions run on a process pool on the entry's cores.
    from rerefine.refine.boxed import use_boxes

    try:
        from distributed import get_worker, worker_client

        get_worker()
    except (ImportError, ValueError):
        return guard.run(pipeline.stage_refine, st, sharpened, box, resolution, monlib, params, top8000)
    if not use_boxes(st, box, min_atoms=2 * params.region_atoms):  # one piece: nothing to hand out
        return guard.run(pipeline.stage_refine, st, sharpened, box, resolution, monlib, params, top8000,
                         workers=1)
    from rerefine.flows.cluster import stage_refine_on_cluster

    with worker_client() as client:
        address = client.scheduler_info()["address"]
        return guard.run(stage_refine_on_cluster, address, st, sharpened, box, resolution, monlib, params, top8000)


@task(name="douse")
def douse_task(st, sharpened, box, resolution: float, monlib, params: PipelineParams):
    return guard.run(pipeline.stage_douse, st, sharpened, box, resolution, monlib, params)


@task(name="placement")
def placement_task(st, sharpened, resolution: float):
    return guard.run(pipeline.stage_placement, st, sharpened, resolution)


@task(name="crossval")
def crossval_task(job: EntryJob, st, box, resolution: float, monlib, params: PipelineParams, b_sharpen: float,
                  top8000=None):
    return guard.run(pipeline.stage_entry_crossval, job, st, box, resolution, monlib, params, b_sharpen, top8000)


@task(name="input-b-fit")
def input_b_task(refined_st, st, box, resolution: float):
    return guard.run(pipeline.stage_input_b_fit, refined_st, st, box, resolution)


@task(name="validation")
def validation_task(deposited, refined, monlib, top8000):
    return guard.run(pipeline.stage_validation_pair, deposited, refined, monlib, top8000)


@task(name="diffmap")
def diffmap_task(st, box, resolution: float):
    return guard.run(pipeline.stage_diffmap, st, box, resolution)


def http_client(s: dict):
    """The harvester's HTTP client with the run's time limits (``http_timeout``, ``http_total_timeout``)."""
    from rerefine.harvester.http import HttpClient

    return HttpClient(user_agent=s.get("user_agent") or HttpClient.user_agent,
                      timeout=s.get("http_timeout", 60.0), total_timeout=s.get("http_total_timeout", 3600.0))


@task(name="fetch", retries=2, retry_delay_seconds=[10, 60], retry_condition_fn=_is_archive_error)
def fetch_task(candidate: dict, ctx: dict):
    from rerefine.harvester import harvest

    cand = harvest.candidate_from_dict(candidate)
    fetched = harvest.fetch_entry(cand, ctx["cache_dir"], mirror=ctx.get("mirror") or None,
                                  files_url=ctx["files_url"], emdb_files_url=ctx["emdb_files_url"], progress=False,
                                  session=http_client(ctx), max_map_mb=ctx.get("max_map_mb"))
    md = dict(fetched.metadata)
    return EntryJob(pdb_id=fetched.pdb_id, emdb_id=fetched.emdb_id, model_path=Path(fetched.model_path),
                    map_path=Path(fetched.map_path), half_map_paths=[Path(p) for p in fetched.half_map_paths],
                    resolution=cand.resolution or md.get("resolution"),
                    contour=cand.contour_level if cand.contour_level is not None else md.get("contour"),
                    metadata={"title": cand.title or md.get("title"),
                              "release_date": cand.release_date or md.get("release_date"),
                              "authors": cand.authors or md.get("authors") or [],
                              "warnings": list(md.get("warnings") or []),
                              "figure_sources": dict(md.get("figure_sources") or {})})


# ---- the per-entry flow -----------------------------------------------------------------

def entry_record(job: EntryJob) -> dict:
    """The entry's metadata as the database stores it."""
    md = job.metadata or {}
    return {"pdb_id": job.pdb_id, "emdb_id": job.emdb_id, "title": md.get("title"),
            "release_date": md.get("release_date"), "resolution": job.resolution,
            "method": "ELECTRON MICROSCOPY",
            "method_details": {"authors": md.get("authors") or [], "contour": job.contour,
                               "figure_sources": md.get("figure_sources") or {},
                               "warnings": (md.get("warnings") or [])[:20]}}


def _residue_b(st) -> dict:
    out = {}
    for ch in st[0]:
        for res in ch:
            bs = [a.b_iso for a in res if not a.is_hydrogen()] or [a.b_iso for a in res]
            out[(ch.name, res.seqid.num, res.seqid.icode.strip())] = sum(bs) / len(bs)
    return out


def _with_b(metrics: dict, st) -> dict:
    bmap = _residue_b(st)
    for row in metrics.get("per_residue", []):
        row["b_iso"] = bmap.get((row["chain"], row["seq"], (row.get("icode") or "").strip()))
    return metrics


@flow(name="rerefine-entry", log_prints=False)
def entry_flow(job_dict: dict, ctx: dict) -> dict:
    """Run one entry end to end and store the result; never raises for a bad entry.

    ``ctx`` holds ``database``, ``out_root``, ``monlib``, ``version``, ``params`` (dict) and
    ``force`` (bool). Returns a summary dict with ``pdb_id``, ``status``, ``verdict``,
    ``reason``, ``timings``.
    """
    from rerefine.reports import db, store

    job = EntryJob.from_dict(job_dict)
    params = PipelineParams(**ctx.get("params", {}))
    timings: dict = {}
    with timed(timings, "bookkeeping"):
        engine = db.make_engine(ctx["database"])
    entry = entry_record(job)
    started = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    try:
        with timed(timings, "checksums"):
            files = pipeline.input_files(job)
    except OSError as exc:
        reason = f"{job.pdb_id}: cannot read input files ({exc.strerror or exc})"
        store.store_result(engine, entry=entry, pipeline_version=ctx["version"], params=params.to_dict(),
                           status="failed", reason=reason)
        return {"pdb_id": job.pdb_id, "status": "failed", "reason": reason, "timings": timings}
    with timed(timings, "bookkeeping"):
        before = None if ctx.get("force") else store.previous_outcome(
            engine, pdb_id=job.pdb_id, pipeline_version=ctx["version"], params=params.to_dict(), input_files=files)
        if before is not None and before[0] == "failed":  # the same inputs and version would fail again
            return {"pdb_id": job.pdb_id, "status": "failed", "timings": timings,
                    "reason": f"{before[1]} (not retried: same inputs and pipeline version; --force redoes it)"}
        if before is not None:
            return {"pdb_id": job.pdb_id, "status": "cached", "reason": "", "timings": timings}
        store.mark_running(engine, entry=entry, pipeline_version=ctx["version"], params=params.to_dict(),
                           input_files=files, host=socket.gethostname())
    early = None  # the outputs written while the stage worker measures (pipeline.EarlyWrites)
    try:
        limits = entry_limits(ctx)
        if limits.active:
            with timed(timings, "precheck"):
                guard.precheck(job.pdb_id, job.model_path, job.map_path, limits, params.box_padding)
        with timed(timings, "load"):
            st, box, res = load_task(job, params.box_padding)
        job.resolution = res
        entry["resolution"] = res
        if job.contour is not None and pipeline.contour_outside_map(job.contour, box):
            note = f"EMDB contour level {job.contour:g} lies outside the map's values: ignored"
            log.warning("%s: %s", job.pdb_id, note)
            job.metadata.setdefault("warnings", []).append(note)
            job.contour = None
            entry = entry_record(job)
            entry["resolution"] = res
        pipeline.check_box_density(job.pdb_id, box)
        with timed(timings, "sharpen"):
            sharp = sharpen_task(job, box, res)
        with timed(timings, "placement"):
            placement = placement_task(st, sharp.map, res)
        with timed(timings, "refine"):
            ref = refine_task(st, sharp.map, box, res, ctx.get("monlib"), params, ctx.get("top8000"))
        # the coordinates' own fit is measured on the refined model before douse changes its waters:
        # added waters carry refined B, which the CCmask-with-input-B figure must not reward
        refined_coordinates = ref.structure
        with timed(timings, "douse"):
            ref.structure, waters, geometry = douse_task(ref.structure, sharp.map, box, res, ctx.get("monlib"),
                                                         params)
        if geometry:
            ref.geometry_after = geometry
        outdir = pipeline.entry_dir(Path(ctx["out_root"]), job.pdb_id)
        # the refined model and the sharpened map are final now: written by a thread of this
        # process while the stage worker measures (compression on the core the worker leaves free)
        early = pipeline.EarlyWrites(outdir, job.pdb_id, ref.structure, sharp.map if params.keep_maps else None,
                                     box, sharp.map, version=ctx["version"])
        with timed(timings, "metrics_before"):
            before = _with_b(metrics_task(st, box, res, job, params, ref.geometry_before), st)
        with timed(timings, "metrics_after"):
            after = _with_b(metrics_task(ref.structure, box, res, job, params, ref.geometry_after), ref.structure)
        if placement is not None:
            before["placement"] = placement
        for m in (before, after):
            m.update({"b_iso_before": sharp.b_iso_before, "b_iso_after": sharp.b_iso_after,
                      "b_sharpen": sharp.b_sharpen, "sharpen_method": sharp.method})
        with timed(timings, "sharpen"):
            after["sharpening"] = {"radial": early.radial()}
        with timed(timings, "crossval"):
            cv = crossval_task(job, st, box, res, ctx.get("monlib"), params, sharp.b_sharpen, ctx.get("top8000"))
        with timed(timings, "metrics_after"):
            cc_input_b = input_b_task(refined_coordinates, st, box, res)
        pipeline.add_fit_figures(before, after, cc_mask_input_b=cc_input_b, crossval=cv,
                                 warnings=job.metadata.setdefault("warnings", []))
        with timed(timings, "validation"):
            v_before, v_after = validation_task(st, ref.structure, ctx.get("monlib"), ctx.get("top8000"))
            before.update(v_before)
            after.update(v_after)
        after["refinement"] = {"status": ref.status, "weight": ref.weight, "cycles": ref.cycles,
                               "rmsd_moved": ref.rmsd_moved, "region_workers": region_workers(ref.history),
                               "warnings": (job.metadata.get("warnings", []) + list(ref.warnings))[:20]}
        after["douse"] = waters
        with timed(timings, "diffmap"):
            diff, peaks = diffmap_task(ref.structure, box, res)
        after["difference_peaks"] = peaks
        with timed(timings, "write"):
            if params.keep_maps:
                early.add_difference_map(diff)  # compressed while the 3D-view data are made
            view = pipeline.write_viewer(outdir, job.pdb_id, st, ref.structure, sharp.map, diff, box, before, after)
            arts = early.finish()
            if view is not None:
                arts.append(view)
        with timed(timings, "store"):
            sharpening = {k: v for k, v in sharp.as_dict().items()
                          if isinstance(v, (int, float, str)) or v is None}
            store.store_result(engine, entry=entry, pipeline_version=ctx["version"], params=params.to_dict(),
                               status="done", timings=timings, metrics_before=before, metrics_after=after,
                               artefacts=arts, input_files=files, sharpening=sharpening,
                               started_at=started)
        from rerefine.reports.verdict import decide

        judged = decide(before, after)
        return {"pdb_id": job.pdb_id, "status": "done", "verdict": judged.verdict, "verdict_gate": judged.gate,
                "verdict_reasons": judged.reasons, "reason": "", "timings": timings,
                "cc_mask_before": before["cc_mask"], "cc_mask_after": after["cc_mask"],
                "cc_mask_input_b_after": after.get("cc_mask_input_b"),
                "warnings": list(after["refinement"]["warnings"]), "stage_peak_mb": guard.stage_peaks(),
                # wall seconds of the outputs written while the stage worker measured (not in timings,
                # which add up to the entry's wall time)
                "overlapped_write_seconds": round(early.seconds, 3)}
    except RerefineError as exc:
        reason, transient = str(exc), bool(getattr(exc, "transient", False))
    except MemoryError:
        reason, transient = f"{job.pdb_id}: out of memory", True
    except OSError as exc:  # e.g. a full disk while writing outputs
        reason, transient = f"{job.pdb_id}: {exc.strerror or exc} ({getattr(exc, 'filename', '') or 'I/O'})", True
    except Exception as exc:  # a bug must not stop the nightly run; keep its cause on record
        log.error("%s: internal error\n%s", job.pdb_id, traceback.format_exc())
        reason, transient = f"{job.pdb_id}: internal error: {type(exc).__name__}: {exc}".splitlines()[0], False
    if early is not None:
        early.discard()
    store.store_result(engine, entry=entry, pipeline_version=ctx["version"], params=params.to_dict(),
                       status="failed", reason=reason, timings=timings, input_files=files, started_at=started,
                       transient=transient)
    return {"pdb_id": job.pdb_id, "status": "failed", "reason": reason, "timings": timings}


def record_candidate(engine, cand: dict, version: str, params: dict, status: str, reason: str) -> None:
    """Store a run without inputs (rejected, or failed before its files were judged) for a candidate.

    Never raises: when the candidate's metadata cannot be stored, the entry is stored with its id
    alone; when even that fails, the log says why and the night goes on.
    """
    from rerefine.reports import store

    full = {k: cand.get(k) for k in ("pdb_id", "emdb_id", "title", "resolution", "release_date")}
    for entry in (full, {"pdb_id": cand.get("pdb_id")}):
        try:
            store.store_result(engine, entry=entry, pipeline_version=version, params=params, status=status,
                               reason=reason)
            return
        except Exception:  # noqa: BLE001 - one entry's record must not end the night
            log.warning("%s: cannot record %s run with its metadata", cand.get("pdb_id"), status, exc_info=True)


def _reason(pdb_id: str, stage: str, exc: BaseException) -> str:
    """One line naming the entry, the stage and the cause (a bug's traceback goes to the log)."""
    if isinstance(exc, RerefineError):
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return text if text.lower().startswith(pdb_id.lower()) else f"{pdb_id}: {text}"
    log.error("%s: %s failed\n%s", pdb_id, stage, traceback.format_exc())
    return f"{pdb_id}: {stage}: internal error: {type(exc).__name__}: {exc}".splitlines()[0][:500]


@task(name="process-entry")
def process_entry_task(candidate: dict, ctx: dict) -> dict:
    """Fetch one accepted candidate, then run its per-entry flow (a sub-flow of the nightly run)."""
    from rerefine.reports import db, store

    t0 = time.perf_counter()
    try:
        job = fetch_task(candidate, ctx)
    except Exception as exc:  # the per-entry guard: whatever the fetch meets is this entry's failure
        reason = _reason(candidate["pdb_id"], "fetch", exc)
        engine = db.make_engine(ctx["database"])
        record_candidate(engine, candidate, ctx["version"], ctx.get("params", {}), "failed", reason)
        return {"pdb_id": candidate["pdb_id"], "status": "failed", "reason": reason,
                "timings": {"fetch": time.perf_counter() - t0}}
    fetch_s = time.perf_counter() - t0
    try:
        # the entry's heavy stages run in a child process held to the entry's limits
        with guard.entry_guard(candidate["pdb_id"], entry_limits(ctx)):
            out = entry_flow(job.to_dict(), ctx)
    except Exception as exc:  # entry_flow records its own failures; this is the last line (e.g. the database)
        out = {"pdb_id": candidate["pdb_id"], "status": "failed", "reason": _reason(candidate["pdb_id"], "entry", exc)}
    out.setdefault("timings", {})["fetch"] = round(fetch_s, 3)
    # The entry's wall time inside this task: minus its stage timings, Prefect's per-entry cost.
    out["wall_seconds"] = round(time.perf_counter() - t0, 3)
    return out


def entry_limits(ctx: dict) -> guard.EntryLimits:
    """The per-entry memory budget and time limit of a run (``RR_ENTRY_MEMORY_MB``, ``RR_ENTRY_SECONDS``)."""
    return guard.EntryLimits(float(ctx.get("entry_memory_mb") or 0.0), float(ctx.get("entry_seconds") or 0.0))


def make_task_runner(workers: int, dask_address: str | None):
    """Threads for one worker, a local multi-process Dask cluster for more, or a remote scheduler."""
    if dask_address or workers > 1:
        from prefect_dask import DaskTaskRunner

        if dask_address:
            return DaskTaskRunner(address=dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=1)


@contextlib.contextmanager
def shared_temporary_server(local_cluster: bool):
    """With ``local_cluster`` and no ``PREFECT_API_URL``: start a Prefect API server of the run's
    own (:func:`rerefine.flows.prefect_server.temporary_server`: ``prefect server start`` on a free
    loopback port, its database in a temporary folder) and point the run and the local Dask
    cluster's workers at it (``PREFECT_API_URL`` in the environment and the settings).

    Otherwise each worker process starts a temporary server of its own at its first task, which
    the cluster's shutdown (it kills workers that do not end within seconds) leaves running. The
    server's whole process group is stopped at exit, also when the night fails.
    A remote cluster (``--dask-address``) cannot reach a server on this host's loopback: there,
    set ``PREFECT_API_URL`` to a Prefect server the workers can reach.

    Yields the seconds the server took to answer, or None when none was started.
    """
    import os

    if not local_cluster or os.environ.get("PREFECT_API_URL"):
        yield None
        return
    from prefect.logging.handlers import APILogHandler

    from rerefine.flows.prefect_server import temporary_server

    t0 = time.perf_counter()
    with temporary_server() as api_url:
        os.environ["PREFECT_API_URL"] = api_url
        try:
            with temporary_settings(updates={PREFECT_API_URL: api_url}):
                try:
                    yield round(time.perf_counter() - t0, 3)
                finally:
                    # Send the run's queued log records while the server still answers; sent at
                    # exit, they would find it stopped ("Error logging to API"). The handler's flush drains
                    # the log worker all of its instances share.
                    APILogHandler().flush()
        finally:
            os.environ.pop("PREFECT_API_URL", None)


def without_heartbeats():
    """Settings context with Prefect's flow-run heartbeats off.

    Heartbeats let a Prefect server notice crashed runs; each (sub-)flow run pays for its
    heartbeat thread with a join of up to a second at exit. Our own crash detection is the
    database's ``running`` state
    (:func:`rerefine.reports.store.recover_interrupted`), so runs without a Prefect server
    turn them off. Dask workers inherit the setting with each submitted task.
    """
    return temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


# Modules every entry's stages import on first use (numpy, scipy, gemmi, numba and our kernels).
STAGE_MODULES = ("rerefine.refine.sharpen", "rerefine.refine.douse", "rerefine.refine.fsc", "rerefine.refine.geometry",
                 "rerefine.refine.crossval", "rerefine.refine.validation",
                 "rerefine.refine.realspace", "rerefine.refine.metrics", "rerefine.refine.diffmap",
                 "rerefine.reports.store", "rerefine.reports.verdict", "rerefine.reports.site",
                 "rerefine.harvester.harvest")


def prepare_run(database: str) -> dict:
    """Our own start-up work, done before the flow: upgrades the project database and imports
    the stage modules (otherwise the first entry's stages pay for the imports). Returns its
    timings in seconds."""
    import importlib

    from rerefine.reports import db

    t0 = time.perf_counter()
    db.upgrade(database)
    t1 = time.perf_counter()
    for name in STAGE_MODULES:
        importlib.import_module(name)
    t2 = time.perf_counter()
    return {"db_upgrade": round(t1 - t0, 3), "imports": round(t2 - t1, 3)}


def run_nightly(*, settings, since=None, until=None, mirror=None, limit=None, workers=1,
                dask_address=None, build_site=True, force=False, params: PipelineParams | None = None,
                accept_unknown_resolution=None) -> dict:
    """Harvest, process every accepted entry, rebuild the site; return the summary dict.

    The caller holds the data directory's nightly lock (:func:`rerefine.flows.runlock.nightly_lock`).
    """
    import os

    s = run_settings(settings)
    params = replace(params or PipelineParams(), monomer_library=pipeline.monomer_library_identity(s["monlib"]))
    setup = prepare_run(s["database"])
    prefect_startup = {"api_url": os.environ.get("PREFECT_API_URL") or "ephemeral"}
    runner = make_task_runner(workers, dask_address)
    nightly = nightly_flow.with_options(task_runner=runner)
    t0 = time.perf_counter()
    with without_heartbeats(), shared_temporary_server(workers > 1 and not dask_address) as server_seconds:
        if server_seconds is not None:
            prefect_startup.update(api_url="temporary server", server_seconds=server_seconds)
        summary = nightly(settings_dict=s, since=since, until=until, mirror=mirror,
                          limit=limit, build_site=build_site, force=force, params=params.to_dict(),
                          accept_unknown_resolution=accept_unknown_resolution, db_ready=True, locked=True)
    # Wall time of the flow call as the caller sees it (``seconds`` is measured inside the flow).
    summary["flow_call_seconds"] = round(time.perf_counter() - t0, 3)
    summary["setup_seconds"] = setup
    summary["prefect_startup"] = prefect_startup
    return summary


def run_settings(settings) -> dict:
    """The settings a run needs, as plain data (it travels to Dask workers and Prefect)."""
    return {
        "database": settings.database, "downloads": str(settings.downloads), "site_dir": str(settings.site_dir),
        "monlib": str(settings.monomer_library) if settings.monomer_library else None,
        "top8000": str(settings.top8000_dir),
        "data_dir": str(Path(settings.data_dir).resolve()),
        "search_url": settings.rcsb_search_url, "data_url": settings.rcsb_data_url,
        "files_url": settings.rcsb_files_url, "emdb_api_url": settings.emdb_api_url,
        "emdb_files_url": settings.emdb_files_url, "max_resolution": settings.max_resolution,
        "max_map_mb": settings.max_map_mb, "user_agent": settings.user_agent,
        "http_timeout": settings.http_timeout, "http_total_timeout": settings.http_total_timeout,
        "entry_memory_mb": settings.entry_memory_mb, "entry_seconds": settings.entry_seconds,
    }


def _entry_ctx(s: dict, params: dict, force: bool, mirror) -> dict:
    """What every per-entry flow needs from the settings (plain data: it travels to Dask workers)."""
    return {"database": s["database"], "out_root": s["data_dir"], "monlib": s["monlib"],
            "top8000": s.get("top8000"), "version": __version__,
            "params": params, "force": force, "cache_dir": s["downloads"], "mirror": str(mirror or ""),
            "files_url": s["files_url"], "emdb_files_url": s["emdb_files_url"], "max_map_mb": s["max_map_mb"],
            "user_agent": s["user_agent"], "http_timeout": s["http_timeout"],
            "http_total_timeout": s["http_total_timeout"],
            "entry_memory_mb": s.get("entry_memory_mb", 0.0), "entry_seconds": s.get("entry_seconds", 0.0)}


def default_since(engine) -> dt.date:
    """The day after the newest release date already processed; a week ago on an empty database."""
    from sqlalchemy import func, select

    from rerefine.reports import db

    with engine.connect() as conn:
        newest = conn.execute(select(func.max(db.T_ENTRIES.c.release_date))).scalar()
    if newest:
        if isinstance(newest, str):
            newest = dt.date.fromisoformat(newest[:10])
        return newest
    return dt.date.today() - dt.timedelta(days=7)


@task(name="harvest", retries=2, retry_delay_seconds=[30, 120], retry_condition_fn=_is_archive_error)
def harvest_task(s: dict, since, until, mirror, limit, accept_unknown_resolution, run_key: str = "",
                 only_changed: bool = False):
    """Discovery; with ``only_changed`` (a local mirror, not ``--force``) only new or changed entries are
    judged: an entry rejected before from the same inputs keeps its recorded reason and costs an index
    lookup (:func:`rerefine.harvester.harvest.discover`)."""
    from rerefine.harvester import harvest

    return harvest.discover(since, until, search_url=None if mirror else s["search_url"],
                            data_url=s["data_url"], emdb_api_url=s["emdb_api_url"], mirror=mirror or None,
                            max_resolution=s["max_resolution"], max_map_mb=s["max_map_mb"], limit=limit,
                            accept_unknown_resolution=accept_unknown_resolution, cache_dir=s["downloads"],
                            session=http_client(s), only_changed=only_changed, run_key=run_key)


def judgement_run_key(s: dict, params: dict | None) -> str:
    """What the night's records of its discovery judgements depend on besides the archive's files and
    the selection settings: the pipeline parameters (part of a run's key) and the database they are
    recorded in. A hash, so no database credentials reach the mirror's state file."""
    text = json.dumps({"params": params or {}, "database": s["database"]}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def has_runs(engine) -> bool:
    """Whether the project database holds any run (a new or emptied database holds none)."""
    from sqlalchemy import select

    from rerefine.reports import db

    with engine.connect() as conn:
        return conn.execute(select(db.T_RUNS.c.id).limit(1)).first() is not None


def record_judgements(engine, candidates, params: dict | None, summary: dict) -> list[dict]:
    """``candidates``: :func:`rerefine.harvester.harvest.discover`'s result (a ``Discovery``).
    Record each candidate that is not accepted (rejected: ``skipped`` with its reason; failed to be
    judged: ``failed``), list them in ``summary``, then keep the judgements in the mirror's state
    file (:meth:`rerefine.harvester.harvest.Discovery.remember`), so the next night neither judges nor
    records them again while their inputs stay the same. Returns the accepted candidates as dicts."""
    accepted = []
    for c in candidates:
        if c.status == "accepted":
            accepted.append(asdict(c))
            continue
        if c.status == "rejected":
            summary["rejected"].append({"pdb_id": c.pdb_id, "reason": c.reason})
        else:  # metadata could not be had or judged: a failure, worth another try next night
            summary["failed"].append({"pdb_id": c.pdb_id, "reason": c.reason})
        record_candidate(engine, asdict(c), __version__, params or {},
                         "skipped" if c.status == "rejected" else "failed", c.reason or c.status)
    summary["judged_before"] = candidates.unchanged
    candidates.remember()
    return accepted


def leave_done(engine, candidates, accepted: list[dict], params: dict | None, summary: dict) -> list[dict]:
    """The accepted candidates that still need a per-entry task; the others are counted in
    ``summary["done_before"]`` (with ``summary["done_query_seconds"]``) and logged.

    Left out: an entry discovery returned as judged before from the same mirror files, settings,
    pipeline version and parameters (``candidates.kept_inputs``, from the mirror's state file), whose
    latest run under this pipeline version and parameters is ``done`` and started after those files
    last changed (so it read them as they are). One database query for the night
    (:func:`rerefine.reports.store.latest_runs`). Everything else is run: a new or changed entry, a
    failed or interrupted run, another version or parameters; under ``--force`` discovery keeps no
    judgement, so nothing is left out.
    """
    from rerefine.reports import store

    summary["done_before"], summary["done_query_seconds"] = 0, 0.0
    kept = candidates.kept_inputs
    if not kept or not accepted:
        return accepted
    t0 = time.perf_counter()
    runs = store.latest_runs(engine, pipeline_version=__version__,
                             params=PipelineParams(**(params or {})).to_dict())
    summary["done_query_seconds"] = round(time.perf_counter() - t0, 3)
    todo = []
    for cand in accepted:
        newest_ns = kept.get(cand["pdb_id"])
        status, started = runs.get(store.normalise_pdb_id(cand["pdb_id"]), (None, None))
        if newest_ns is not None and status == "done" and started is not None and \
                started.replace(tzinfo=dt.timezone.utc).timestamp() * 1e9 > newest_ns:
            continue
        todo.append(cand)
    summary["done_before"] = len(accepted) - len(todo)
    if summary["done_before"]:
        log.info("%d accepted entries left as done: unchanged since a finished run of pipeline %s with these "
                 "parameters (one database query, %.2f s); %d handed to per-entry tasks",
                 summary["done_before"], __version__, summary["done_query_seconds"], len(todo))
    return todo


@task(name="build-site")
def site_task(database: str, out: str) -> str:
    from rerefine.reports import db, site, site_sources

    engine = db.make_engine(database)
    try:
        site.build_site(site_sources.DatabaseSource(engine), Path(out))
    finally:
        engine.dispose()
    return str(Path(out) / "index.html")


@flow(name="rerefine-nightly", log_prints=False)
def nightly_flow(settings_dict: dict, since=None, until=None, mirror=None, limit=None, build_site=True,
                 force=False, params: dict | None = None, accept_unknown_resolution=None,
                 db_ready: bool = False, locked: bool = False) -> dict:
    """Harvest new EM entries, re-refine each (failures isolated), rebuild the site, summarise.

    ``db_ready``: the caller has already upgraded the database (:func:`prepare_run`). ``locked``: the
    caller holds the data directory's nightly lock (:func:`rerefine.flows.runlock.nightly_lock`);
    otherwise (a served deployment) the flow takes it, waiting for a running night to end.
    """
    from rerefine.flows.runlock import nightly_lock

    if not locked:
        with nightly_lock(settings_dict["data_dir"], wait=True):
            return nightly_flow.fn(settings_dict, since, until, mirror, limit, build_site, force, params,
                                   accept_unknown_resolution, db_ready, locked=True)
    from rerefine.flows.runlock import clean_temp_files
    from rerefine.reports import db, store

    t0 = time.perf_counter()
    s = settings_dict
    for root in {s["data_dir"], s["downloads"], s["site_dir"]}:
        clean_temp_files(root)
    if not db_ready:
        db.upgrade(s["database"])
    engine = db.make_engine(s["database"])
    store.recover_interrupted(engine, host=socket.gethostname())
    if since is None and not mirror:
        since = default_since(engine)
    accept_unknown_resolution = bool(accept_unknown_resolution)
    t_h = time.perf_counter()
    # judge only new or changed mirror entries, unless --force or the database holds no run yet (a new
    # database must get every skip recorded, even if the mirror's state file remembers the judgements)
    only_changed = bool(mirror) and not force and has_runs(engine)
    candidates = harvest_task(s, since, until, mirror, limit, accept_unknown_resolution,
                              judgement_run_key(s, params), only_changed=only_changed)
    harvest_s = time.perf_counter() - t_h
    ctx = _entry_ctx(s, params or {}, force, mirror)
    summary = {"found": len(candidates), "processed": 0, "cached": 0, "improved": 0, "unchanged": 0,
               "worse": 0, "failed": [], "rejected": [], "entries": [], "site": None}
    accepted = leave_done(engine, candidates, record_judgements(engine, candidates, params, summary), params,
                          summary)
    futures = [process_entry_task.submit(c, ctx) for c in accepted]
    for cand, fut in zip(accepted, futures):
        try:
            res = fut.result()
        except Exception as exc:  # a crashed worker: record and go on
            reason = f"{cand['pdb_id']}: worker crashed: {exc}".splitlines()[0]
            record_candidate(engine, cand, __version__, params or {}, "failed", reason)
            res = {"pdb_id": cand["pdb_id"], "status": "failed", "reason": reason}
        summary["entries"].append(res)
        if res["status"] == "done":
            summary["processed"] += 1
            v = res.get("verdict") or "unchanged"
            summary[v if v in ("improved", "unchanged", "worse") else "unchanged"] += 1
        elif res["status"] == "cached":
            summary["cached"] += 1
        else:
            summary["failed"].append({"pdb_id": res["pdb_id"], "reason": res.get("reason", "")})
    site_s = 0.0
    if build_site:
        t_s = time.perf_counter()
        summary["site"] = site_task(s["database"], s["site_dir"])
        site_s = time.perf_counter() - t_s
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    summary["harvest_seconds"] = round(harvest_s, 3)
    summary["site_seconds"] = round(site_s, 3)
    summary["stage_seconds"] = _sum_stages(summary["entries"])
    return summary


def _sum_stages(entries: list[dict]) -> dict:
    out: dict = {}
    for e in entries:
        for k, v in (e.get("timings") or {}).items():
            out[k] = round(out.get(k, 0.0) + float(v), 3)
    return out


@flow(name="rerefine-one-entry", log_prints=False)
def single_entry_flow(candidate: dict, ctx: dict) -> dict:
    """``rerefine entry``: fetch one judged entry and run its per-entry flow."""
    return process_entry_task(candidate, ctx)


def run_single(*, settings, pdb_id: str, mirror=None, resolution: float | None = None, force: bool = False,
               params: PipelineParams | None = None) -> dict:
    """Judge, fetch and re-refine one entry; returns the entry summary (status, verdict, reason, timings)."""
    from rerefine.harvester import harvest
    from rerefine.reports import db

    s = run_settings(settings)
    params = replace(params or PipelineParams(), monomer_library=pipeline.monomer_library_identity(s["monlib"]))
    cand = harvest.candidate_for(pdb_id, data_url=s["data_url"], emdb_api_url=s["emdb_api_url"], mirror=mirror,
                                 max_resolution=s["max_resolution"], max_map_mb=s["max_map_mb"],
                                 accept_unknown_resolution=resolution is not None, cache_dir=s["downloads"])
    if resolution is not None:
        cand.resolution = float(resolution)
    if cand.status != "accepted":
        return {"pdb_id": cand.pdb_id, "status": cand.status, "reason": cand.reason, "timings": {}}
    db.upgrade(s["database"])
    ctx = _entry_ctx(s, params.to_dict(), force, mirror)
    with without_heartbeats():
        return single_entry_flow(asdict(cand), ctx)
