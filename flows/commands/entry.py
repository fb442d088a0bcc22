"""``rerefine entry PDB_ID``: run the per-entry flow for one entry (for users and for debugging)."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("entry", help="re-refine one entry end to end and store the result")
    p.add_argument("pdb_id", help="PDB id (or a mirror's local id)")
    p.add_argument("--mirror", metavar="PATH|URL", help="archive mirror (default: RR_MIRROR or the public archive)")
    p.add_argument("--resolution", type=float, metavar="Å",
                   help="use this resolution (needed when the archive states none)")
    p.add_argument("--force", action="store_true", help="redo the entry even if this version already did it")
    p.add_argument("--json", metavar="OUT|-", help="write the entry's summary as JSON")
    from rerefine.flows.commands.nightly import add_pipeline_options

    add_pipeline_options(p)
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from rerefine.flows.cli import emit_json
    from rerefine.flows.prefect_home import configure_prefect
    from rerefine.common.errors import InputError

    if args.resolution is not None and args.resolution <= 0:
        raise InputError("--resolution must be positive")
    configure_prefect(settings.data_dir, quiet=args.json == "-")
    from rerefine.flows.commands.nightly import pipeline_params
    from rerefine.flows.nightly import run_single

    mirror = args.mirror if args.mirror is not None else (settings.mirror or None)
    out = run_single(settings=settings, pdb_id=args.pdb_id, mirror=mirror, resolution=args.resolution,
                     force=args.force, params=pipeline_params(args, settings))
    if args.json != "-":
        line = f"{out['pdb_id']}: {out['status']}"
        if out.get("verdict"):
            line += f" ({out['verdict']}"
            if out.get("verdict_gate"):
                line += f", decided by the {out['verdict_gate']} gate"
            line += f"; CCmask {out['cc_mask_before']:.3f} -> {out['cc_mask_after']:.3f}"
            if out.get("cc_mask_input_b_after") is not None:
                line += f", with the input B {out['cc_mask_input_b_after']:.3f}"
            line += ")"
        if out.get("reason"):
            line += f": {out['reason']}"
        print(line)
        for why in out.get("verdict_reasons") or []:
            print(f"  verdict: {why}")
        for w in out.get("warnings") or []:
            print(f"  WARNING: {w}", file=sys.stderr)
        if out.get("timings"):
            print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in out["timings"].items()))
    emit_json(out, args.json)
    return 0 if out["status"] in ("done", "cached") else 1
