"""``rerefine metrics MODEL MAP``: model-to-map fit (CC family, Q-score, atom inclusion)."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("metrics", help="model-to-map fit: CCmask/box/peaks/volume, Q-score, atom inclusion")
    model_map_arguments(p)
    p.add_argument("--contour", type=float, metavar="C",
                   help="contour level for atom inclusion (default: level enclosing 17 Å³ per non-H atom)")
    p.add_argument("--q-sigma", type=float, default=0.6, metavar="S",
                   help="Q-score reference Gaussian width, Å (0.6 MapQ default; 0.4 EMDB convention)")
    p.add_argument("--json", metavar="OUT|-", help="write all figures (per chain and residue too) as JSON")
    p.set_defaults(func=run)


def model_map_arguments(p, map_help: str = "map file (MRC/CCP4, optionally .gz)") -> None:
    """The positional MODEL and MAP and ``--resolution`` that the model-against-map commands share."""
    p.add_argument("model", help="model file (mmCIF or PDB, optionally .gz)")
    p.add_argument("map", help=map_help)
    p.add_argument("--resolution", type=float, metavar="R",
                   help="map resolution, Å (default: the resolution stated in the model file)")


def read_model_and_map(args):
    """``(structure, map, resolution Å)`` of a command registered with :func:`model_map_arguments`,
    checked to belong together (:func:`rerefine.refine.metrics.check_inputs`): one-line errors."""
    from rerefine.refine import metrics, modelio

    st = modelio.read_model(args.model)
    resolution = resolve_resolution(args.resolution, st, args.model)
    dmap = read_map_around(st, args.map)
    metrics.check_inputs(st, dmap, resolution)
    return st, dmap, resolution


def read_map_around(st, map_path):
    """The map cut to the box the nightly computes on (:func:`rerefine.flows.pipeline.stage_box`:
    the model plus :data:`rerefine.flows.pipeline.BOX_PADDING` Å), reading only that box when the
    file is uncompressed (:func:`rerefine.refine.mapio.read_map_box`), so a command's time and
    memory follow the model, not the map, and its figures are the nightly's. The whole map when
    it cannot be boxed (no finite coordinates, a model entirely outside the map, a non-orthogonal
    cell): the checks that follow then say why, or compute on the whole map."""
    import numpy as np

    from rerefine.flows.pipeline import BOX_PADDING
    from rerefine.refine import mapio, modelio

    xyz = modelio.atom_positions(st)
    xyz = xyz[np.isfinite(xyz).all(axis=1)] if len(xyz) else xyz
    frame = mapio.read_map_header(map_path)
    if len(xyz) == 0 or not frame.is_orthogonal or mapio.fraction_inside(frame, xyz) == 0.0:
        return mapio.read_map(map_path)
    return mapio.read_map_box(map_path, xyz, padding=BOX_PADDING)


def resolve_resolution(given, st, model_path) -> float:
    """The resolution to use: ``given``, else the model's stated one, else a one-line error."""
    from rerefine.refine import modelio
    from rerefine.common.errors import InputError

    if given is not None:
        if not given > 0:
            raise InputError(f"--resolution must be a positive number of Å (got {given})")
        return float(given)
    res = modelio.model_resolution(st)
    if res is None:
        raise InputError(f"{model_path}: the model states no resolution; give --resolution")
    return res


def run(args, settings) -> int:
    from rerefine.flows.cli import emit_json
    from rerefine.refine import metrics, modelio

    st = modelio.read_model(args.model)
    resolution = resolve_resolution(args.resolution, st, args.model)
    dmap = read_map_around(st, args.map)
    out = metrics.compute_metrics(st, dmap, resolution, contour=args.contour, q_sigma=args.q_sigma)
    if str(out.get("contour_source") or "").startswith("default"):
        print(f"WARNING: {args.map}: no --contour given: atom inclusion uses the level enclosing 17 Å³ per "
              "non-H atom, which assumes the model explains the whole map (a partial model gets far too low "
              "an inclusion); give the EMDB recommended contour", file=sys.stderr)
    if args.json != "-":
        print(f"model {args.model} vs map {args.map} at {resolution:.2f} Å")
        print(f"CC_mask {out['cc_mask']:.4f}  CC_box {out['cc_box']:.4f}  "
              f"CC_peaks {out['cc_peaks']:.4f}  CC_volume {out['cc_volume']:.4f}")
        print(f"Q-score {out['q_score']:.3f} (expected {out['q_score_expected']:.3f} at sigma {out['q_sigma']:g} Å)")
        print(f"atom inclusion {out['atom_inclusion']:.3f}, backbone {out['atom_inclusion_backbone']:.3f} "
              f"at contour {out['contour']:.4g} ({out['contour_source']})")
        for ch, v in out["per_chain"].items():
            print(f"  chain {ch}: CC {v['cc']:.3f}  Q {v['q_score']:.3f}")
        print(f"{len(out['per_residue'])} residues; {out['seconds']:.2f} s")
    emit_json(out, args.json)
    return 0
