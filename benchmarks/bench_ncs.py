"""Benchmark of torsion NCS restraints (issue 17, item 4): what do they gain on a real model with copies?

Run: ``.venv/bin/python benchmarks/bench_ncs.py [--repeats 2]``; writes ``benchmarks/results/ncs.json``.

For each shared map/model pair: the NCS groups found (:func:`rerefine.refine.ncs.find_ncs_groups`;
5ME2 has two alpha and two beta chains, 7CEC chain A and 3AJO one chain each). For a pair with
copies, in one invocation (timings compare under the same load), the deposited model and the
refinement with today's defaults ``ncs=False`` and with ``ncs=True``: MolProbity-class validation
(Ramachandran favoured/outliers, rotamer outliers, C-beta outliers, clashscore), CC_mask, CC_mask of
the refined coordinates with the deposited B, Q-score, bond/angle RMSD, the all-atom RMSD between
copies after superposition (:func:`rerefine.refine.ncs.copy_rmsd`), the RMS torsion difference
between copies over the restrained torsion pairs (below and above the 15-degree limit), and the
median seconds of ``--repeats`` refinements and the median milliseconds of one evaluation of the
NCS term beside one of the library restraints (after one untimed warm-up refinement that compiles the
kernels). With ``--shake S`` (Å) the same two refinements also start from the deposited model shaken
by S Å RMS per coordinate (seed 0, each copy its own noise), reporting in addition the all-atom RMSD
to the deposited model (does NCS help a noisy start back, as it does in crystallography?).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from realdata import DATA, MONLIB, PAIRS, REPO  # noqa: E402

TOP8000 = DATA / "validation" / "top8000"
VALIDATION_KEYS = ("rama_favored_pct", "rama_outliers", "rotamer_outliers", "cbeta_outliers", "clashscore",
                   "cis_peptides", "twisted_peptides")


def figures(st, dmap, res, b_dep, groups, term) -> dict:
    """Fit, validation and NCS figures of one model."""
    from rerefine.refine.metrics import compute_metrics
    from rerefine.refine.ncs import copy_rmsd
    from rerefine.refine.restraints import atom_xyz
    from rerefine.refine.validation import validate

    m = compute_metrics(st, dmap, res)
    dep_b = st.clone()
    for c, bv in zip(dep_b[0].all(), b_dep):
        c.atom.b_iso = float(bv)
    v = validate(st, MONLIB, top8000_dir=TOP8000).summary
    out = {"cc_mask": m["cc_mask"], "q_score": m["q_score"],
           "cc_mask_deposited_b": compute_metrics(dep_b, dmap, res)["cc_mask"],
           "validation": {k: v.get(k) for k in VALIDATION_KEYS},
           "copy_rmsd": {"/".join(g.chains): copy_rmsd(st, g) for g in groups}}
    if term is not None:
        d = np.abs(term.differences(atom_xyz(st)))
        d = d[np.isfinite(d)]
        out["torsion_diff_rms_below_limit"] = float(np.sqrt(np.mean(d[d <= term.limit] ** 2)))
        out["torsion_pairs_above_limit"] = int(np.sum(d > term.limit))
    return out


def eval_times(st, term, n: int = 200) -> dict:
    """Median milliseconds of one NCS term evaluation and of one evaluation of the model's library
    restraints (energy + gradient), on the deposited coordinates."""
    from rerefine.refine.geometry import restraint_energy_gradient
    from rerefine.refine.restraints import atom_xyz, build_restraints

    xyz = atom_xyz(st)
    r = build_restraints(st, MONLIB)
    g = np.zeros_like(xyz)
    term.energy_gradient(xyz, g)
    restraint_energy_gradient(r, xyz)
    out = {}
    for key, f in (("ncs_term", lambda: term.energy_gradient(xyz, g)),
                   ("restraints", lambda: restraint_energy_gradient(r, xyz))):
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        out[key] = 1000.0 * statistics.median(ts)
    return out


def rmsd_to(st, xyz_ref) -> float:
    """All-atom RMSD (Å) of ``st`` to reference coordinates in the same atom order."""
    from rerefine.refine.restraints import atom_xyz

    return float(np.sqrt(np.mean(np.sum((atom_xyz(st) - xyz_ref) ** 2, axis=1))))


def run_pair(name: str, repeats: int, shake: float = 0.0) -> dict:
    from rerefine.refine import mapio, modelio
    from rerefine.refine.ncs import find_ncs_groups, ncs_torsion_restraint
    from rerefine.refine.realspace import refine_model
    from rerefine.refine.restraints import build_restraints

    model, mp, res = PAIRS[name]
    st = modelio.read_model(DATA / "maps_models" / model)
    groups = find_ncs_groups(st)
    out = {"groups": [g.summary() for g in groups]}
    print(name, "groups", json.dumps(out["groups"]), flush=True)
    if not groups:
        return out
    dmap = mapio.read_map(DATA / "maps_models" / mp)
    # torsion pairs on the heavy-atom model (the same pairs the refinement restrains: riding H are left out)
    term = ncs_torsion_restraint(st, build_restraints(st, MONLIB), groups)
    out["torsion_pairs"] = len(term)
    out["eval_ms"] = eval_times(st, term)
    b_dep = np.array([c.atom.b_iso for c in st[0].all()])
    out["deposited"] = figures(st, dmap, res, b_dep, groups, term)
    print(name, "deposited", json.dumps(out["deposited"]), flush=True)
    refine_model(st, dmap, res, MONLIB, adp=False, cycles=1, ncs=True, top8000_dir=TOP8000)  # warm-up
    secs = {"no_ncs": [], "ncs": []}
    for rep in range(repeats):
        for tag in secs:
            t = time.perf_counter()
            r = refine_model(st, dmap, res, MONLIB, adp=True, ncs=(tag == "ncs"), top8000_dir=TOP8000)
            secs[tag].append(time.perf_counter() - t)
            if rep == 0:
                row = figures(r.structure, dmap, res, b_dep, groups, term)
                row.update({"status": r.status, "bond_rmsd": r.geometry_after.get("bond_rmsd"),
                            "angle_rmsd": r.geometry_after.get("angle_rmsd"), "rmsd_moved": r.rmsd_moved,
                            "warnings": r.warnings})
                out[tag] = row
                print(name, tag, json.dumps(row, default=str), flush=True)
    for tag, s in secs.items():
        out[tag]["seconds"] = statistics.median(s)
        out[tag]["seconds_all"] = s
    out["seconds_ratio_ncs"] = out["ncs"]["seconds"] / out["no_ncs"]["seconds"]
    if shake > 0:
        from rerefine.refine.restraints import atom_xyz, set_xyz

        xyz_dep = atom_xyz(st)
        shaken = st.clone()
        set_xyz(shaken, xyz_dep + np.random.default_rng(0).normal(0.0, shake, xyz_dep.shape))
        sh = {"shake": shake, "start": figures(shaken, dmap, res, b_dep, groups, term)}
        sh["start"]["rmsd_to_deposited"] = rmsd_to(shaken, xyz_dep)
        print(name, "shaken start", json.dumps(sh["start"]), flush=True)
        for tag in ("no_ncs", "ncs"):
            t = time.perf_counter()
            r = refine_model(shaken, dmap, res, MONLIB, adp=True, ncs=(tag == "ncs"), top8000_dir=TOP8000)
            row = figures(r.structure, dmap, res, b_dep, groups, term)
            row.update({"seconds": time.perf_counter() - t, "status": r.status,
                        "bond_rmsd": r.geometry_after.get("bond_rmsd"),
                        "angle_rmsd": r.geometry_after.get("angle_rmsd"),
                        "rmsd_to_deposited": rmsd_to(r.structure, xyz_dep)})
            sh[tag] = row
            print(name, "shaken", tag, json.dumps(row, default=str), flush=True)
        out["shaken"] = sh
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="emd_3488_5me2,emd_30342_zone_7cec_chainA,emd_20026_box_3ajo_refined")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--shake", type=float, default=0.0, help="also refine from the model shaken by this (Å)")
    args = ap.parse_args(argv)
    result = {name: run_pair(name, args.repeats, args.shake) for name in args.pairs.split(",")}
    out = REPO / "benchmarks" / "results" / "ncs.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
