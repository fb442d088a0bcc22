"""Benchmark of refinement against independent validation (issue 16): does re-refinement leave the
deposited models better by every measure?

Run: ``.venv/bin/python benchmarks/bench_refine_validation.py [--pairs 5me2,7cec,3ajo] [--variants]``;
writes ``benchmarks/results/refine_validation.json``.

For each shared map/model pair, in one invocation (so timings compare under the same load):

* ``deposited``: the deposited model;
* ``previous``: refinement (coordinates + B) with this issue's additions switched off
  (no Ramachandran, rotamer or C-beta terms, no hydrogens, no B prior) - the reference run;
* ``default``: refinement with today's defaults;
* with ``--variants`` also ``rigid_chain`` (``rigid_body="chain"``) and ``free``
  (no reference-position restraint).

Per model: MolProbity-class validation (:func:`rerefine.refine.validation.validate`: Ramachandran
favoured % and outliers, rotamer outliers, C-beta outliers, all-atom clashscore with hydrogens,
cis/twisted peptides; null when that module is not installed), CC_mask, CC_mask of the refined
coordinates with the deposited B (the coordinates' own gain), Q-score, bond/angle RMSD, the B
distribution (:func:`rerefine.refine.adp.distribution`: percentiles, atoms at either bound),
correlation of refined and deposited B, and seconds. ``gates`` checks each refined model against
the issue's figures relative to the deposited model (Ramachandran outliers not more, favoured not
lower by more than 0.5 point, rotamer outliers not more, clashscore not higher, no new C-beta
outliers, no new cis/twisted peptides, no atom at a B bound, CC_mask with deposited B +0.01 on
5ME2 and 7CEC, Q-score not lower). ``speed_ratio``: default / previous seconds.
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

SHORT = {"5me2": "emd_3488_5me2", "7cec": "emd_30342_zone_7cec_chainA", "3ajo": "emd_20026_box_3ajo_refined"}
#: refine_model keywords of the reference run: this issue's terms off
PREVIOUS = {"rama_weight": 0.0, "rotamer_sigma_scale": 0.0, "cbeta": False, "hydrogens": False, "adp_prior_sigma": 0.0}
VARIANTS = {"rigid_chain": {"rigid_body": "chain"}, "free": {"reference_sigma": None, "fit_reference_sigma": None}}


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


def _figures(st, dmap, res, b_dep):
    from rerefine.refine.adp import distribution
    from rerefine.refine.metrics import compute_metrics

    m = compute_metrics(st, dmap, res)
    b = np.array([c.atom.b_iso for c in st[0].all()])
    out = {"cc_mask": m["cc_mask"], "q_score": m["q_score"], "b": distribution(b),
           "b_corr_deposited": float(np.corrcoef(b, b_dep)[0, 1]) if np.std(b) > 0 and np.std(b_dep) > 0 else None}
    dep_b = st.clone()
    for c, bv in zip(dep_b[0].all(), b_dep):
        c.atom.b_iso = float(bv)
    out["cc_mask_deposited_b"] = compute_metrics(dep_b, dmap, res)["cc_mask"]
    out["validation"] = _validation(st)
    return out


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


def run_pair(name: str, variants: bool) -> dict:
    from rerefine.refine import mapio, modelio
    from rerefine.refine.realspace import refine_model

    model, mp, res = PAIRS[name]
    st = modelio.read_model(DATA / "maps_models" / model)
    dmap = mapio.read_map(DATA / "maps_models" / mp)
    b_dep = np.array([c.atom.b_iso for c in st[0].all()])
    out = {"deposited": _figures(st, dmap, res, b_dep)}
    runs = {"previous": PREVIOUS, "default": {}}
    if variants:
        runs.update(VARIANTS)
    for tag, kw in runs.items():
        t = time.perf_counter()
        r = refine_model(st, dmap, res, MONLIB, adp=True, **kw)
        sec = time.perf_counter() - t
        row = _figures(r.structure, dmap, res, b_dep)
        row.update({"seconds": sec, "status": r.status, "bond_rmsd": r.geometry_after.get("bond_rmsd"),
                    "angle_rmsd": r.geometry_after.get("angle_rmsd"), "rmsd_moved": r.rmsd_moved})
        row["gates"] = _gates(out["deposited"], row, name)
        out[tag] = row
        print(name, tag, json.dumps({k: v for k, v in row.items() if k != "validation"}, default=str), flush=True)
        if row["validation"]:
            print("   validation", json.dumps(row["validation"]), flush=True)
    out["speed_ratio"] = out["default"]["seconds"] / out["previous"]["seconds"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="5me2,7cec,3ajo")
    ap.add_argument("--variants", action="store_true", help="also rigid-body-per-chain and --free runs")
    args = ap.parse_args(argv)
    result = {}
    for short in args.pairs.split(","):
        result[short] = run_pair(SHORT[short], args.variants)
    out = REPO / "benchmarks" / "results" / "refine_validation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
