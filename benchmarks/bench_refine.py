"""Benchmark of real-space refinement (issue 6): recovery, re-refinement table, speed.

Run: ``/work/main/.venv/bin/python benchmarks/bench_refine.py [--quick]``; writes
``benchmarks/results/refine.json``.

* **Recovery**: each real model is shaken (0.5 Å RMS Gaussian noise, seed 42; every B set
  to 50 Å²) and refined (coordinates + B) against its real map. Reported: RMSD to the
  deposited model (all atoms, non-water, backbone N/CA/C/O), RMSD to the refinement of the
  unshaken deposited model (does the refinement find the same answer from a shaken
  start?), CC_mask vs the deposited model's, bond/angle RMSD.
  The same recovery against a **synthetic map** (the deposited model's own model map at the
  resolution plus correlated noise of 0.5 x its sd, seed 1): separates what the method can
  recover on ideal data from what the real map moves. And the deposited model refined against
  that synthetic map (``floor``: how far library geometry + map-value target move a model that
  fits its map exactly).
  Also the number of peptides rebuilt (:func:`rerefine.refine.realspace.rebuild_peptides`) and the
  peptides left with omega more than 30 deg from the deposited model's isomer (deposited models: none).
* **Re-refinement**: each deposited model refined (coordinates + B); the full metrics
  (:func:`rerefine.refine.metrics.compute_metrics`) and geometry before/after. For 5ME2 also the
  RMSD to 5NI1 (the same authors' later model in the same map, CC_mask 0.87) before and after:
  does the refinement move towards it? And how much of 5NI1's difference from 5ME2 is one rigid
  rotation (Kabsch superposition).
* **Without the reference-position restraint** (``reference_sigma=None``, what ``rerefine refine
  --free`` does): the re-refinement and the shaken recovery again, with the rigid part of the move
  from the deposited model: where the map itself wants the model. And with a rigid-body fit per
  chain first (``rigid_body="chain"``, restraint kept).
* **Speed**: 5ME2 vs EMD-3488, coordinates only and coordinates + B, restraint set-up
  included, median of ``--repeats`` runs after a warm-up run (numba caches compiled).
  Also the map-term evaluation time for 1x, 4x and 16x the 5ME2 atoms (cost per atom).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from realdata import DATA, MONLIB, PAIRS, REPO  # noqa: E402


def _rmsd(a, b, sel=None):
    d = ((a - b) ** 2).sum(1)
    if sel is not None:
        d = d[sel]
    return float(np.sqrt(d.mean()))


def _rigid(a, b):
    """Rotation (degrees) and translation (Å) of the best superposition of ``a`` on ``b`` (Kabsch),
    and the RMSD (Å) left after it: how much of the difference between two models is one rigid move."""
    ca, cb = a.mean(0), b.mean(0)
    u, _, vt = np.linalg.svd((a - ca).T @ (b - cb))
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    moved = (a - ca) @ rot + cb
    angle = np.degrees(np.arccos(np.clip((np.trace(rot) - 1.0) / 2.0, -1.0, 1.0)))
    return {"rotation_deg": float(angle), "translation": float(np.linalg.norm(cb - ca)),
            "rmsd_after_superposition": _rmsd(moved, b)}


def _fit(st, dmap, res):
    from rerefine.refine.metrics import compute_metrics

    m = compute_metrics(st, dmap, res)
    return {k: m[k] for k in ("cc_mask", "cc_box", "q_score", "atom_inclusion")}


def _geo(g):
    return {k: g[k] for k in ("bond_rmsd", "angle_rmsd", "chirality_rmsd", "planarity_rmsd",
                              "nonbonded_overlaps")}


def _synthetic_map(st, dmap, res, noise=0.5, seed=1):
    """Model map of ``st`` at ``res`` on ``dmap``'s grid plus Gaussian-smoothed noise (``noise`` x its sd)."""
    from scipy import ndimage

    from rerefine.refine.modelmap import model_map

    data = np.asarray(model_map(st, dmap, res).data, float)
    rng = np.random.default_rng(seed)
    nz = ndimage.gaussian_filter(rng.normal(size=data.shape), 1.0)
    nz *= noise * data.std() / nz.std()
    return dmap.with_data((data + nz).astype(np.float32))


def _shake(st, x0, seed=42):
    from rerefine.refine.restraints import set_xyz

    shaken = st.clone()
    rng = np.random.default_rng(seed)
    xs = x0 + rng.normal(0.0, 0.5 / np.sqrt(3.0), x0.shape)
    set_xyz(shaken, xs)
    for c in shaken[0].all():
        c.atom.b_iso = 50.0
    return shaken, xs


def _matched(st, other):
    """Indices into ``st[0].all()`` and coordinates of the same atoms (chain, number, name, altloc) in ``other``."""
    pos = {(c.chain.name, c.residue.seqid.num, c.residue.name, c.atom.name, c.atom.altloc): c.atom.pos.tolist()
           for c in other[0].all()}
    idx, ref = [], []
    for i, c in enumerate(st[0].all()):
        k = (c.chain.name, c.residue.seqid.num, c.residue.name, c.atom.name, c.atom.altloc)
        if k in pos:
            idx.append(i)
            ref.append(pos[k])
    return np.array(idx, int), np.array(ref, float).reshape(-1, 3)


def _omega_outliers(st, xyz, limit=30.0):
    """Peptides whose omega is more than ``limit`` deg from both 180 and 0 where the deposited model is trans/cis."""
    from rerefine.refine.realspace import omega_angles, peptide_units, refinement_restraints, refinement_topology

    r = refinement_restraints(refinement_topology(st, MONLIB))
    units = peptide_units(st, r)
    om = omega_angles(xyz, units[:, [1, 2, 4, 6]])
    target = np.where(units[:, 7] == 1, 0.0, 180.0)
    return int(np.sum(np.abs((om - target + 180.0) % 360.0 - 180.0) > limit))


def run_pair(name, model, mp, res):
    from rerefine.refine import mapio, modelio
    from rerefine.refine.realspace import refine_model
    from rerefine.refine.restraints import atom_xyz

    st = modelio.read_model(DATA / "maps_models" / model)
    dmap = mapio.read_map(DATA / "maps_models" / mp)
    x0 = atom_xyz(st)
    cr = list(st[0].all())
    nonwater = np.array([not c.residue.is_water() for c in cr])
    backbone = np.array([c.atom.name in ("N", "CA", "C", "O") and not c.residue.is_water() for c in cr])

    # re-refinement of the deposited model
    fit0 = _fit(st, dmap, res)
    dep = refine_model(st, dmap, res, MONLIB, adp=True)
    x_dep = atom_xyz(dep.structure)
    rerefine_row = {
        "before": {**fit0, **_geo(dep.geometry_before)},
        "after": {**_fit(dep.structure, dmap, res), **_geo(dep.geometry_after)},
        "weight": dep.weight, "cycles": dep.cycles, "seconds": dep.seconds, "status": dep.status,
        "rmsd_moved": dep.rmsd_moved,
        "rmsd_moved_backbone": _rmsd(x_dep, x0, backbone),
    }
    rerefine_row["delta_cc_mask"] = rerefine_row["after"]["cc_mask"] - fit0["cc_mask"]
    if name == "emd_3488_5me2":
        other = modelio.read_model(DATA / "maps_models" / "emd_3488_5me2" / "5ni1_updated.cif")
        idx, ref = _matched(st, other)
        bbm = backbone[idx]
        rerefine_row["rmsd_to_5ni1"] = {"before": _rmsd(x0[idx], ref), "after": _rmsd(x_dep[idx], ref),
                                        "before_backbone": _rmsd(x0[idx], ref, bbm),
                                        "after_backbone": _rmsd(x_dep[idx], ref, bbm), "atoms": len(idx),
                                        # the authors' own later model: one rigid move of 5ME2?
                                        "5ni1_vs_5me2": _rigid(x0[idx], ref)}

    # the same without the reference-position restraint: where the map alone (within the geometry
    # targets) takes the deposited model, and how much of that is one rigid move
    free = refine_model(st, dmap, res, MONLIB, adp=True, reference_sigma=None, fit_reference_sigma=None)
    x_free = atom_xyz(free.structure)
    rerefine_row["free"] = {"cc_mask": _fit(free.structure, dmap, res)["cc_mask"],
                            "bond_rmsd": free.geometry_after["bond_rmsd"],
                            "angle_rmsd": free.geometry_after["angle_rmsd"],
                            "rmsd_moved": free.rmsd_moved, "rigid_part": _rigid(x0, x_free)}
    rigid = refine_model(st, dmap, res, MONLIB, adp=True, rigid_body="chain")
    x_rigid = atom_xyz(rigid.structure)
    rerefine_row["rigid_chain"] = {"cc_mask": _fit(rigid.structure, dmap, res)["cc_mask"],
                                   "angle_rmsd": rigid.geometry_after["angle_rmsd"],
                                   "rmsd_moved": rigid.rmsd_moved,
                                   "rotation_deg": [g["rotation_deg"] for g in rigid.rigid_body.summary()]}
    if "rmsd_to_5ni1" in rerefine_row:
        rerefine_row["rigid_chain"]["rmsd_to_5ni1"] = _rmsd(x_rigid[idx], ref)
        rerefine_row["free"]["rmsd_to_5ni1"] = _rmsd(x_free[idx], ref)
        rerefine_row["free"]["rmsd_to_5ni1_backbone"] = _rmsd(x_free[idx], ref, bbm)

    # recovery from a shaken model
    shaken, xs = _shake(st, x0)
    cc_shaken = _fit(shaken, dmap, res)["cc_mask"]
    rec = refine_model(shaken, dmap, res, MONLIB, adp=True)
    x1 = atom_xyz(rec.structure)
    cc_rec = _fit(rec.structure, dmap, res)["cc_mask"]
    recovery = {
        "rmsd_shaken": _rmsd(xs, x0),
        "rmsd_refined": _rmsd(x1, x0),
        "rmsd_refined_nonwater": _rmsd(x1, x0, nonwater),
        "rmsd_refined_backbone": _rmsd(x1, x0, backbone),
        "rmsd_to_refined_deposited": _rmsd(x1, x_dep),
        "rmsd_to_refined_deposited_nonwater": _rmsd(x1, x_dep, nonwater),
        "cc_mask_deposited": fit0["cc_mask"],
        "cc_mask_shaken": cc_shaken,
        "cc_mask_refined": cc_rec,
        "bond_rmsd": rec.geometry_after["bond_rmsd"],
        "angle_rmsd": rec.geometry_after["angle_rmsd"],
        "weight": rec.weight,
        "seconds": rec.seconds,
        "peptides_rebuilt": int(sum(h.get("peptides_rebuilt", 0) for h in rec.history)),
        "omega_outliers": _omega_outliers(st, x1),
    }
    recovery["halved"] = recovery["rmsd_refined"] <= 0.5 * recovery["rmsd_shaken"]
    free_rec = refine_model(shaken, dmap, res, MONLIB, adp=True, reference_sigma=None, fit_reference_sigma=None)
    x_fr = atom_xyz(free_rec.structure)
    rigid_rec = refine_model(shaken, dmap, res, MONLIB, adp=True, rigid_body="chain")
    recovery["rigid_chain"] = {"rmsd_refined": _rmsd(atom_xyz(rigid_rec.structure), x0),
                               "cc_mask_refined": _fit(rigid_rec.structure, dmap, res)["cc_mask"]}
    recovery["free"] = {"rmsd_refined": _rmsd(x_fr, x0), "rmsd_to_free_refined_deposited": _rmsd(x_fr, x_free),
                        "cc_mask_refined": _fit(free_rec.structure, dmap, res)["cc_mask"]}
    recovery["cc_within_0.02"] = cc_rec >= fit0["cc_mask"] - 0.02

    # the same against a synthetic map made from the deposited model
    syn = _synthetic_map(st, dmap, res)
    floor = refine_model(st, syn, res, MONLIB, adp=False)
    srec = refine_model(shaken, syn, res, MONLIB, adp=True)
    x2 = atom_xyz(srec.structure)
    recovery["synthetic"] = {
        "floor_rmsd_moved": _rmsd(atom_xyz(floor.structure), x0),
        "rmsd_refined": _rmsd(x2, x0),
        "rmsd_refined_backbone": _rmsd(x2, x0, backbone),
        "cc_mask_deposited": _fit(st, syn, res)["cc_mask"],
        "cc_mask_refined": _fit(srec.structure, syn, res)["cc_mask"],
        "bond_rmsd": srec.geometry_after["bond_rmsd"],
        "angle_rmsd": srec.geometry_after["angle_rmsd"],
    }
    return rerefine_row, recovery


def speed(repeats: int):
    from rerefine.refine import mapio, modelio
    from rerefine.refine.maptarget import MapTarget, scattering_weights
    from rerefine.refine.realspace import refine_model
    from rerefine.refine.threads import thread_limits

    model, mp, res = PAIRS["emd_3488_5me2"]
    st = modelio.read_model(DATA / "maps_models" / model)
    dmap = mapio.read_map(DATA / "maps_models" / mp)
    refine_model(st, dmap, res, MONLIB, adp=True)  # warm-up (numba cache, imports)
    out = {}
    for label, adp in (("coordinates", False), ("coordinates_and_b", True)):
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            refine_model(st, dmap, res, MONLIB, adp=adp)
            times.append(time.perf_counter() - t)
        out[label] = {"median_s": statistics.median(times), "runs_s": times}
    # map term cost against the number of atoms
    mt = MapTarget.from_map(dmap, res)
    xyz = modelio.atom_positions(st)
    w = scattering_weights(st, res)
    rng = np.random.default_rng(0)
    scaling = []
    for k in (1, 4, 16):
        xk = np.concatenate([xyz + rng.normal(0, 0.3, xyz.shape) for _ in range(k)])
        wk = np.tile(w, k)
        with thread_limits(len(xk)):
            mt.energy_gradient(xk, wk)
            t = time.perf_counter()
            for _ in range(20):
                mt.energy_gradient(xk, wk)
        dt = (time.perf_counter() - t) / 20
        scaling.append({"atoms": len(xk), "ms": 1e3 * dt, "ns_per_atom": 1e9 * dt / len(xk)})
    out["map_term_scaling"] = scaling
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="5ME2 only")
    args = ap.parse_args(argv)
    result = {"pairs": {}, "recovery": {}}
    names = ["emd_3488_5me2"] if args.quick else list(PAIRS)
    for name in names:
        t = time.perf_counter()
        row, rec = run_pair(name, *PAIRS[name])
        result["pairs"][name] = row
        result["recovery"][name] = rec
        print(f"{name}: {time.perf_counter() - t:.1f} s", file=sys.stderr)
    result["speed_5me2"] = speed(args.repeats)
    result["machine"] = {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}

    out = REPO / "benchmarks" / "results" / "refine.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")

    print(f"{'pair':<30} {'CCmask':>15} {'CCbox':>15} {'Q':>13} {'incl':>13} {'bond':>15} {'angle':>11} "
          f"{'clash':>9} {'w':>6} {'s':>5}")
    for name, r in result["pairs"].items():
        b, a = r["before"], r["after"]
        print(f"{name:<30} {b['cc_mask']:.3f}->{a['cc_mask']:.3f}   {b['cc_box']:.3f}->{a['cc_box']:.3f}   "
              f"{b['q_score']:.3f}->{a['q_score']:.3f} {b['atom_inclusion']:.3f}->{a['atom_inclusion']:.3f} "
              f"{b['bond_rmsd']:.4f}->{a['bond_rmsd']:.4f} {b['angle_rmsd']:.2f}->{a['angle_rmsd']:.2f} "
              f"{b['nonbonded_overlaps']:>4}->{a['nonbonded_overlaps']:<4} {r['weight']:6.2f} {r['seconds']:5.1f}")
    print("recovery (shaken 0.5 Å RMS, B=50):")
    for name, r in result["recovery"].items():
        print(f"  {name:<28} RMSD {r['rmsd_shaken']:.2f} -> {r['rmsd_refined']:.2f} Å (non-water "
              f"{r['rmsd_refined_nonwater']:.2f}, backbone {r['rmsd_refined_backbone']:.2f}; to refined deposited "
              f"{r['rmsd_to_refined_deposited']:.2f}), CCmask {r['cc_mask_shaken']:.3f} -> {r['cc_mask_refined']:.3f} "
              f"(deposited {r['cc_mask_deposited']:.3f}), bond {r['bond_rmsd']:.4f} angle {r['angle_rmsd']:.2f}, "
              f"peptides rebuilt {r['peptides_rebuilt']}, omega outliers {r['omega_outliers']}")
        y = r["synthetic"]
        print(f"    synthetic map: RMSD 0.50 -> {y['rmsd_refined']:.2f} (backbone {y['rmsd_refined_backbone']:.2f}; "
              f"deposited itself moves {y['floor_rmsd_moved']:.2f}), CCmask {y['cc_mask_refined']:.3f} "
              f"(deposited {y['cc_mask_deposited']:.3f}), bond {y['bond_rmsd']:.4f} angle {y['angle_rmsd']:.2f}")
    for name, r in result["pairs"].items():
        print(f"  re-refined {name}: moved {r['rmsd_moved']:.2f} Å (backbone {r['rmsd_moved_backbone']:.2f})")
        if "rmsd_to_5ni1" in r:
            q = r["rmsd_to_5ni1"]
            print(f"    RMSD to 5NI1 {q['before']:.3f} -> {q['after']:.3f} Å (backbone {q['before_backbone']:.3f} -> "
                  f"{q['after_backbone']:.3f}); without reference restraint {r['free']['rmsd_to_5ni1']:.3f} "
                  f"(backbone {r['free']['rmsd_to_5ni1_backbone']:.3f})")
            g = q["5ni1_vs_5me2"]
            print(f"    5NI1 vs 5ME2: rigid rotation {g['rotation_deg']:.2f} deg, translation {g['translation']:.2f} Å, "
                  f"RMSD after superposition {g['rmsd_after_superposition']:.3f}")
        f, g = r["free"], r["free"]["rigid_part"]
        print(f"    without reference restraint: CCmask {f['cc_mask']:.3f}, moved {f['rmsd_moved']:.2f} Å (rigid "
              f"rotation {g['rotation_deg']:.2f} deg, {g['rmsd_after_superposition']:.2f} Å after superposition), "
              f"bond {f['bond_rmsd']:.4f} angle {f['angle_rmsd']:.2f}; shaken start ends "
              f"{result['recovery'][name]['free']['rmsd_refined']:.2f} Å from deposited, "
              f"{result['recovery'][name]['free']['rmsd_to_free_refined_deposited']:.2f} Å from the free re-refinement")
        g, q = r["rigid_chain"], result["recovery"][name]["rigid_chain"]
        print(f"    rigid-body fit per chain first: CCmask {g['cc_mask']:.3f}, moved {g['rmsd_moved']:.2f} Å (turns "
              + ", ".join(f"{a:.2f}" for a in g["rotation_deg"]) + f" deg), angle {g['angle_rmsd']:.2f}; shaken start "
              f"ends {q['rmsd_refined']:.2f} Å from deposited")
    s = result["speed_5me2"]
    print(f"speed 5ME2: coordinates {s['coordinates']['median_s']:.2f} s, coordinates+B "
          f"{s['coordinates_and_b']['median_s']:.2f} s (medians of {args.repeats})")
    for row in s["map_term_scaling"]:
        print(f"  map term {row['atoms']:>6} atoms: {row['ms']:.2f} ms ({row['ns_per_atom']:.0f} ns/atom)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
