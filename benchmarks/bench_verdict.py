"""Benchmark of the gated verdict (issue 15): the three shared pairs through the pipeline's stages.

Run: ``.venv/bin/python benchmarks/bench_verdict.py [--seeds 1 2]``; writes
``benchmarks/results/verdict.json``.

* **Verdicts**: each pair (5ME2/EMD-3488, 7CEC/EMD-30342 zone, 3AJO-derived/EMD-20026 box at the
  assumed 1.75 Å) goes through the nightly's stages without Prefect (box, sharpen, refine, metrics
  before/after, CCmask of the refined coordinates with the input B, validation of both models) and
  :func:`rerefine.reports.verdict.decide`. Reported: every gate with its figures, and how much of
  the full CCmask gain the coordinates keep with the input B.
* **CCmask agreement with cctbx** (``reference/cctbx_reference.json``): our CCmask of each deposited
  model minus cctbx's, the basis of the fit margin 0.005.
* **Half-map cross-validation on synthetic half-maps** (no real half-maps are within reach): the
  EMD-30342 zone map plus independent Gaussian noise of the map's SD per half, one pair of halves
  per seed; the deposited model and the model refined against half 1 measured against half 1
  (work) and half 2 (free). Reported per seed: FSC averages and CCmask, the work−free gap before and
  after, and the refinement's seconds (the cross-validation's cost per entry).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from realdata import DATA, MONLIB, PAIRS, REPO  # noqa: E402

from rerefine.flows import pipeline  # noqa: E402
from rerefine.refine import mapio, modelio  # noqa: E402
from rerefine.reports.verdict import decide  # noqa: E402

SCALARS = ("cc_mask", "cc_mask_input_b", "q_score", "bond_rmsd", "angle_rmsd", "nonbonded_overlaps",
           "rama_favored_pct", "rama_outliers", "rotamer_outliers_pct", "cbeta_outliers", "clashscore",
           "cis_nonpro_peptides", "twisted_nonpro_peptides", "bond_rmsd_heavy", "angle_rmsd_heavy")


def one_pair(name: str) -> dict:
    model, mp, res = PAIRS[name]
    mm = DATA / "maps_models"
    job = pipeline.EntryJob(pdb_id=name, emdb_id=None, model_path=mm / model, map_path=mm / mp, resolution=res)
    params = pipeline.PipelineParams()
    t0 = time.perf_counter()
    st, dmap, res = pipeline.stage_load(job)
    box = pipeline.stage_box(st, dmap, params.box_padding)
    sharp = pipeline.stage_sharpen(box, res, [])
    ref = pipeline.stage_refine(st, sharp.map, box, res, MONLIB, params)
    t_ref = time.perf_counter() - t0
    before = pipeline.stage_metrics(st, box, res, job, params, ref.geometry_before)
    after = pipeline.stage_metrics(ref.structure, box, res, job, params, ref.geometry_after)
    warnings: list = []
    pipeline.add_fit_figures(before, after, cc_mask_input_b=pipeline.stage_input_b_fit(ref.structure, st, box, res),
                             crossval=None, warnings=warnings)
    top = DATA / "validation" / "top8000"
    before.update(pipeline.stage_validation(st, MONLIB, top))
    after.update(pipeline.stage_validation(ref.structure, MONLIB, top))
    v = decide(before, after)
    d_full = after["cc_mask"] - before["cc_mask"]
    d_coord = after["cc_mask_input_b"] - before["cc_mask"]
    return {"verdict": v.verdict, "gate": v.gate, "reasons": v.reasons,
            "gates": [{"name": g.name, "status": g.status, "detail": g.detail} for g in v.gates],
            "before": {k: before.get(k) for k in SCALARS}, "after": {k: after.get(k) for k in SCALARS},
            "d_cc_mask_full": d_full, "d_cc_mask_input_b": d_coord,
            "coordinates_share_of_cc_gain": d_coord / d_full if d_full else None,
            "contour_source": before.get("contour_source"), "warnings": warnings,
            "refine_seconds": round(t_ref, 1)}


def cctbx_agreement() -> dict:
    from rerefine.refine.crossval import cc_mask

    ref = json.loads((DATA / "reference" / "cctbx_reference.json").read_text())
    out = {}
    for name, (model, mp, res) in PAIRS.items():
        st = modelio.read_model(DATA / "maps_models" / model)
        ours = cc_mask(st, mapio.read_map(DATA / "maps_models" / mp), res)
        out[name] = {"ours": ours, "cctbx": ref[name]["cc_mask"], "diff": ours - ref[name]["cc_mask"]}
    out["max_abs_diff"] = max(abs(v["diff"]) for v in out.values())
    return out


def synthetic_crossval(seeds) -> dict:
    model, mp, res = PAIRS["emd_30342_zone_7cec_chainA"]
    st = modelio.read_model(DATA / "maps_models" / model)
    m = mapio.read_map(DATA / "maps_models" / mp)
    sd = float(m.data.std())
    out = {}
    for seed in seeds:
        rng = np.random.default_rng(seed)
        h1 = m.with_data((m.data + rng.normal(0.0, sd, m.shape)).astype(np.float32))
        h2 = m.with_data((m.data + rng.normal(0.0, sd, m.shape)).astype(np.float32))
        t0 = time.perf_counter()
        b, a, info = pipeline.stage_crossval(st, [h1, h2], res, MONLIB, pipeline.PipelineParams())
        out[str(seed)] = {"deposited": b, "refined_on_half1": a, "status": info["status"],
                          "gap_before": b["fsc_avg_work"] - b["fsc_avg_free"],
                          "gap_after": a["fsc_avg_work"] - a["fsc_avg_free"],
                          "seconds": round(time.perf_counter() - t0, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[1, 2])
    args = ap.parse_args()
    res = {"pairs": {}, "cctbx_cc_mask": cctbx_agreement()}
    for name in PAIRS:
        res["pairs"][name] = one_pair(name)
        p = res["pairs"][name]
        print(f"{name}: {p['verdict']} ({p['gate']}): {'; '.join(p['reasons'])}")
        print(f"    CCmask {p['before']['cc_mask']:.3f} -> {p['after']['cc_mask']:.3f}, with input B "
              f"{p['after']['cc_mask_input_b']:.3f} (coordinates' share of the gain "
              f"{p['coordinates_share_of_cc_gain']:.2f})")
    print(f"CCmask vs cctbx: max |diff| {res['cctbx_cc_mask']['max_abs_diff']:.4f}")
    res["synthetic_half_maps"] = synthetic_crossval(args.seeds)
    for seed, c in res["synthetic_half_maps"].items():
        print(f"synthetic halves seed {seed}: work-free FSCavg gap {c['gap_before']:+.4f} -> {c['gap_after']:+.4f}, "
              f"free {c['deposited']['fsc_avg_free']:.3f} -> {c['refined_on_half1']['fsc_avg_free']:.3f}, "
              f"{c['seconds']} s")
    out = REPO / "benchmarks" / "results" / "verdict.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
