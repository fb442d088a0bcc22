"""The per-entry pipeline as plain functions: load → box → sharpen → metrics → refine → metrics → diffmap.

Each stage is a library call with explicit inputs and outputs, so that the Prefect flows in
:mod:`rerefine.flows.nightly` can wrap each as a task (with retries only where they help) and the
same code runs without Prefect in tests and benchmarks. Metrics before and after are measured on
the *deposited* primary map (boxed), so they compare with EMDB/phenix figures; refinement uses the
automatically sharpened map.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rerefine.refine import mapio, modelio
from rerefine.common.errors import InputError

log = logging.getLogger(__name__)

BOX_PADDING = 8.0  # Å around the model; enough for the 2 Å Q-score shells and the CC masks


@dataclass
class EntryJob:
    """What one entry's pipeline needs: local files and the archive's metadata."""

    pdb_id: str
    emdb_id: str | None
    model_path: Path
    map_path: Path
    half_map_paths: list[Path] = field(default_factory=list)
    resolution: float | None = None
    contour: float | None = None
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model_path"] = str(self.model_path)
        d["map_path"] = str(self.map_path)
        d["half_map_paths"] = [str(p) for p in self.half_map_paths]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EntryJob:
        d = dict(d)
        d["model_path"] = Path(d["model_path"])
        d["map_path"] = Path(d["map_path"])
        d["half_map_paths"] = [Path(p) for p in d.get("half_map_paths") or []]
        return cls(**d)


@dataclass
class PipelineParams:
    """Parameters that define a pipeline version's behaviour (hashed into the version record)."""

    q_sigma: float = 0.6
    box_padding: float = BOX_PADDING
    refine_adp: bool = True
    macro_cycles: int = 5
    keep_maps: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def input_files(job: EntryJob) -> list[dict]:
    """Path, size and checksum of each input file (for the database and the re-run cache)."""
    out = []
    for role, p in [("model", job.model_path), ("map", job.map_path)] + [
        (f"half_map_{i + 1}", p) for i, p in enumerate(job.half_map_paths)
    ]:
        out.append({"role": role, "path": str(p), "size": p.stat().st_size, "sha256": file_sha256(p)})
    return out


_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def entry_dir(root: Path, pdb_id: str) -> Path:
    """Output folder of one entry; the id is validated before it becomes a path."""
    if not _SAFE.match(pdb_id):
        raise InputError(f"{pdb_id!r}: not a valid entry identifier")
    d = Path(root) / "entries" / pdb_id.lower()
    d.mkdir(parents=True, exist_ok=True)
    return d


# ---- stages ----------------------------------------------------------------------------


def stage_load(job: EntryJob):
    """Read model and map; decide the resolution. Returns (structure, full map, resolution Å)."""
    st = modelio.read_model(job.model_path)
    dmap = mapio.read_map(job.map_path)
    res = job.resolution or modelio.model_resolution(st)
    if not res or res <= 0:
        raise InputError(f"{job.pdb_id}: no resolution stated by the archive or the model")
    xyz = modelio.atom_positions(st)
    bad = int(np.count_nonzero(~np.isfinite(xyz).all(axis=1)))
    if bad:
        raise InputError(f"{job.pdb_id}: {bad} of {len(xyz)} atoms have non-finite coordinates (NaN or inf)")
    inside = mapio.fraction_inside(dmap, xyz)
    if inside < 0.5:
        raise InputError(f"{job.pdb_id}: only {100 * inside:.0f}% of the model lies inside map {dmap.name}")
    return st, dmap, float(res)


def contour_outside_map(level: float, dmap: mapio.DensityMap) -> bool:
    """True when a recommended contour level cannot be a level of this map: not finite, or not
    strictly between the map's minimum and maximum (every atom, or none, would count as inside)."""
    level = float(level)
    return not np.isfinite(level) or not (float(dmap.data.min()) < level < float(dmap.data.max()))


def stage_box(st, dmap: mapio.DensityMap, padding: float = BOX_PADDING) -> mapio.DensityMap:
    """The part of the map around the model (absolute frame kept)."""
    return mapio.cut_box(dmap, modelio.atom_positions(st), padding=padding)


def stage_half_boxes(job: EntryJob, box: mapio.DensityMap) -> list[mapio.DensityMap]:
    """Half-maps cut to the same box as the primary map (empty when the entry has none)."""
    out = []
    for p in job.half_map_paths:
        h = mapio.read_map(p)
        lo = np.array(box.start) - np.array(h.start)
        hi = lo + np.array(box.shape)
        same_frame = h.sampling == box.sampling and np.allclose(h.origin_shift, box.origin_shift, atol=1e-3) \
            and np.allclose(h.voxel_size, box.voxel_size, rtol=1e-4)
        if not same_frame or np.any(lo < 0) or np.any(hi > np.array(h.shape)):
            raise InputError(f"{job.pdb_id}: half-map {p.name} is not on the primary map's grid")
        out.append(box.with_data(h.data[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]))
    return out


def timed(timings: dict, name: str):
    """Context manager adding the wall time of a stage to ``timings[name]`` (s)."""

    class _T:
        def __enter__(self):
            self.t = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - self.t, 3)
            return False

    return _T()


def stage_sharpen(box: mapio.DensityMap, resolution: float, halves: list[mapio.DensityMap]):
    """Automatic sharpening of the boxed map (half-map FSC weighting when both halves exist)."""
    from rerefine.refine import sharpen

    return sharpen.auto_sharpen(box, resolution, half_maps=tuple(halves) if len(halves) == 2 else None)


def radial_profiles(before: mapio.DensityMap, after: mapio.DensityMap) -> dict:
    """RMS Fourier amplitude per resolution shell of a map before and after sharpening (for the site)."""
    from rerefine.refine.fsc import map_profile

    p0, p1 = map_profile(before), map_profile(after)
    keep = p0.count > 0
    return {"s": [round(float(x), 5) for x in p0.s_mid[keep]],
            "before": [float(x) for x in p0.amplitude[keep]],
            "after": [float(x) for x in p1.amplitude[keep]]}


def stage_metrics(st, box: mapio.DensityMap, resolution: float, job: EntryJob, params: PipelineParams,
                  geometry: dict | None = None) -> dict:
    """All fit metrics on the deposited (boxed, unsharpened) map, plus the geometry figures."""
    from rerefine.refine.geometry import GEOMETRY_KEYS
    from rerefine.refine.metrics import compute_metrics

    out = compute_metrics(st, box, resolution, contour=job.contour,
                          contour_source="emdb" if job.contour is not None else None, q_sigma=params.q_sigma)
    if geometry:
        out.update({k: geometry.get(k) for k in GEOMETRY_KEYS if k in geometry})
    return out


def stage_refine(st, sharpened: mapio.DensityMap, box: mapio.DensityMap, resolution: float,
                 monlib: Path | None, params: PipelineParams):
    """Real-space refinement: coordinates against the sharpened map; B factors, occupancies and the
    density-fit cycles against the deposited box, the map every fit figure is measured on."""
    from rerefine.refine.realspace import refine_model

    if monlib is None:
        raise InputError("no monomer library configured (set RR_MONOMER_LIB or CLIBD_MON)")
    return refine_model(st, sharpened, resolution, monlib, adp=params.refine_adp, cycles=params.macro_cycles,
                        fit_map=box)


def stage_placement(st, sharpened: mapio.DensityMap, resolution: float) -> dict | None:
    """Rigid-body placement check of the deposited model, chain by chain, in the sharpened map
    (a diagnosis for the entry page; the refinement does not apply it). None, with a log line,
    when the check cannot run: it must not cost the entry."""
    from rerefine.refine.rigidbody import placement_check

    try:
        return placement_check(st, sharpened, resolution, by="chain")
    except Exception as exc:  # a diagnosis never costs the entry its refinement; the log keeps why
        log.warning("placement check skipped: %s: %s", type(exc).__name__, exc)
        return None


def stage_diffmap(st, box: mapio.DensityMap, resolution: float):
    """Real-space difference map of the refined model and its strongest peaks."""
    from rerefine.refine.diffmap import difference_map, difference_peaks

    diff, _info = difference_map(st, box, resolution)
    return diff, difference_peaks(diff, st)


def write_artefacts(outdir: Path, pdb_id: str, refined_st, sharpened: mapio.DensityMap | None,
                    diff: mapio.DensityMap | None, *, version: str) -> list[dict]:
    """Write the refined model and kept maps atomically; return their artefact records."""
    arts = []
    stem = pdb_id.lower()
    p = modelio.write_model(outdir / f"{stem}_rerefined.cif", refined_st, program="rerefine", version=version)
    arts.append(("refined_model", p))
    if sharpened is not None:
        arts.append(("sharpened_map", mapio.write_map(outdir / f"{stem}_sharpened.mrc.gz", sharpened)))
    if diff is not None:
        arts.append(("difference_map", mapio.write_map(outdir / f"{stem}_diff.mrc.gz", diff)))
    return [{"kind": k, "path": str(p), "size": p.stat().st_size, "sha256": file_sha256(p)} for k, p in arts]
