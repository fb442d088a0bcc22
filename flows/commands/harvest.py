"""``rerefine harvest``: find newly released EM entries and fetch model, map and half-maps.

Without ``--mirror`` discovery uses the RCSB Search and Data APIs and the EMDB API, and
files come from the public archive. With ``--mirror PATH|URL`` the mirror's own mmCIF
records are read (no search service) and files come from the mirror; add
``--search-service`` to discover through RCSB but fetch from the mirror.
"""

from __future__ import annotations

import datetime as dt


def register(sub) -> None:
    p = sub.add_parser("harvest", help="find new cryo-EM entries and fetch their model and maps")
    p.add_argument("--since", metavar="DATE", help="first release date, YYYY-MM-DD "
                   "(default: 7 days ago against RCSB; everything, undated included, in a mirror)")
    p.add_argument("--until", metavar="DATE", help="last release date, YYYY-MM-DD (default: no limit)")
    p.add_argument("--mirror", metavar="PATH|URL", help="archive mirror (default: RR_MIRROR or the public archive)")
    p.add_argument("--search-service", action="store_true",
                   help="with --mirror: still discover through the RCSB APIs")
    p.add_argument("--limit", type=int, metavar="N", help="stop after N accepted entries")
    p.add_argument("--dry-run", action="store_true", help="discover and judge only; download nothing")
    p.add_argument("--accept-unknown-resolution", action="store_true",
                   help="accept entries whose files state no resolution")
    p.add_argument("--json", metavar="OUT|-", help="write every entry with its status and files as JSON")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from rerefine.flows.cli import emit_json
    from rerefine.harvester.harvest import discover, fetch_entry
    from rerefine.harvester.http import HttpClient
    from rerefine.common.errors import InputError, RerefineError

    if args.limit is not None and args.limit < 1:
        raise InputError("--limit must be at least 1")
    mirror = args.mirror if args.mirror is not None else (settings.mirror or None)
    use_search = not mirror or args.search_service
    since = args.since
    if use_search and not since:
        since = (dt.date.today() - dt.timedelta(days=7)).isoformat()
    client = HttpClient(user_agent=settings.user_agent, timeout=settings.http_timeout,
                        total_timeout=settings.http_total_timeout)
    cache = settings.downloads / "harvest"
    cands = discover(
        since, args.until,
        search_url=settings.rcsb_search_url if use_search else None,
        data_url=settings.rcsb_data_url, emdb_api_url=settings.emdb_api_url if use_search else None,
        mirror=mirror, max_resolution=settings.max_resolution, max_map_mb=settings.max_map_mb,
        limit=args.limit, session=client, accept_unknown_resolution=args.accept_unknown_resolution,
        cache_dir=cache,
    )
    rows = []
    for c in cands:
        row = {"pdb_id": c.pdb_id, "emdb_id": c.emdb_id, "resolution": c.resolution,
               "release_date": c.release_date, "status": c.status, "reason": c.reason,
               "contour_level": c.contour_level, "title": c.title,
               "model_path": None, "map_path": None, "half_map_paths": []}
        if c.status == "accepted":
            if args.dry_run:
                row["status"] = "accepted"
            else:
                try:
                    f = fetch_entry(c, cache, mirror=mirror, files_url=settings.rcsb_files_url,
                                    emdb_files_url=settings.emdb_files_url, session=client,
                                    max_map_mb=settings.max_map_mb)
                    row.update(status=f.status, model_path=str(f.model_path), map_path=str(f.map_path),
                               half_map_paths=[str(p) for p in f.half_map_paths],
                               reason="; ".join(f.metadata.get("warnings") or []))
                except RerefineError as exc:
                    row.update(status="failed", reason=str(exc))
        rows.append(row)
    if args.json != "-":
        print(f"{'PDB':<16} {'EMDB':<10} {'res/Å':>6}  {'released':<10}  {'status':<9} reason / files")
        for r in rows:
            res = f"{r['resolution']:.2f}" if r["resolution"] else "?"
            tail = r["reason"] or (r["map_path"] or "")
            print(f"{r['pdb_id']:<16} {r['emdb_id'] or '-':<10} {res:>6}  {r['release_date'] or 'undated':<10}  "
                  f"{r['status']:<9} {tail}")
        counts = {}
        for r in rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        print("; ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "nothing found")
    emit_json({"since": since, "until": args.until, "mirror": mirror, "entries": rows}, args.json)
    return 0  # per-entry failures are recorded in the output, not the exit code
