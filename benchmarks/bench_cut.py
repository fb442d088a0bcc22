"""Benchmark of refinement when real chains are cut into regions (issue 17, "quality independent of size").

Run: ``.venv/bin/python benchmarks/bench_cut.py [--pairs 7cec:1800,5me2:600,3ajo:400] [--workers 2]
[--margin A] [--seam-width A] [--no-seams] [--out cut.json]``;
writes ``benchmarks/results/cut.json`` (or ``--out``).

A chain longer than a region's core (:data:`rerefine.refine.regions.REGION_ATOMS`, 6,000 atoms) is
cut into regions with fixed margins, and the seams are refined again
(:func:`rerefine.refine.boxed.refine_boxed`). The shared data hold no chain that long (the longest is
7CEC chain A, 4,308 atoms), so the cut path is measured on real pairs by lowering the core size
``short:LIMIT`` (``region_atoms`` of ``refine_boxed``): 7CEC at 1,800 atoms (3 regions of one chain),
5ME2 at 600 (every ~1,100-atom chain cut), 3AJO at 400. For each pair, in one invocation:

* ``one_piece``: :func:`rerefine.refine.realspace.refine_model` with the defaults (B refined);
* ``cut``: ``refine_boxed`` with the same settings, ``region_atoms=LIMIT``, on a pool of
  ``--workers`` processes.

Figures of each model (``bench_refine_validation.model_figures``): CC_mask (phenix.map_model_cc
definition), CC_mask of the refined coordinates with the deposited B, Q-score (Pintilie 2020,
sigma 0.6 Å), MolProbity-class validation; plus bond/angle RMSD over the whole model (library
restraints of :func:`rerefine.refine.peptide_links.refinement_topology`, no hydrogens) and
``seams``: RMS and largest deviation of the bonds and angles that join atoms of two different
region cores (``across_cut``) and of every bond and angle touching a residue of the seam pass
(``seam_residues``: residues within the seam width of another region's core), in both models, so
the cut model's seams are compared with the same restraints of the one-piece model;
``seam_outliers``: Ramachandran and rotamer outliers that lie in seam residues.
``diff``: cut minus one piece; ``cc_mask_cut_xyz_one_piece_b`` (and the other way round): CC_mask
of one run's coordinates with the other's B, which says whether a difference is in the coordinates
or in the B. ``cost``: wall and CPU seconds (the process and its reaped children:
the pool's processes) of each run; ``cpu_ratio``, ``wall_ratio``: cut / one piece.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_refine_validation import SHORT, atom_key, model_figures  # noqa: E402
from realdata import DATA, MONLIB, PAIRS, REPO  # noqa: E402

#: default ``--pairs``: short name and the region core size that cuts its chains
DEFAULT_PAIRS = "7cec:1800,5me2:600,3ajo:400"


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (user + system)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _devs(devs: np.ndarray) -> dict:
    return {"n": int(len(devs)), "rms": float(np.sqrt(np.mean(devs ** 2))) if len(devs) else None,
            "max_abs": float(np.abs(devs).max()) if len(devs) else None}


def seam_geometry(topo, xyz: np.ndarray, regions, seam_atoms: np.ndarray) -> dict:
    """RMS and largest deviation (Å for bonds, degrees for angles) of the library bonds and angles
    joining two region cores (``across_cut``) and touching a seam residue (``seam_residues``)."""
    from rerefine.refine.geometry import angle_devs, bond_devs

    owner = np.full(len(xyz), -1)
    for k, reg in enumerate(regions):
        owner[reg.core] = k
    in_seam = np.zeros(len(xyz), bool)
    in_seam[seam_atoms] = True
    b_idx, a_idx = np.asarray(topo.bonds.idx), np.asarray(topo.angles.idx)
    bd = bond_devs(xyz, np.ascontiguousarray(b_idx), np.asarray(topo.bonds.ideal))
    ad = angle_devs(xyz, np.ascontiguousarray(a_idx), np.asarray(topo.angles.ideal))
    out = {}
    for name, idx, dev in (("bonds", b_idx, bd), ("angles", a_idx, ad)):
        cross = (owner[idx] != owner[idx[:, :1]]).any(axis=1)
        out[f"{name}_across_cut"] = _devs(dev[cross])
        out[f"{name}_seam_residues"] = _devs(dev[in_seam[idx].any(axis=1)])
        out[f"{name}_elsewhere"] = _devs(dev[~in_seam[idx].any(axis=1)])
    return out


def _seam_outliers(validation: dict | None, seam_res: set) -> dict:
    if not validation:
        return {}
    return {k: [r for r in validation.get(f"{k}_residues", []) if r.rsplit(":", 1)[0] in seam_res]
            for k in ("rama_outlier", "rotamer_outlier")}


def run_pair(spec: str, workers: int, seams: bool, margin: float | None, seam_width: float | None,
             options: dict) -> dict:
    from rerefine.refine import mapio, modelio
    from rerefine.refine.boxed import refine_boxed
    from rerefine.refine.geometry import geometry_stats
    from rerefine.refine.peptide_links import refinement_topology
    from rerefine.refine.realspace import refine_model
    from rerefine.refine.regions import MARGIN, SEAM_WIDTH, seam_regions, split_regions

    short, _, lim = spec.partition(":")
    limit = int(lim)
    name = SHORT[short]
    model, mp, res = PAIRS[name]
    st = modelio.read_model(DATA / "maps_models" / model)
    dmap = mapio.read_map(DATA / "maps_models" / mp)
    margin = MARGIN if margin is None else margin
    seam_width = SEAM_WIDTH if seam_width is None else seam_width
    b_dep = {atom_key(c): c.atom.b_iso for c in st[0].all()}
    xyz0 = np.array([c.atom.pos.tolist() for c in st[0].all()])
    regions = split_regions(st, limit, margin, xyz=xyz0)
    seam = seam_regions(st, regions, xyz0, seam_width, limit, margin) if seams else []
    seam_atoms = np.concatenate([s.core for s in seam]) if seam else np.zeros(0, np.int64)
    cras = list(st[0].all())
    seam_res = {f"{cras[i].chain.name}:{cras[i].residue.seqid.num}" for i in seam_atoms}
    topo = refinement_topology(st, MONLIB)
    out = {"resolution": res, "atoms": len(xyz0), "region_atoms": limit, "margin": margin, "seam_width": seam_width,
           "regions": [{"core": int(len(r.core)), "margin": int(len(r.margin))} for r in regions],
           "seam_pass": [{"core": int(len(r.core)), "margin": int(len(r.margin))} for r in seam],
           "seam_residues": len(seam_res), "options": options, "load_start": os.getloadavg()}
    runs = {
        "one_piece": lambda: refine_model(st, dmap, res, MONLIB, **{"adp": True, **options}),
        "cut": lambda: refine_boxed(st, dmap, res, MONLIB, workers=workers, region_atoms=limit, margin=margin,
                                    seam_width=seam_width, seams=seams, **{"adp": True, **options}),
    }
    models = {}
    for tag, run in runs.items():
        t, c = time.perf_counter(), _cpu()
        r = run()
        wall, cpu = time.perf_counter() - t, _cpu() - c
        row = model_figures(r.structure, dmap, res, b_dep)
        xyz = np.array([a.atom.pos.tolist() for a in r.structure[0].all()])
        g = geometry_stats(topo, xyz)
        row.update({"status": r.status, "wall_seconds": wall, "cpu_seconds": cpu,
                    "bond_rmsd": g["bond_rmsd"], "angle_rmsd": g["angle_rmsd"], "max_bond_dev": g["max_bond_dev"],
                    "max_angle_dev": g["max_angle_dev"], "nonbonded_overlaps": g["nonbonded_overlaps"],
                    "seams": seam_geometry(topo, xyz, regions, seam_atoms),
                    "seam_outliers": _seam_outliers(row.get("validation"), seam_res),
                    "warnings": [w for w in r.warnings if "region" in w][:20]})
        out[tag] = row
        models[tag] = r.structure
        print(name, tag, json.dumps({k: v for k, v in row.items() if k not in ("validation", "b")}, default=str),
              flush=True)
        if row["validation"]:
            print("   validation", json.dumps(row["validation"]), flush=True)
    one, cut = out["one_piece"], out["cut"]
    # where a CCmask difference comes from: the cut coordinates with the one-piece B, and back
    from rerefine.refine.metrics import compute_metrics

    for tag, (xyz_from, b_from) in {"cc_mask_cut_xyz_one_piece_b": (models["cut"], models["one_piece"]),
                                    "cc_mask_one_piece_xyz_cut_b": (models["one_piece"], models["cut"])}.items():
        m = xyz_from.clone()
        for a, b in zip(m[0].all(), b_from[0].all()):
            a.atom.b_iso = b.atom.b_iso
        out[tag] = compute_metrics(m, dmap, res)["cc_mask"]
    keys = ("cc_mask", "cc_mask_deposited_b", "q_score", "bond_rmsd", "angle_rmsd")
    out["diff"] = {k: cut[k] - one[k] for k in keys}
    v1, v0 = cut.get("validation"), one.get("validation")
    if v0 and v1:
        out["diff"].update({k: v1[k] - v0[k] for k in ("rama_favored_pct", "rama_outliers", "rotamer_outliers",
                                                        "cbeta_outliers", "clashscore", "cis_peptides",
                                                        "twisted_peptides") if k in v0 and k in v1})
    out["cost"] = {"wall_ratio": cut["wall_seconds"] / one["wall_seconds"],
                   "cpu_ratio": cut["cpu_seconds"] / one["cpu_seconds"], "workers": workers}
    print(name, "diff", json.dumps(out["diff"]), "cost", json.dumps(out["cost"]), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default=DEFAULT_PAIRS, help="short:LIMIT, comma-separated")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--margin", type=float, default=None, help="Å; default regions.MARGIN")
    ap.add_argument("--seam-width", type=float, default=None, help="Å; default regions.SEAM_WIDTH")
    ap.add_argument("--no-seams", action="store_true", help="no seam pass")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a RefineParameters field for both runs (Python literal), e.g. cycles=2")
    ap.add_argument("--out", default="cut.json", help="file name under benchmarks/results")
    args = ap.parse_args(argv)
    import ast

    options = {k: ast.literal_eval(v) for k, v in (s.split("=", 1) for s in args.set)}
    out = REPO / "benchmarks" / "results" / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"load_start": os.getloadavg(), "argv": sys.argv[1:]}
    for spec in args.pairs.split(","):
        result[spec] = run_pair(spec, args.workers, not args.no_seams, args.margin, args.seam_width, options)
        result[spec]["load_after"] = os.getloadavg()
        out.write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
