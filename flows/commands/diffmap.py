"""``rerefine diffmap MODEL MAP -o OUT.mrc``: real-space difference map and its peaks."""

from __future__ import annotations


def register(sub) -> None:
    from rerefine.flows.commands.metrics import model_map_arguments

    p = sub.add_parser("diffmap", help="map minus shell-scaled model map (MRC) with its strongest peaks")
    model_map_arguments(p)
    p.add_argument("-o", "--output", required=True, metavar="OUT.mrc", help="difference map to write")
    p.add_argument("--peaks", type=int, default=20, metavar="N", help="peaks of each sign to list (default 20)")
    p.add_argument("--min-sd", type=float, default=3.0, metavar="K", help="smallest peak height, SD (default 3)")
    p.add_argument("--json", metavar="OUT|-", help="write the peak list as JSON")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from rerefine.flows.cli import emit_json
    from rerefine.flows.commands.metrics import read_model_and_map
    from rerefine.refine import diffmap, mapio

    st, dmap, resolution = read_model_and_map(args)
    diff, info = diffmap.difference_map(st, dmap, resolution)
    mapio.write_map(args.output, diff)
    peaks = diffmap.difference_peaks(diff, st, n_peaks=args.peaks, min_sd=args.min_sd)
    out = {"model": str(args.model), "map": str(args.map), "output": str(args.output),
           "resolution": resolution, **info, **peaks}
    if args.json != "-":
        print(f"wrote {args.output}: difference map at {resolution:.2f} Å, SD {info['sd']:.4g}")
        for key, label in (("positive_peaks", "+"), ("negative_peaks", "-")):
            for p in out[key][:10]:
                print(f"  {label} {p['height_sd']:+6.1f} SD at ({', '.join(f'{c:.1f}' for c in p['xyz'])})"
                      f"  near {p.get('nearest_atom', '?')} ({p.get('distance', float('nan')):.1f} Å)")
    emit_json(out, args.json)
    return 0
