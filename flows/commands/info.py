"""``rerefine info MODEL MAP``: what a model and a map hold, and how they overlap."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("info", help="describe a model and a map and how they overlap")
    p.add_argument("model", help="model file (mmCIF or PDB, optionally .gz)")
    p.add_argument("map", help="map file (MRC/CCP4, optionally .gz)")
    p.add_argument("--json", metavar="OUT|-", help="write the description as JSON")
    p.set_defaults(func=run)


def describe(model_path, map_path) -> dict:
    """The facts ``rerefine info`` reports, as a dict."""
    # imported here: every CLI start registers this command, few run it (numba, gemmi: ~0.2 s)
    from rerefine.refine import mapio, modelio
    from rerefine.refine.ncs import find_ncs_groups

    st = modelio.read_model(model_path)
    dmap = mapio.read_map(map_path)
    xyz = modelio.atom_positions(st)
    frac = mapio.fraction_inside(dmap, xyz)
    stats = dmap.statistics()
    out = {
        "model": str(model_path),
        "map": str(map_path),
        **modelio.summary(st),
        "resolution": modelio.model_resolution(st),
        "grid": list(dmap.shape),
        "voxel_size": [round(float(v), 5) for v in dmap.voxel_size],
        "origin": [round(float(v), 4) for v in dmap.origin],
        "cell": [dmap.cell.a, dmap.cell.b, dmap.cell.c, dmap.cell.alpha, dmap.cell.beta, dmap.cell.gamma],
        "map_mean": stats["mean"],
        "map_sd": stats["sd"],
        "map_min": stats["min"],
        "map_max": stats["max"],
        "fraction_inside": frac,
        "ncs_groups": [g.summary() for g in find_ncs_groups(st)],
    }
    return out


def ncs_lines(groups: list) -> list:
    """One text line per NCS group summary (:meth:`rerefine.refine.ncs.NcsGroup.summary`)."""
    lines = []
    for g in groups:
        ops = "; ".join(f"{c['chain']} onto {g['reference']}: {c['rotation_deg']:.1f} deg, {c['shift']:.1f} Å, "
                        f"RMSD {c['rmsd']:.2f} Å over {c['n_aligned']} residues" for c in g["copies"])
        lines.append(f"NCS     chains {' '.join(g['chains'])} are copies ({ops})")
    return lines


def run(args, settings) -> int:
    from rerefine.flows.cli import emit_json
    from rerefine.common.errors import InputError

    info = describe(args.model, args.map)
    if info["fraction_inside"] == 0.0:
        raise InputError(f"{args.model} lies entirely outside {args.map}")
    if args.json != "-":
        res = f"{info['resolution']:.2f} Å" if info["resolution"] else "unknown"
        print(f"model   {info['model']}: {info['n_atoms']} atoms ({info['n_hydrogens']} H), "
              f"{info['n_residues']} residues, chains {' '.join(info['chains'])}")
        print(f"map     {info['map']}: grid {'x'.join(map(str, info['grid']))}, voxel "
              f"{'/'.join(f'{v:.3f}' for v in info['voxel_size'])} Å, origin "
              f"({', '.join(f'{v:.2f}' for v in info['origin'])}) Å")
        print(f"values  mean {info['map_mean']:.4g}, sd {info['map_sd']:.4g}, "
              f"min {info['map_min']:.4g}, max {info['map_max']:.4g}")
        print(f"resolution {res}; atoms inside the map: {100 * info['fraction_inside']:.1f}%")
        for line in ncs_lines(info["ncs_groups"]):
            print(line)
    emit_json(info, args.json)
    return 0
