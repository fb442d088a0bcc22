"""``rerefine sharpen MAP --resolution R -o OUT.mrc``: automatic map sharpening (see rerefine.refine.sharpen)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("sharpen", help="sharpen a map automatically (B_iso target, adjusted surface area, "
                                       "half-map FSC weighting or model scaling)")
    p.add_argument("map", help="map file (MRC/CCP4, optionally .gz)")
    p.add_argument("--resolution", "-r", type=float, required=True, help="map resolution d_min, Å")
    p.add_argument("-o", "--output", required=True, metavar="OUT.mrc", help="sharpened map (same grid and origin)")
    p.add_argument("--half-maps", nargs=2, metavar=("H1", "H2"), help="half-maps: FSC weighting before sharpening")
    p.add_argument("--model", metavar="M", help="model: scale the map's radial amplitudes to the model map's")
    p.add_argument("--target", choices=["target_b", "adjusted_sa"], default="target_b",
                   help="target_b: B_iso = 5.9 d_min² (default); adjusted_sa: search B "
                        "between -100 and 300 Å² maximising the adjusted surface area")
    p.add_argument("--json", metavar="OUT|-", help="write the chosen parameters as JSON")
    p.set_defaults(func=run)


def run(args, settings) -> int:
    from rerefine.flows.cli import emit_json
    from rerefine.refine import mapio, modelio
    from rerefine.refine.sharpen import auto_sharpen

    dmap = mapio.read_map(args.map)
    halves = None
    if args.half_maps:
        halves = tuple(mapio.read_map(h) for h in args.half_maps)
    st = modelio.read_model(args.model) if args.model else None
    res = auto_sharpen(dmap, args.resolution, half_maps=halves, model=st, target=args.target)
    mapio.write_map(args.output, res.map)
    info = {"map": str(args.map), "output": str(args.output), **res.as_dict()}
    if st is not None:
        info.update(_cc_mask(st, dmap, res.map, args.resolution))
    if args.json != "-":
        print(f"{args.map}: B_iso {res.b_iso_before:.1f} -> {res.b_iso_after:.1f} Å² "
              f"(b_sharpen {res.b_sharpen:+.1f} Å², method {res.method}); wrote {args.output}")
    emit_json(info, args.json)
    return 0


def _cc_mask(st, before, after, resolution) -> dict:
    """CCmask (phenix.map_model_cc definition, rerefine.refine.mapcc) of the map before and after."""
    from rerefine.refine import mapcc, mask, modelmap

    calc = modelmap.model_map(st, before, resolution).data
    msk = mask.molecular_mask(st, before)
    return {"cc_mask_before": mapcc.five_cc(before.data, calc, msk)["cc_mask"],
            "cc_mask_after": mapcc.five_cc(after.data, calc, msk)["cc_mask"]}
