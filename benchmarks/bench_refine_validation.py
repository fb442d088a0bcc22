"""Benchmark of refinement against independent validation (issue 16): does re-refinement leave the
deposited models better by every measure?

Run: ``.venv/bin/python benchmarks/bench_refine_validation.py [--pairs 5me2,7cec,3ajo,5me2@4.5]
[--variants] [--q-split] [--ss] [--tail-off] [--shaken] [--no-previous] [--no-servalcat] [--repeats N]
[--jitter A] [--out NAME.json]``;
writes ``benchmarks/results/refine_validation.json`` (or ``--out``). ``short@D``: the pair's map
low-pass filtered to D Å and refined at D Å (a synthetic lower-resolution pair).

For each shared map/model pair, in one invocation (so timings compare under the same load):

* ``deposited``: the deposited model;
* ``previous``: refinement (coordinates + B) with this issue's additions switched off
  (no Ramachandran, rotamer or C-beta terms, no hydrogens, no B priors) - the reference run;
* ``default``: refinement with today's defaults;
* with ``--ss`` also ``ss`` (``secondary_structure=True``);
* with ``--tail-off`` also ``tail_off``: the default without the upper-tail B prior
  (``adp_tail_sigma=0``), i.e. the B stage before that prior;
* with ``--shaken`` also ``shaken_<run>``: the deposited model shaken by 0.5 Å RMS and refined with
  each run's settings, RMS distance from the deposited model (issue 16: within 0.25 Å);
* with ``--variants`` also ``rigid_chain`` (``rigid_body="chain"``) and ``free``
  (no reference-position restraint);
* with ``--q-split`` also ``coords_only`` (no B, no density-fit stage), ``no_fit_stage``,
  ``no_rama`` and ``no_h`` (:data:`Q_VARIANTS`), and for every run ``q_split``
  (:func:`q_split`): where the Q-score change against the deposited model comes from;
* ``servalcat`` (5ME2 and 7CEC, unless ``--no-servalcat``): servalcat's ``refine_spa_norefmac``
  with its defaults (Yamashita et al. 2021, Acta Cryst. D77:1282; run as in
  ``bench_refine_anchors.run_servalcat``: its own venv, ``RR_SERVALCAT``, not a project
  dependency), its refined model measured by the same code as ours. Its wall seconds include its
  Python start-up and file input/output; ours are ``refine_model`` alone (input read once).

Per model: MolProbity-class validation (:func:`rerefine.refine.validation.validate`: Ramachandran
favoured % and outliers, rotamer outliers, C-beta outliers, all-atom clashscore with hydrogens,
cis/twisted peptides; null when that module is not installed), CC_mask, CC_mask of the refined
coordinates with the deposited B (the coordinates' own gain), Q-score, bond/angle RMSD, the B
distribution (:func:`rerefine.refine.adp.distribution`: percentiles, atoms at either bound),
Pearson r of refined and deposited B over all atoms and over the quarter of atoms in the weakest
density (``b_corr_deposited_weak``; :func:`rerefine.refine.adp.deposited_correlation`), B similarity
along bonds and within residues (``b_bonded_rel_rms``, ``b_residue_rel_rms``), and seconds. ``gates`` checks each refined model against
the issue's figures relative to the deposited model (Ramachandran outliers not more, favoured not
lower by more than 0.5 point, rotamer outliers not more, clashscore not higher, no new C-beta
outliers, no new cis/twisted peptides, no atom at a B bound, CC_mask with deposited B +0.01 on
5ME2 and 7CEC, Q-score not lower). ``speed_ratio``: default / previous seconds.
``vs_servalcat``: for each of our runs, whether it is better than or equal to servalcat's model on
every MolProbity figure (Ramachandran favoured % and outliers, rotamer outliers, C-beta
outliers, clashscore) and on CC_mask with the deposited B, and ``speed_ratio`` = servalcat
seconds / ours (the issue asks >= 2 for the default), ``cpu_ratio`` the same with CPU seconds.
``--repeats N``: each refinement and servalcat run N times; seconds are medians, each run's figures
are kept under ``repeats``; with ``--jitter 0.0005`` the runs after the first start from copies of the
model moved by less than the file's precision, so their spread is the figures' noise (the refinement
is deterministic: plain repeats give the same figures). ``load_start``/``load_after``: the load
average (1, 5, 15 min) around each pair, since the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from realdata import DATA, MONLIB, PAIRS, REPO  # noqa: E402

SHORT = {"5me2": "emd_3488_5me2", "7cec": "emd_30342_zone_7cec_chainA", "3ajo": "emd_20026_box_3ajo_refined"}
#: refine_model keywords of the reference run: this issue's terms off
PREVIOUS = {"rama_weight": 0.0, "rotamer_sigma_scale": 0.0, "cbeta": False, "hydrogens": False, "adp_prior_sigma": 0.0,
            "adp_tail_sigma": 0.0}
#: ``--ss``: the secondary-structure restraints (:mod:`rerefine.refine.secondary_structure`) on
SS_VARIANT = {"ss": {"secondary_structure": True}}
#: pairs run through servalcat too
SERVALCAT_PAIRS = ("emd_3488_5me2", "emd_30342_zone_7cec_chainA")
#: ``--tail-off``: the default without the upper-tail B prior (:func:`rerefine.refine.adp.tail_prior`)
TAIL_OFF_VARIANT = {"tail_off": {"adp_tail_sigma": 0.0}}
VARIANTS = {"rigid_chain": {"rigid_body": "chain"}, "free": {"reference_sigma": None, "fit_reference_sigma": None}}
#: ``--q-split``: which stage or term of refinement moves atoms off their Q-score peaks
Q_VARIANTS = {"coords_only": {"adp": False}, "no_fit_stage": {"fit_cycles": 0}, "no_rama": {"rama_weight": 0.0},
              "no_h": {"hydrogens": False}}
#: Å: ``q_split`` separates moves shorter and longer than this
Q_SPLIT_MOVE = 0.3


def q_split(st, refined, dmap, res) -> dict:
    """Q-score (MapQ definition, :func:`rerefine.refine.qscore.atom_q_scores`, sigma 0.6 Å) of the
    deposited non-H atoms and of the refined ones, and where the change comes from: mean change
    over backbone (N, CA, C, O) and side-chain atoms; model Q with only the backbone, only the
    side chains, or only moves shorter than :data:`Q_SPLIT_MOVE` Å taken from the refined model
    (the rest deposited); the change summed over short and long moves, and over atoms below and
    above the median value of the map filtered to the resolution (weak and strong density), each
    divided by the atom count (so the parts add up to the mean change); the mean filtered-map value
    (sd units) at the deposited and the refined atoms."""
    from rerefine.refine.maptarget import MapTarget
    from rerefine.refine.metrics import q_reference
    from rerefine.refine.qscore import atom_q_scores
    from rerefine.refine.restraints import atom_xyz

    heavy = np.array([not c.atom.is_hydrogen() for c in st[0].all()])
    bb = np.array([c.atom.name in ("N", "CA", "C", "O") for c in st[0].all()])[heavy]
    ref = q_reference(dmap.data)
    x0, x1 = atom_xyz(st)[heavy], atom_xyz(refined)[heavy]
    q0, q1 = atom_q_scores(dmap, x0, ref=ref), atom_q_scores(dmap, x1, ref=ref)
    tgt = MapTarget.from_map(dmap, res)
    v0 = tgt.values(x0)
    dq, n = q1 - q0, len(q0)
    big, weak = np.sqrt(((x1 - x0) ** 2).sum(1)) > Q_SPLIT_MOVE, v0 < np.median(v0)

    def mixed(take):
        x = x0.copy()
        x[take] = x1[take]
        return float(np.nanmean(atom_q_scores(dmap, x, ref=ref)))

    return {"q_deposited": float(np.nanmean(q0)), "q_refined": float(np.nanmean(q1)),
            "dq_backbone": float(np.nanmean(dq[bb])), "dq_side_chain": float(np.nanmean(dq[~bb])),
            "q_only_backbone_moved": mixed(bb), "q_only_side_chains_moved": mixed(~bb),
            "q_only_short_moves": mixed(~big), "fraction_long_moves": float(big.mean()),
            "dq_long_moves": float(np.nansum(dq[big]) / n), "dq_short_moves": float(np.nansum(dq[~big]) / n),
            "dq_weak_density": float(np.nansum(dq[weak]) / n), "dq_strong_density": float(np.nansum(dq[~weak]) / n),
            "map_value_deposited": float(np.mean(v0)), "map_value_refined": float(np.mean(tgt.values(x1)))}


def _validation(st):
    try:
        from rerefine.refine.validation import validate
    except ImportError:
        return None
    rep = validate(st, MONLIB, top8000_dir=DATA / "validation" / "top8000")
    s = {k: v for k, v in rep.summary.items() if isinstance(v, (int, float, bool)) or v is None}
    s["rama_outlier_residues"] = [f"{x['chain']}:{x['seq']}:{x['resname']}" for x in rep.per_residue
                                  if x.get("rama") == "outlier"]
    s["rotamer_outlier_residues"] = [f"{x['chain']}:{x['seq']}:{x['resname']}" for x in rep.per_residue
                                     if x.get("rotamer") == "outlier"]
    return s


def atom_key(c):
    """Identity of an atom across copies of a model: chain, residue number, insertion code, name, altloc."""
    return (c.chain.name, c.residue.seqid.num, c.residue.seqid.icode, c.atom.name, c.atom.altloc)


def model_figures(st, dmap, res, b_dep: dict):
    """Figures of model ``st``; ``b_dep``: deposited B by atom key (atoms missing there keep theirs)."""
    from rerefine.refine.adp import deposited_correlation, distribution
    from rerefine.refine.interpolate import values_at
    from rerefine.refine.metrics import compute_metrics

    m = compute_metrics(st, dmap, res)
    b = np.array([c.atom.b_iso for c in st[0].all()])
    bd = np.array([b_dep.get(atom_key(c), c.atom.b_iso) for c in st[0].all()])
    out = {"cc_mask": m["cc_mask"], "q_score": m["q_score"], "b": distribution(b),
           "b_corr_deposited": float(np.corrcoef(b, bd)[0, 1]) if np.std(b) > 0 and np.std(bd) > 0 else None,
           "atoms": len(b), "atoms_without_deposited_b": int(sum(atom_key(c) not in b_dep for c in st[0].all()))}
    xyz = np.array([c.atom.pos.tolist() for c in st[0].all()]).reshape(-1, 3)
    r = deposited_correlation(b, bd, values_at(dmap, xyz))
    out["b_corr_deposited_weak"], out["b_weak_atoms"] = r["weak"], r["weak_atoms"]
    out.update(_b_similarity(st, b, xyz))
    dep_b = st.clone()
    for c, bv in zip(dep_b[0].all(), bd):
        c.atom.b_iso = float(bv)
    out["cc_mask_deposited_b"] = compute_metrics(dep_b, dmap, res)["cc_mask"]
    out["validation"] = _validation(st)
    return out


def _b_similarity(st, b, xyz) -> dict:
    """How similar B are along bonds and within residues (non-H atoms): RMS of
    ``|B_i - B_j| / mean(B_i, B_j)`` over atom pairs closer than 2.1 Å (:func:`rerefine.refine.adp.bonded_pairs`)
    and RMS of ``(B_i - <B>_res) / <B>_res`` over atoms, ``<B>_res`` the mean of the atom's residue."""
    from rerefine.refine.adp import bonded_pairs

    heavy = np.array([not c.atom.is_hydrogen() for c in st[0].all()])
    keys = [f"{c.chain.name}/{c.residue.seqid.num}/{c.residue.seqid.icode}" for c in st[0].all()]
    res_id = np.unique(keys, return_inverse=True)[1].ravel() if keys else np.zeros(0, int)
    bh, rh = b[heavy], res_id[heavy]
    pr = bonded_pairs(xyz[heavy])
    rel = np.abs(bh[pr[:, 0]] - bh[pr[:, 1]]) / (0.5 * (bh[pr[:, 0]] + bh[pr[:, 1]])) if len(pr) else np.zeros(0)
    cnt = np.bincount(rh).astype(float)
    mean = np.bincount(rh, weights=bh) / np.maximum(cnt, 1)
    return {"b_bonded_rel_rms": float(np.sqrt(np.mean(rel ** 2))) if len(rel) else None,
            "b_residue_rel_rms": float(np.sqrt(np.mean(((bh - mean[rh]) / mean[rh]) ** 2))) if len(bh) else None}


def _gates(dep: dict, new: dict, pair: str) -> dict:
    g = {}
    v0, v1 = dep.get("validation"), new.get("validation")
    if v0 and v1:
        g["rama_outliers"] = v1["rama_outliers"] <= v0["rama_outliers"]
        g["rama_favored"] = v1["rama_favored_pct"] >= v0["rama_favored_pct"] - 0.5
        g["rotamer_outliers"] = v1["rotamer_outliers"] <= v0["rotamer_outliers"]
        g["clashscore"] = v1["clashscore"] <= v0["clashscore"]
        g["cbeta"] = v1["cbeta_outliers"] <= v0["cbeta_outliers"]
        g["cis_twisted"] = (v1["cis_peptides"] <= v0["cis_peptides"]) and (v1["twisted_peptides"] <= v0["twisted_peptides"])
    g["b_bounds"] = new["b"]["at_min"] == 0 and new["b"]["at_max"] == 0
    if pair in ("emd_3488_5me2", "emd_30342_zone_7cec_chainA"):
        g["cc_deposited_b_plus_0.01"] = new["cc_mask_deposited_b"] >= dep["cc_mask"] + 0.01
    g["q_score"] = new["q_score"] >= dep["q_score"]
    return g


#: MolProbity figures compared with servalcat's model: (key, True when higher is better)
SERVALCAT_FIGURES = (("rama_favored_pct", True), ("rama_outliers", False), ("rotamer_outliers", False),
                     ("cbeta_outliers", False), ("clashscore", False))


def _vs_servalcat(ours: dict, sc: dict) -> dict:
    """Ours better than or equal to servalcat's model on each MolProbity figure and CC_mask-deposited-B."""
    g = {}
    v0, v1 = ours.get("validation"), sc.get("validation")
    if v0 and v1:
        for k, higher in SERVALCAT_FIGURES:
            g[k] = v0[k] >= v1[k] if higher else v0[k] <= v1[k]
    g["cc_mask_deposited_b"] = ours["cc_mask_deposited_b"] >= sc["cc_mask_deposited_b"]
    g["speed_ratio"] = sc["seconds"] / ours["seconds"]
    g["speed_2x"] = g["speed_ratio"] >= 2.0
    # CPU seconds too: the machine is shared, wall times swing with the load (ours may use 2 threads)
    g["cpu_ratio"] = sc["cpu_seconds"] / ours["cpu_seconds"] if ours.get("cpu_seconds") else None
    return g


def _servalcat_row(name: str, dmap, res, b_dep, dep: dict, repeats: int = 1) -> dict:
    from bench_refine_anchors import run_servalcat

    model, mp, _ = PAIRS[name]
    sc = run_servalcat(repeats, DATA / "maps_models" / model, DATA / "maps_models" / mp, res)
    if "error" in sc:
        return {"error": sc["error"]}
    refined = sc.pop("model")
    refined.remove_hydrogens()  # like ours: the inputs have none, any written by servalcat are its riding ones
    row = model_figures(refined, dmap, res, b_dep)
    row.update({"seconds": sc["wall_s"], "cpu_seconds": sc["cpu_s"], "wall_runs_s": sc["wall_runs_s"],
                "version": sc["version"],
                "command": sc["command"], "own": sc["own"]})
    row["gates"] = _gates(dep, row, name)
    return row


def _shaken_recovery(st, dmap, res, kw: dict) -> dict:
    """The deposited model shaken (0.5 Å RMS Gaussian, seed 42, every B 50 Å², as bench_refine) and
    refined with ``kw``: RMS distance (Å) of the result from the deposited model, all atoms and backbone."""
    from rerefine.refine.realspace import refine_model
    from rerefine.refine.restraints import atom_xyz, set_xyz

    x0 = atom_xyz(st)
    rng = np.random.default_rng(42)
    xs = x0 + rng.normal(0.0, 0.5 / np.sqrt(3.0), x0.shape)
    shaken = st.clone()
    set_xyz(shaken, xs)
    for c in shaken[0].all():
        c.atom.b_iso = 50.0
    t = time.perf_counter()
    r = refine_model(shaken, dmap, res, MONLIB, adp=True, **kw)
    sec = time.perf_counter() - t
    x1 = atom_xyz(r.structure)
    bb = np.array([c.atom.name in ("N", "CA", "C", "O") for c in st[0].all()])
    rms = lambda a, m=slice(None): float(np.sqrt(np.mean(np.sum((a[m] - x0[m]) ** 2, axis=1))))  # noqa: E731
    return {"rmsd_shaken": rms(xs), "rmsd_refined": rms(x1), "rmsd_refined_backbone": rms(x1, bb),
            "seconds": sec, "status": r.status, "angle_rmsd": r.geometry_after.get("angle_rmsd")}


def _pair_input(spec: str):
    """``(name, model, map, resolution)`` of a ``--pairs`` entry: a short name, or ``short@D`` for its
    map low-pass filtered to D Å (:func:`rerefine.refine.maptarget.lowpass_map`) and refined at D Å
    (a synthetic lower-resolution pair, e.g. ``5me2@4.5``)."""
    from rerefine.refine import mapio, modelio
    from rerefine.refine.maptarget import lowpass_map

    short, _, d = spec.partition("@")
    name = SHORT[short]
    model, mp, res = PAIRS[name]
    st = modelio.read_model(DATA / "maps_models" / model)
    dmap = mapio.read_map(DATA / "maps_models" / mp)
    if d:
        res = float(d)
        dmap = dmap.with_data(lowpass_map(dmap, res).astype(np.float32))
    return name, st, dmap, res


def _repeat_figures(row: dict) -> dict:
    """The figures of one run that repeated runs are compared on (their spread is the noise)."""
    v = row.get("validation") or {}
    return {"seconds": row["seconds"], "cpu_seconds": row["cpu_seconds"], "cc_mask": row["cc_mask"],
            "cc_mask_deposited_b": row["cc_mask_deposited_b"], "q_score": row["q_score"],
            **{k: v.get(k) for k in ("rama_favored_pct", "rama_outliers", "rotamer_outliers", "cbeta_outliers",
                                     "clashscore")}}


def _jittered(st, jitter: float, seed: int):
    """``st`` with every coordinate moved by a uniform draw in ±``jitter`` Å (seeded): with ``jitter``
    0.0005 Å, half the last digit a PDB/mmCIF file keeps, a copy of the model no file could tell apart;
    the refined figures' spread over such copies is the noise a change of the code must stay within."""
    from rerefine.refine.restraints import atom_xyz, set_xyz

    out = st.clone()
    x = atom_xyz(out)
    set_xyz(out, x + np.random.default_rng(seed).uniform(-jitter, jitter, x.shape))
    return out


def run_pair(spec: str, variants: bool, servalcat: bool = True, extra: dict | None = None,
             previous: bool = True, shaken: bool = False, qsplit: bool = False, repeats: int = 1,
             jitter: float = 0.0) -> dict:
    from rerefine.refine.realspace import refine_model

    name, st, dmap, res = _pair_input(spec)
    servalcat = servalcat and "@" not in spec
    b_dep = {atom_key(c): c.atom.b_iso for c in st[0].all()}
    out = {"deposited": model_figures(st, dmap, res, b_dep), "resolution": res}
    runs = {"previous": PREVIOUS, "default": {}} if previous else {"default": {}}
    if variants:
        runs.update(VARIANTS)
    if qsplit:
        runs.update(Q_VARIANTS)
    runs.update(extra or {})
    for tag, kw in runs.items():
        reps = []
        for rep in range(repeats):
            st_in = _jittered(st, jitter, rep) if rep and jitter else st
            t, c = time.perf_counter(), time.process_time()
            r = refine_model(st_in, dmap, res, MONLIB, **{"adp": True, **kw})
            sec, cpu = time.perf_counter() - t, time.process_time() - c
            row = model_figures(r.structure, dmap, res, b_dep)
            row.update({"seconds": sec, "cpu_seconds": cpu})
            reps.append(_repeat_figures(row))
        # timings: medians over the repeats; the other figures are the last run's, each run's in "repeats"
        row.update({"seconds": float(np.median([x["seconds"] for x in reps])),
                    "cpu_seconds": float(np.median([x["cpu_seconds"] for x in reps])), "repeats": reps,
                    "status": r.status, "bond_rmsd": r.geometry_after.get("bond_rmsd"),
                    "angle_rmsd": r.geometry_after.get("angle_rmsd"), "rmsd_moved": r.rmsd_moved})
        if r.rigid_body is not None:
            row["rigid_body"] = [{k: g[k] for k in ("group", "rotation_deg", "shift", "status")}
                                 for g in r.rigid_body.summary()]
        row["gates"] = _gates(out["deposited"], row, name)
        if qsplit:
            row["q_split"] = q_split(st, r.structure, dmap, res)
        out[tag] = row
        print(name, tag, json.dumps({k: v for k, v in row.items() if k != "validation"}, default=str), flush=True)
        if row["validation"]:
            print("   validation", json.dumps(row["validation"]), flush=True)
    if previous:
        out["speed_ratio"] = out["default"]["seconds"] / out["previous"]["seconds"]
    if shaken:
        for tag, kw in runs.items():
            if tag != "previous":
                out[f"shaken_{tag}"] = _shaken_recovery(st, dmap, res, kw)
                print(name, f"shaken_{tag}", json.dumps(out[f"shaken_{tag}"]), flush=True)
    if servalcat and name in SERVALCAT_PAIRS:
        sc = out["servalcat"] = _servalcat_row(name, dmap, res, b_dep, out["deposited"], repeats)
        print(name, "servalcat", json.dumps({k: v for k, v in sc.items() if k != "validation"}, default=str),
              flush=True)
        if sc.get("validation"):
            print("   validation", json.dumps(sc["validation"]), flush=True)
        if "error" not in sc:
            out["vs_servalcat"] = {tag: _vs_servalcat(out[tag], sc) for tag in runs}
            print(name, "vs_servalcat", json.dumps(out["vs_servalcat"]), flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="5me2,7cec,3ajo")
    ap.add_argument("--variants", action="store_true", help="also rigid-body-per-chain and --free runs")
    ap.add_argument("--no-servalcat", action="store_true", help="skip the servalcat run of 5ME2 and 7CEC")
    ap.add_argument("--out", default="refine_validation.json", help="file name under benchmarks/results")
    ap.add_argument("--ss", action="store_true", help="also a run with secondary-structure restraints")
    ap.add_argument("--tail-off", action="store_true", help="also the default without the B tail prior")
    ap.add_argument("--shaken", action="store_true", help="shaken-model recovery of every run but previous")
    ap.add_argument("--no-previous", action="store_true", help="skip the reference run without issue-16 terms")
    ap.add_argument("--q-split", action="store_true", help="runs without single stages/terms and where Q changes")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs of each refinement and of servalcat; seconds are their medians")
    ap.add_argument("--jitter", type=float, default=0.0,
                    help="Å: repeats after the first refine the model with coordinates moved by up to this much "
                         "(0.0005: below the files' precision), so the repeats' spread is the figures' noise")
    args = ap.parse_args(argv)
    result = {"load_start": os.getloadavg()}
    out = REPO / "benchmarks" / "results" / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    for spec in args.pairs.split(","):
        result[spec] = run_pair(spec, args.variants, servalcat=not args.no_servalcat,
                                extra={**(SS_VARIANT if args.ss else {}), **(TAIL_OFF_VARIANT if args.tail_off else {})},
                                previous=not args.no_previous, shaken=args.shaken, qsplit=args.q_split,
                                repeats=args.repeats, jitter=args.jitter)
        result[spec]["load_after"] = os.getloadavg()
        out.write_text(json.dumps(result, indent=1, default=str))  # after every pair: long runs
        print(f"wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
