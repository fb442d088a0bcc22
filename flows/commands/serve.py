"""``rerefine serve``: run the nightly flow on a cron schedule (default 02:00 UTC).

With ``PREFECT_API_URL`` pointing at a Prefect server, the flow is served there as the
deployment ``rerefine-nightly/nightly`` with that cron schedule (Prefect's scheduler starts
the runs, visible in its UI). Without a server, Prefect's ephemeral mode has no scheduler,
so this process keeps the schedule itself: it sleeps until the next cron time (UTC) and runs
the nightly flow, for ever.
"""

from __future__ import annotations

import datetime as dt
import os
import time


def next_run(cron: str, now: dt.datetime) -> dt.datetime:
    """The first time after ``now`` (UTC, naive) that matches the five-field ``cron`` expression."""
    from cronsim import CronSim, CronSimError

    from rerefine.common.errors import InputError

    try:
        return next(CronSim(cron, now.replace(second=0, microsecond=0)))
    except CronSimError as exc:
        raise InputError(f"--cron {cron!r}: {exc}") from None


def register(sub) -> None:
    p = sub.add_parser("serve", help="run the nightly flow on a schedule")
    p.add_argument("--cron", metavar="EXPR", help="cron schedule, UTC (default: RR_SCHEDULE_CRON, 0 2 * * *)")
    p.add_argument("--mirror", metavar="PATH|URL", help="archive mirror (default: RR_MIRROR or the public archive)")
    p.add_argument("--workers", type=int, metavar="N", help="entries at once (default: RR_CONCURRENCY)")
    p.add_argument("--dask-address", metavar="ADDR", help="run entries on this Dask scheduler")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from rerefine.flows.prefect_home import configure_prefect
    from rerefine.common.errors import InputError

    cron = args.cron or settings.schedule_cron
    if len(cron.split()) != 5:
        raise InputError(f"--cron {cron!r}: expected five fields (minute hour day month weekday)")
    now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
    next_run(cron, now)  # validates the expression before anything starts
    configure_prefect(settings.data_dir)
    from rerefine.flows.commands.nightly import print_summary
    from rerefine.flows.nightly import make_task_runner, nightly_flow, run_nightly, run_settings

    workers = args.workers if args.workers is not None else settings.concurrency
    mirror = args.mirror if args.mirror is not None else (settings.mirror or None)
    if os.environ.get("PREFECT_API_URL"):
        flow = nightly_flow.with_options(task_runner=make_task_runner(workers, args.dask_address))
        print(f"serving deployment rerefine-nightly/nightly on cron '{cron}' (UTC) at "
              f"{os.environ['PREFECT_API_URL']}; Ctrl-C stops")
        flow.serve(name="nightly", cron=cron, timezone="UTC",
                   parameters={"settings_dict": run_settings(settings), "mirror": mirror})
        return 0
    while True:
        now = dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)
        nxt = next_run(cron, now)
        print(f"next nightly run at {nxt:%Y-%m-%d %H:%M} UTC (cron '{cron}'); Ctrl-C stops", flush=True)
        time.sleep(max(0.0, (nxt - now).total_seconds()))
        from rerefine.flows.runlock import nightly_lock

        with nightly_lock(settings.data_dir, wait=True):  # a manual nightly still running: wait for it
            summary = run_nightly(settings=settings, mirror=mirror, workers=workers, dask_address=args.dask_address)
        print_summary(summary)
