"""``rerefine douse MODEL MAP --resolution R -o OUT.cif``: ordered waters, phenix.douse-style."""

from __future__ import annotations


def register(sub) -> None:
    from rerefine.flows.commands.metrics import model_map_arguments

    p = sub.add_parser("douse", help="place ordered waters at isolated spherical map peaks near polar atoms")
    model_map_arguments(p, "map file (MRC/CCP4, optionally .gz), ideally the sharpened one")
    p.add_argument("-o", "--output", required=True, metavar="OUT.cif",
                   help="model with kept and added waters (mmCIF; PDB when the name ends in .pdb)")
    p.add_argument("--max-resolution", type=float, metavar="R",
                   help="do nothing at a worse resolution, Å (default RR_DOUSE_MAX_RESOLUTION, 3.0)")
    p.add_argument("--json", metavar="OUT|-", help="write the added, kept and removed waters as JSON")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from rerefine.common.version import __version__
    from rerefine.flows.cli import emit_json
    from rerefine.flows.commands.metrics import read_model_and_map
    from rerefine.refine import douse, modelio

    st, dmap, resolution = read_model_and_map(args)
    cutoff = args.max_resolution if args.max_resolution is not None else settings.douse_max_resolution
    res = douse.douse(st, dmap, resolution, max_resolution=cutoff)
    modelio.write_model(args.output, res.structure, program="rerefine douse", version=__version__)
    out = {"model": str(args.model), "map": str(args.map), "output": str(args.output),
           "resolution": resolution, **res.summary()}
    if args.json != "-":
        if res.status != "ok":
            print(f"{args.model}: {res.status}; wrote the model unchanged to {args.output}")
        else:
            print(f"wrote {args.output}: {len(res.added)} waters added, {len(res.kept)} kept, "
                  f"{len(res.removed)} removed ({res.n_peaks} peaks >= {res.params['peak_sd']:g} SD; "
                  f"{res.seconds:.1f} s)")
            for w in res.removed[:10]:
                print(f"  removed {w['chain']}/HOH {w['seq']}{w['icode']}: {w['reason']}")
    emit_json(out, args.json)
    return 0
