"""``rerefine compare VERSION_A VERSION_B``: what changed between two pipeline versions."""

from __future__ import annotations

# Shown in the table, in this order: (metric, label, number format).
TABLE = (
    ("cc_mask", "CCmask", "+.4f"), ("cc_box", "CCbox", "+.4f"), ("cc_peaks", "CCpeaks", "+.4f"),
    ("cc_volume", "CCvolume", "+.4f"), ("q_score", "Q-score", "+.4f"),
    ("atom_inclusion", "atom incl.", "+.4f"), ("bond_rmsd", "bond RMSD Å", "+.4f"),
    ("angle_rmsd", "angle RMSD °", "+.3f"), ("nonbonded_overlaps", "overlaps", "+.1f"),
)


def register(sub) -> None:
    p = sub.add_parser("compare", help="metric deltas between two pipeline versions, and the entries that got worse")
    p.add_argument("version_a", metavar="VERSION_A", help="the reference version (VERSION or VERSION@PARAMHASH)")
    p.add_argument("version_b", metavar="VERSION_B", help="the version compared with it")
    p.add_argument("--url", metavar="URL", help="database URL (default: from the settings)")
    p.add_argument("--margin", type=float, default=None,
                   help="smallest CCmask drop that counts as worse (default 0.01, reports.verdict.CC_MARGIN)")
    p.add_argument("--limit", type=int, default=50, help="list at most this many worse entries (default 50)")
    p.add_argument("--json", metavar="OUT|-", help="write the full comparison as JSON")
    p.set_defaults(func=run)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def run(args, settings) -> int:
    from rerefine.flows.cli import emit_json
    from rerefine.reports import db, queries
    from rerefine.reports.verdict import CC_MARGIN

    margin = CC_MARGIN if args.margin is None else args.margin
    engine = db.make_engine(args.url or settings.database)
    try:
        cmp = queries.compare_versions(engine, args.version_a, args.version_b, margin=margin)
    finally:
        engine.dispose()
    if args.json != "-":
        a, b = cmp["version_a"], cmp["version_b"]
        print(f"{a['version']} @{a['params_hash'][:8]} -> {b['version']} @{b['params_hash'][:8]}: "
              f"{cmp['n_common']} entries processed by both")
        print(f"verdicts A: {cmp['verdicts_a'] or '-'}   B: {cmp['verdicts_b'] or '-'}")
        print(f"{'metric (after, B - A)':<22}{'n':>6}{'mean':>10}{'median':>10}{'q25':>10}{'q75':>10}")
        for key, label, spec in TABLE:
            s = cmp["summary"][key]
            if not s["n"]:
                continue
            print(f"{label:<22}{s['n']:>6}" + "".join(f"{_fmt(s[k], spec):>10}" for k in ("mean", "median", "q25", "q75")))
        worse = cmp["worse"]
        print(f"entries worse under {b['version']}: {len(worse)} (CCmask down by >= {margin:g} or a lower verdict)")
        for r in sorted(worse, key=lambda r: (r["d_cc_mask"] is None, r["d_cc_mask"] or 0))[: args.limit]:
            print(f"  {r['pdb_id']:<12} CCmask {_fmt(r['cc_mask_a'], '.3f')} -> {_fmt(r['cc_mask_b'], '.3f')}"
                  f"  verdict {r['verdict_a'] or '-'} -> {r['verdict_b'] or '-'}")
        if len(worse) > args.limit:
            print(f"  ... {len(worse) - args.limit} more (use --json for all)")
    emit_json(cmp, args.json)
    return 0
