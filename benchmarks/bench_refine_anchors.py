"""Benchmark: our real-space refinement against outside anchors (servalcat, cctbx) on 5ME2 / EMD-3488.

Run: ``/work/main/.venv/bin/python benchmarks/bench_refine_anchors.py [--repeats 3] [--anchor-runs 1]``;
writes ``benchmarks/results/refine_anchors.json`` and prints a table.

Side by side, 5ME2 (4468 atoms) against the deposited EMD-3488 map at 3.2 Å (issue 6):

* **ours**: :func:`rerefine.refine.realspace.refine_model` with ``adp=False`` (coordinates:
  map-value macro-cycles only) and ``adp=True`` (coordinates + isotropic B: B, then the
  density-fit stage alternating coordinates against the model-map fit with B); restraint
  set-up included; median of ``--repeats`` runs after one warm-up run of each (numba caches
  compiled kernels). And ``ours_coordinates_b_free``: the same without the reference-position
  restraint (``reference_sigma=None, fit_reference_sigma=None``), free to follow the map; and
  ``ours_coordinates_b_rigid_model`` / ``_rigid_chain``: a rigid-body fit of the whole model / each
  chain first (:mod:`rerefine.refine.rigidbody`), then the default refinement held to the moved
  positions.
* **servalcat** (PyPI ``servalcat``, Yamashita et al. 2021 Acta Cryst D77:1282), single-map mode
  ``servalcat refine_spa_norefmac --map MAP --model MODEL -d 3.2`` with its defaults (10 cycles,
  riding hydrogens generated for refinement but not written, isotropic B refined, automatic
  weight), monomer library through ``CLIBD_MON``; run as a subprocess in a temporary folder, so
  the wall time includes its Python start-up and map/model input and output. It is **not** a
  project dependency: it lives in its own venv (``RR_SERVALCAT``, default
  ``/tmp/servalcat-venv/bin/servalcat``); without it the row records why it is missing.
* **cctbx** (PyPI ``cctbx-base``, Afonine et al. 2018 Acta Cryst D74:531):
  ``mmtbx.refinement.real_space.individual_sites.easy`` (coordinates only, automatic weight,
  default bond/angle limits 0.015 Å / 2.0°) with restraints from the same monomer library
  (``MMTBX_CCP4_MONOMER_LIB``), in its own venv (``RR_CCTBX_PYTHON``, default
  ``/tmp/cctbxenv/bin/python``). Wall time of the subprocess and cctbx's own
  restraints + refinement time are both recorded.

Every refined model is measured with OUR code, so the figures compare like with like:
:func:`rerefine.refine.metrics.compute_metrics` (CC_mask, CC_box, Q-score, atom inclusion) and a
CC inside 3 Å spheres around the atoms (``cc_3a``, the kind of mask the issue's servalcat figure
uses) against
the unsharpened EMD-3488 map at 3.2 Å, and :func:`rerefine.refine.geometry.geometry_stats` on
:func:`rerefine.refine.restraints.build_restraints` from the same monomer library (bond/angle
RMSD, MolProbity-style nonbonded overlaps, heavy atoms only; hydrogens are removed from any
output before measuring). Also the RMS shift from the input model (atoms matched by chain,
residue number, name, altloc). The anchors' own reported figures (servalcat's
``refined_stats.json``, cctbx's RMSDs) are stored alongside.

CPU seconds are recorded next to wall seconds: ours may use 2 numba threads, servalcat runs on
one core. The machine is shared with other jobs, so times are noisy; ratios are taken in the
same benchmark run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("RR_TEST_DATA", REPO.parent / "shared" / "data")).resolve()
MONLIB = DATA / "monomers"
MODEL = DATA / "maps_models" / "emd_3488_5me2" / "5me2.pdb"
MAP = DATA / "maps_models" / "emd_3488_5me2" / "emd_3488.mrc"
RESOLUTION = 3.2
SERVALCAT = Path(os.environ.get("RR_SERVALCAT", "/tmp/servalcat-venv/bin/servalcat"))
CCTBX_PYTHON = Path(os.environ.get("RR_CCTBX_PYTHON", "/tmp/cctbxenv/bin/python"))

# Run inside the cctbx venv (it cannot import rerefine): process the model with the monomer
# library, refine coordinates with individual_sites.easy, write the model, print timings as JSON.
CCTBX_SCRIPT = r'''
import json, sys, time
t0 = time.perf_counter()
from iotbx.data_manager import DataManager
import mmtbx.model
from mmtbx.refinement.real_space import individual_sites
from libtbx.utils import null_out
model_path, map_path, out = sys.argv[1], sys.argv[2], sys.argv[3]
t1 = time.perf_counter()
dm = DataManager()
mm = dm.get_real_map(map_path)
model = dm.get_model(model_path)
# the PDB file's CRYST1 is the 1 Å placeholder of EM entries: take the map's cell, otherwise
# cctbx's fractional coordinates (map interpolation, nonbonded search) are meaningless
if mm.origin_is_zero():
    model.set_crystal_symmetry(mm.crystal_symmetry())
else:
    from iotbx.map_model_manager import map_model_manager
    mmm = map_model_manager(model=model, map_manager=mm)
    model, mm = mmm.model(), mmm.map_manager()
t2 = time.perf_counter()
p = mmtbx.model.manager.get_default_pdb_interpretation_params()
model.process(make_restraints=True, pdb_interpretation_params=p)
t3 = time.perf_counter()
xrs = model.get_xray_structure()
r = individual_sites.easy(map_data=mm.map_data(), xray_structure=xrs, pdb_hierarchy=model.get_hierarchy(),
                          geometry_restraints_manager=model.get_restraints_manager(), log=null_out())
t4 = time.perf_counter()
model.set_sites_cart(r.xray_structure.sites_cart())
with open(out, "w") as f:
    f.write(model.model_as_pdb())
print(json.dumps({"import_s": t1 - t0, "read_s": t2 - t1, "restraints_s": t3 - t2, "refine_s": t4 - t3,
                  "restraints_plus_refine_s": t4 - t2, "weight": float(r.w),
                  "bond_rmsd": [r.rmsd_bonds_start, r.rmsd_bonds_final],
                  "angle_rmsd": [r.rmsd_angles_start, r.rmsd_angles_final]}))
'''


def _key(c):
    return (c.chain.name, c.residue.seqid.num, c.residue.seqid.icode, c.atom.name, c.atom.altloc)


def _rms_shift(st0, st1) -> dict:
    """RMS coordinate change (Å) between two models of the same atoms, matched by name."""
    pos = {_key(c): c.atom.pos for c in st0[0].all()}
    d2 = [c.atom.pos.dist(pos[_key(c)]) ** 2 for c in st1[0].all() if _key(c) in pos]
    return {"rmsd_from_input": float(np.sqrt(np.mean(d2))) if d2 else float("nan"), "atoms_matched": len(d2)}


def _cc_spheres(st, dmap, radius: float) -> float:
    """CC between the map and our model map (exact, cut at 3.2 Å) over the voxels within ``radius`` Å
    of any atom: the "3 Å-mask CC" the issue quotes for servalcat (its default ``--mask_radius 3``)."""
    from scipy.spatial import cKDTree

    from rerefine.refine.mapcc import pearson
    from rerefine.refine.modelmap import model_map
    from rerefine.refine.restraints import atom_xyz

    calc = model_map(st, dmap, RESOLUTION).data
    idx = np.indices(dmap.shape).reshape(3, -1).T.astype(float)
    pts = dmap.origin + idx * np.asarray(dmap.voxel_size)
    d, _ = cKDTree(atom_xyz(st)).query(pts, distance_upper_bound=radius)
    sel = np.isfinite(d).reshape(dmap.shape)
    return pearson(dmap.data, calc, sel)


def measure(st, dmap, input_st) -> dict:
    """Our fit and geometry figures of ``st`` (hydrogens removed) against ``dmap``."""
    from rerefine.refine.geometry import geometry_stats
    from rerefine.refine.metrics import compute_metrics
    from rerefine.refine.restraints import atom_xyz, build_restraints

    st = st.clone()
    st.remove_hydrogens()
    st.setup_entities()
    m = compute_metrics(st, dmap, RESOLUTION)
    g = geometry_stats(build_restraints(st, MONLIB), atom_xyz(st))
    bs = np.array([c.atom.b_iso for c in st[0].all()])
    return {**{k: m[k] for k in ("cc_mask", "cc_box", "q_score", "atom_inclusion")},
            "cc_3a": _cc_spheres(st, dmap, 3.0),
            **{k: g[k] for k in ("bond_rmsd", "angle_rmsd", "chirality_rmsd", "planarity_rmsd",
                                 "nonbonded_overlaps", "n_bonds", "n_angles")},
            "atoms": st[0].count_atom_sites(), "b_mean": float(bs.mean()), "b_min": float(bs.min()),
            "b_max": float(bs.max()), **_rms_shift(input_st, st)}


def _timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def run_ours(st, dmap, repeats: int) -> dict:
    from rerefine.refine.realspace import refine_model

    rows = {}
    variants = (("ours_coordinates", {"adp": False}), ("ours_coordinates_b", {"adp": True}),
                # no reference-position restraint: the model follows the map (and B) as far as the
                # geometry targets allow, like servalcat; the default keeps it near the input
                ("ours_coordinates_b_free", {"adp": True, "reference_sigma": None, "fit_reference_sigma": None}),
                # a rigid-body fit first (the whole model / each chain), then the default refinement
                # held to the moved positions: undoes a misplacement as a whole, nothing else
                ("ours_coordinates_b_rigid_model", {"adp": True, "rigid_body": "model"}),
                ("ours_coordinates_b_rigid_chain", {"adp": True, "rigid_body": "chain"}))
    for label, kw in variants:
        refine_model(st, dmap, RESOLUTION, MONLIB, **kw)  # warm-up: numba cache load, imports
        walls, cpus, res = [], [], None
        for _ in range(repeats):
            res, w, c = _timed(lambda: refine_model(st, dmap, RESOLUTION, MONLIB, **kw))
            walls.append(w)
            cpus.append(c)
        rows[label] = {"model": res.structure, "wall_s": statistics.median(walls), "wall_runs_s": walls,
                       "cpu_s": statistics.median(cpus), "runs": repeats, "status": res.status,
                       "own": {"weight": res.weight, "cycles": res.cycles,
                               "bond_rmsd": res.geometry_after.get("bond_rmsd"),
                               "angle_rmsd": res.geometry_after.get("angle_rmsd")}}
    return rows


def _child_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run_child(cmd, env, cwd, timeout=1800):
    c0, w0 = _child_cpu(), time.perf_counter()
    p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    return p, time.perf_counter() - w0, _child_cpu() - c0


def run_servalcat(runs: int, model=MODEL, map_path=MAP, resolution=RESOLUTION) -> dict:
    """servalcat refine_spa_norefmac with defaults on ``model`` / ``map_path`` at ``resolution`` Å;
    the refined model of the last run (also used by ``bench_refine_validation``)."""
    from rerefine.refine import modelio

    if not SERVALCAT.exists():
        return {"error": f"{SERVALCAT}: not installed (python3 -m venv /tmp/servalcat-venv && "
                         f"/tmp/servalcat-venv/bin/pip install servalcat)"}
    env = {**os.environ, "CLIBD_MON": str(MONLIB)}
    version = subprocess.run([str(SERVALCAT.parent / "python"), "-c",
                              "import servalcat; print(servalcat.__version__)"],
                             capture_output=True, text=True).stdout.strip()
    cmd = [str(SERVALCAT), "refine_spa_norefmac", "--map", str(map_path), "--model", str(model),
           "-d", str(resolution)]
    walls, cpus, model, own = [], [], None, {}
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="rr-servalcat-") as tmp:
            p, w, c = _run_child(cmd, env, tmp)
            if p.returncode != 0:
                tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
                return {"error": f"servalcat exit {p.returncode}: " + " | ".join(tail), "command": cmd}
            walls.append(w)
            cpus.append(c)
            out = Path(tmp) / "refined.pdb"
            if not out.exists():
                out = Path(tmp) / "refined.mmcif"
            model = modelio.read_model(out)
            stats = Path(tmp) / "refined_stats.json"
            if stats.exists():
                own = _servalcat_own(json.loads(stats.read_text()))
    return {"model": model, "wall_s": statistics.median(walls), "wall_runs_s": walls,
            "cpu_s": statistics.median(cpus), "runs": runs, "version": version, "command": " ".join(cmd),
            "own": own}


def _servalcat_own(stats: list) -> dict:
    """servalcat's own first/last cycle figures (its restraints, its FSC/CC)."""
    def pick(cyc):
        rmsd = cyc.get("geom", {}).get("summary", {}).get("r.m.s.d.", {})
        data = cyc.get("data", {}).get("summary", {})
        return {"bond_rmsd_nonH": rmsd.get("Bond distances, non H"),
                "angle_rmsd_nonH": rmsd.get("Bond angles, non H"),
                **{k: v for k, v in data.items() if isinstance(v, (int, float))}}
    return {"first": pick(stats[0]), "last": pick(stats[-1]), "cycles": len(stats) - 1}


def run_cctbx(runs: int) -> dict:
    from rerefine.refine import modelio

    if not CCTBX_PYTHON.exists():
        return {"error": f"{CCTBX_PYTHON}: no cctbx-base venv (python3 -m venv /tmp/cctbxenv && "
                         f"/tmp/cctbxenv/bin/pip install cctbx-base)"}
    env = {**os.environ, "MMTBX_CCP4_MONOMER_LIB": str(MONLIB)}
    walls, cpus, inner, model = [], [], [], None
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="rr-cctbx-") as tmp:
            out = Path(tmp) / "refined.pdb"
            cmd = [str(CCTBX_PYTHON), "-c", CCTBX_SCRIPT, str(MODEL), str(MAP), str(out)]
            p, w, c = _run_child(cmd, env, tmp)
            if p.returncode != 0:
                tail = (p.stderr or p.stdout).strip().splitlines()[-5:]
                return {"error": f"cctbx exit {p.returncode}: " + " | ".join(tail)}
            walls.append(w)
            cpus.append(c)
            inner.append(json.loads(p.stdout.strip().splitlines()[-1]))
            model = modelio.read_model(out)
    version = subprocess.run([str(CCTBX_PYTHON), "-c",
                              "from importlib.metadata import version; print(version('cctbx-base'))"],
                             capture_output=True, text=True).stdout.strip()
    return {"model": model, "wall_s": statistics.median(walls), "wall_runs_s": walls,
            "cpu_s": statistics.median(cpus), "runs": runs, "version": version,
            "restraints_plus_refine_s": statistics.median(r["restraints_plus_refine_s"] for r in inner),
            "own": inner[-1]}


def main(argv=None) -> int:
    from rerefine.refine import mapio, modelio

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of ours (after a warm-up)")
    ap.add_argument("--anchor-runs", type=int, default=1, help="runs of servalcat and cctbx")
    ap.add_argument("--no-cctbx", action="store_true")
    ap.add_argument("--no-servalcat", action="store_true")
    args = ap.parse_args(argv)

    st = modelio.read_model(MODEL)
    dmap = mapio.read_map(MAP)
    rows = {"input": {"model": st}}
    rows.update(run_ours(st, dmap, args.repeats))
    if not args.no_servalcat:
        rows["servalcat"] = run_servalcat(args.anchor_runs)
    if not args.no_cctbx:
        rows["cctbx"] = run_cctbx(args.anchor_runs)

    result = {"pair": {"model": str(MODEL), "map": str(MAP), "resolution": RESOLUTION}, "rows": {}}
    for name, row in rows.items():
        model = row.pop("model", None)
        if model is not None:
            row["figures"] = measure(model, dmap, st)
        result["rows"][name] = row
    ratios = {}
    for ours in [k for k in result["rows"] if k.startswith("ours_")]:
        for anchor in ("servalcat", "cctbx"):
            a, o = result["rows"].get(anchor, {}), result["rows"][ours]
            if "wall_s" in a:
                ratios[f"{anchor}/{ours}"] = {"wall": a["wall_s"] / o["wall_s"], "cpu": a["cpu_s"] / o["cpu_s"]}
    if "restraints_plus_refine_s" in result["rows"].get("cctbx", {}):
        ratios["cctbx_inner/ours_coordinates"] = {
            "wall": result["rows"]["cctbx"]["restraints_plus_refine_s"] / result["rows"]["ours_coordinates"]["wall_s"]}
    result["ratios"] = ratios
    result["machine"] = {"cpus": os.cpu_count(), "load_avg": os.getloadavg()}

    out = REPO / "benchmarks" / "results" / "refine_anchors.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")

    print(f"5ME2 vs EMD-3488 at {RESOLUTION} Å (figures by rerefine's metrics/geometry, heavy atoms)")
    print(f"{'':<31} {'wall s':>7} {'cpu s':>7} {'runs':>4} {'CCmask':>7} {'CC3A':>6} {'CCbox':>7} {'Q':>6} {'incl':>6} "
          f"{'bond':>7} {'angle':>6} {'clash':>5} {'shift':>6} {'<B>':>6}")
    for name, row in result["rows"].items():
        if "error" in row:
            print(f"{name:<31} ERROR: {row['error']}")
            continue
        f = row["figures"]
        t = (f"{row['wall_s']:7.2f} {row['cpu_s']:7.2f} {row['runs']:>4}" if "wall_s" in row
             else f"{'-':>7} {'-':>7} {'-':>4}")
        print(f"{name:<31} {t} {f['cc_mask']:7.3f} {f['cc_3a']:6.3f} {f['cc_box']:7.3f} {f['q_score']:6.3f} "
              f"{f['atom_inclusion']:6.3f} {f['bond_rmsd']:7.4f} {f['angle_rmsd']:6.2f} "
              f"{f['nonbonded_overlaps']:>5} {f['rmsd_from_input']:6.2f} {f['b_mean']:6.1f}")
    for k, v in ratios.items():
        print(f"  time ratio {k}: wall {v['wall']:.2f}" + (f", cpu {v['cpu']:.2f}" if "cpu" in v else ""))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
