"""Benchmark: restraint energy + gradient for 5ME2 and tiled copies of it (about 4.5k, 22k, 49k atoms).

Run: ``/work/main/.venv/bin/python benchmarks/bench_restraints.py``; writes
``benchmarks/results/restraints.json``. Timings are medians of repeated evaluations after
numba compilation. Goal (issue 6): one evaluation of all restraints for 50,000 atoms under
50 ms, cost linear in atom count. A reference run of numpy's ``np.dot`` on a fixed matrix
is timed in the same process so that noise from other jobs on the machine can be judged.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import gemmi
import numpy as np

from rerefine.refine.geometry import geometry_stats, restraint_energy_gradient
from rerefine.refine.ncs import ncs_torsion_energy_gradient, ncs_torsion_restraint
from rerefine.refine.secondary_structure import hbond_energy_gradient, secondary_structure_terms
from rerefine.refine.threads import use_parallel
from rerefine.refine.restraints import atom_xyz, build_restraints

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("RR_TEST_DATA", REPO.parent / "shared" / "data"))
MODEL = DATA / "maps_models" / "emd_3488_5me2" / "5me2.pdb"
MONLIB = DATA / "monomers"
OUT = REPO / "benchmarks" / "results" / "restraints.json"


def tiled(st: gemmi.Structure, copies: int, spacing: float = 90.0) -> gemmi.Structure:
    """A structure with ``copies`` translated copies of the first model (new chain names)."""
    out = gemmi.Structure()
    out.name = f"{st.name}x{copies}"
    out.cell = st.cell
    model = gemmi.Model(1)
    side = int(np.ceil(copies ** (1 / 3)))
    k = 0
    for a in range(side):
        for b in range(side):
            for c in range(side):
                if k >= copies:
                    break
                shift = gemmi.Position(a * spacing, b * spacing, c * spacing)
                for ch in st[0]:
                    new = ch.clone()
                    new.name = f"{ch.name}{k}"
                    for res in new:
                        for at in res:
                            at.pos = at.pos + shift
                    model.add_chain(new)
                k += 1
    out.add_model(model)
    out.setup_entities()
    return out


def restraint_nbytes(r) -> int:
    """Bytes held in numpy arrays by the restraints, their neighbour list and scratch buffers."""
    total = 0
    objs = [r, r.bonds, r.angles, r.torsions, r.chirals, r.planes, r.nonbonded]
    for o in objs:
        for v in vars(o).values():
            if isinstance(v, np.ndarray):
                total += v.nbytes
    return total


def median_time(fn, repeats: int) -> float:
    return timings(fn, repeats)[0]


def timings(fn, repeats: int, clock=time.perf_counter) -> tuple[float, float]:
    """(median, min) time in seconds (wall clock unless ``clock`` says otherwise)."""
    ts = []
    for _ in range(repeats):
        t = clock()
        fn()
        ts.append(clock() - t)
    return statistics.median(ts), min(ts)


def extra_terms_cpu(st, r, xyz) -> dict:
    """Thread CPU µs per call of the kernels of the secondary-structure H-bond term and of the torsion
    NCS term, the two terms outside ``restraint_energy_gradient`` that share its kernels
    (``flat_bottom_range``, ``fold_period``): median and min of 7 batches of ~0.2 s."""
    out = {}
    g = np.zeros_like(xyz)
    hb = (secondary_structure_terms(st, r, xyz) or (None,))[0]
    nc = ncs_torsion_restraint(st, r)
    calls = {}
    if hb is not None:
        calls["hbond"] = (len(hb), lambda: hbond_energy_gradient(xyz, hb.pairs, hb.ideal, hb.sigma, hb.slack, g))
    if nc is not None:
        calls["ncs_torsion"] = (len(nc), lambda: ncs_torsion_energy_gradient(xyz, nc.ia, nc.ib, nc.period, nc.weight,
                                                                             nc.sigma, nc.limit, g))
    for name, (n, call) in calls.items():
        call()  # compile
        t = time.perf_counter()
        call()
        batch = max(5, int(0.2 / max(time.perf_counter() - t, 1e-6)))

        def run_batch():
            for _ in range(batch):
                call()

        med, low = timings(run_batch, 7, clock=time.thread_time)
        out[f"{name}_n"] = n
        out[f"{name}_thread_cpu_us"] = round(med / batch * 1e6, 2)
        out[f"{name}_thread_cpu_min_us"] = round(low / batch * 1e6, 2)
    return out


def main() -> int:
    base = gemmi.read_structure(str(MODEL))
    base.setup_entities()
    rng = np.random.default_rng(0)
    ref_mat = rng.normal(size=(400, 400))
    reference_s = median_time(lambda: ref_mat @ ref_mat, 20)

    rows = []
    for copies in (1, 5, 11):
        st = base if copies == 1 else tiled(base, copies)
        t0 = time.perf_counter()
        r = build_restraints(st, MONLIB)
        build_s = time.perf_counter() - t0
        xyz = atom_xyz(st)
        restraint_energy_gradient(r, xyz)  # compile + first neighbour list
        full, full_min = timings(lambda: restraint_energy_gradient(r, xyz), 41)
        # forced serial path (one thread) for comparison with the parallel one
        serial, serial_min = timings(lambda: restraint_energy_gradient(r, xyz, parallel=False), 21)
        # CPU time of this thread on the serial path: insensitive to other jobs on the machine
        # (thread CPU clocks tick coarsely, ~4 ms here: time batches of calls of ~0.3 s)
        batch = max(5, int(0.3 / max(serial_min, 1e-5)))

        def run_batch():
            for _ in range(batch):
                restraint_energy_gradient(r, xyz, parallel=False)

        serial_cpu = timings(run_batch, 5, clock=time.thread_time)[0] / batch
        # neighbour-list rebuild cost (forced)
        rebuild = median_time(lambda: r.nonbonded.build(xyz), 5)
        stats = geometry_stats(r, xyz)
        extra = extra_terms_cpu(st, r, xyz)
        arrays_mb = restraint_nbytes(r) / 2**20
        rows.append({
            "copies": copies, "n_atoms": r.n_atoms, "counts": r.counts(),
            "build_restraints_s": round(build_s, 3), "energy_gradient_ms": round(full * 1e3, 3),
            "energy_gradient_min_ms": round(full_min * 1e3, 3), "path": "parallel" if use_parallel(r.n_atoms) else "serial",
            "serial_ms": round(serial * 1e3, 3), "serial_min_ms": round(serial_min * 1e3, 3),
            "serial_thread_cpu_ms": round(serial_cpu * 1e3, 3),
            "serial_cpu_ns_per_atom": round(serial_cpu * 1e9 / r.n_atoms, 1),
            "nonbonded_rebuild_ms": round(rebuild * 1e3, 3),
            "ns_per_atom": round(full * 1e9 / r.n_atoms, 1),
            "ns_per_atom_min": round(full_min * 1e9 / r.n_atoms, 1),
            "restraint_arrays_mb": round(arrays_mb, 1),
            "bond_rmsd": round(stats["bond_rmsd"], 4), "angle_rmsd": round(stats["angle_rmsd"], 3),
            **extra,
        })
        print(json.dumps(rows[-1]), flush=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    big = rows[-1]
    result = {
        "numba_threads": __import__("numba").get_num_threads(),
        "reference_matmul_400_ms": round(reference_s * 1e3, 3),
        "sizes": rows,
        "goal_50k_ms": 50.0,
        "largest_ms": big["energy_gradient_ms"],
        "largest_ratio_to_reference": round(big["energy_gradient_ms"] / (reference_s * 1e3), 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "linearity_ns_per_atom": [row["ns_per_atom"] for row in rows],
        "linearity_ns_per_atom_min": [row["ns_per_atom_min"] for row in rows],
        "linearity_serial_cpu_ns_per_atom": [row["serial_cpu_ns_per_atom"] for row in rows],
        "peak_rss_mb": round(peak_mb, 1),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "sizes"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
