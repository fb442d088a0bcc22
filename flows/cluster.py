"""The refinement stage of an entry whose regions run on a Dask cluster.

When the nightly runs on a Dask cluster (``rerefine nightly --workers N`` or ``--dask-address``),
an entry is one Dask task; a model refined in boxes hands its regions to the whole cluster, so
one entry can use many workers. :func:`stage_refine_on_cluster` runs inside the entry's guarded
stage worker (:mod:`rerefine.flows.guard`), like every other heavy stage: the entry's time limit
and its memory budget hold for the refinement's own work (cutting boxes, merging, geometry), and
the regions go to the cluster through a client of the worker's own. Each region then runs under
its Dask worker's memory limit. When the entry's time runs out, the guard stops the stage worker;
its client's connection closes and the scheduler drops the entry's regions that have not started
(a region already running ends on its own; its result is discarded).

Where each region ran is recorded by the task itself (``distributed.get_worker().address``):
every region's entry of the result's ``history`` gains ``worker``, the address of the Dask worker
that refined it.

No Prefect here: the guard's worker process imports this module.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
from collections import Counter
from pathlib import Path

from rerefine.flows.pipeline import PipelineParams, stage_refine
from rerefine.refine.mapio import DensityMap

log = logging.getLogger(__name__)


def _on_worker(fn, task):
    """``fn(task)`` on a Dask worker, with the address of the worker that ran it."""
    from distributed import get_worker

    return fn(task), get_worker().address


class _WhereExecutor(cf.Executor):
    """A Dask client's executor that records which worker ran each region (by the region's label)."""

    def __init__(self, inner: cf.Executor):
        self.inner = inner
        self.where: dict[str, str] = {}

    def submit(self, fn, /, *args, **kwargs):
        if kwargs or len(args) != 1 or not hasattr(args[0], "label"):
            return self.inner.submit(fn, *args, **kwargs)
        outer: cf.Future = cf.Future()
        label = args[0].label

        def finish(inner: cf.Future) -> None:
            try:
                result, worker = inner.result()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's future
                outer.set_exception(exc)
                return
            self.where[label] = worker
            outer.set_result(result)

        self.inner.submit(_on_worker, fn, args[0]).add_done_callback(finish)
        return outer

    def shutdown(self, wait=True, *, cancel_futures=False):
        self.inner.shutdown(wait=wait)


def stage_refine_on_cluster(address: str, st, sharpened: DensityMap, box: DensityMap, resolution: float,
                            monlib: Path | None, params: PipelineParams, top8000: Path | None = None):
    """:func:`rerefine.flows.pipeline.stage_refine` with the regions of a boxed model submitted to
    the Dask scheduler at ``address`` (as many in flight as twice the cluster's worker threads).

    Returns
    -------
    rerefine.refine.realspace.RefinementResult
        As :func:`~rerefine.flows.pipeline.stage_refine`; the model is the same whichever
        executor refined its regions (:mod:`rerefine.refine.boxed`).
    """
    from distributed import Client

    with Client(address, set_as_default=False) as client:
        threads = max(1, sum(client.nthreads().values()))
        executor = _WhereExecutor(client.get_executor())
        result = stage_refine(st, sharpened, box, resolution, monlib, params, top8000, workers=threads,
                              executor=executor)
    where = executor.where
    for row in result.history:
        if isinstance(row, dict) and row.get("region") in where:
            row["worker"] = where[row["region"]]
    if where:
        log.info("%d regions on %d Dask workers: %s", len(where), len(set(where.values())),
                 dict(Counter(where.values())))
    return result


def region_workers(history) -> dict[str, int]:
    """Regions refined per Dask worker address, from a result's ``history`` (empty when the
    regions did not run on a cluster)."""
    return dict(Counter(row["worker"] for row in history or [] if isinstance(row, dict) and "worker" in row))
