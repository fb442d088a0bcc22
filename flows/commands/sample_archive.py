"""``rerefine sample-archive --out DIR``: lay out the real test data as an archive mirror."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("sample-archive",
                       help="lay out the real map/model pairs of the test data as an archive mirror")
    p.add_argument("--out", required=True, metavar="DIR", help="mirror root to write")
    p.add_argument("--data", metavar="DIR", help="test data folder (default: RR_TEST_DATA / ../shared/data)")
    p.add_argument("--json", metavar="OUT|-", help="write what was laid out as JSON")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from rerefine.flows.cli import emit_json
    from rerefine.harvester import sample_archive

    data = args.data or settings.test_data_dir
    records = sample_archive.build(args.out, data)
    if args.json != "-":
        for r in records:
            what = f"{r['emdb_id']} {r.get('map', '')}" if r.get("emdb_id") else "no map"
            print(f"{r['pdb_id']:<16} {what}")
        print(f"sample archive written to {args.out} ({len(records)} models)")
    emit_json({"out": str(args.out), "entries": records}, args.json)
    return 0
