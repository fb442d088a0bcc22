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
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rerefine.common.errors import InputError
from rerefine.harvester.harvest import EntryFiles
from rerefine.refine import mapio, modelio
from rerefine.refine.regions import REGION_ATOMS

log = logging.getLogger(__name__)

BOX_PADDING = 8.0  # Å around the model; enough for the 2 Å Q-score shells and the CC masks


@dataclass
class EntryJob(EntryFiles):
    """What one entry's pipeline needs: local files and the archive's metadata
    (:class:`rerefine.harvester.harvest.EntryFiles`), plus the resolution (Å) and contour level
    it is measured with."""

    resolution: float | None = None
    contour: float | None = None


@dataclass
class PipelineParams:
    """Parameters that define a pipeline version's behaviour (hashed into the version record)."""

    q_sigma: float = 0.6
    box_padding: float = BOX_PADDING
    refine_adp: bool = True
    macro_cycles: int = 5
    keep_maps: bool = True
    #: the monomer library's identity (:func:`monomer_library_identity`): another library, another version
    monomer_library: str = ""
    douse: bool = True
    douse_max_resolution: float = 3.0
    #: core atoms per region of a model refined in boxes (:func:`rerefine.refine.regions.split_regions`);
    #: models from twice as many atoms are refined in boxes (:func:`rerefine.refine.boxed.use_boxes`)
    region_atoms: int = REGION_ATOMS

    def to_dict(self) -> dict:
        return asdict(self)


def monomer_library_identity(monlib) -> str:
    """``"<folder> sha256:<first 16 hex digits of list/mon_lib_list.cif's SHA-256>"``.

    Raises
    ------
    InputError
        No library given (``RR_MONOMER_LIB``/``CLIBD_MON`` unset) or not a monomer library.
    """
    if monlib is None:
        raise InputError("no monomer library: set RR_MONOMER_LIB (or CCP4's CLIBD_MON) to the CCP4 monomer "
                         "library (README, Configuration)")
    lst = Path(monlib) / "list" / "mon_lib_list.cif"
    if not lst.is_file():
        raise InputError(f"{monlib}: not a monomer library (no list/mon_lib_list.cif)")
    return f"{Path(monlib).resolve()} sha256:{file_sha256(lst)[:16]}"


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


def stage_load(job: EntryJob, padding: float = BOX_PADDING):
    """Read the model and the map's box around it (``padding`` Å; :func:`stage_box`'s box, read
    with :func:`rerefine.refine.mapio.read_map_box`, so memory follows the box, not the map);
    decide the resolution. The model's placement is checked against the map's header first.
    Returns (structure, boxed map, resolution Å)."""
    st = modelio.read_model(job.model_path)
    res = job.resolution or modelio.model_resolution(st)
    if not res or res <= 0:
        raise InputError(f"{job.pdb_id}: no resolution stated by the archive or the model")
    xyz = modelio.atom_positions(st)
    check_placement(job.pdb_id, xyz, mapio.read_map_header(job.map_path))
    return st, mapio.read_map_box(job.map_path, xyz, padding=padding), float(res)


def check_placement(label: str, xyz: np.ndarray, dmap: mapio.DensityMap) -> None:
    """Refuse non-finite coordinates and a model less than half inside the map (whose frame alone
    counts: a header-only map from :func:`rerefine.refine.mapio.read_map_header` will do)."""
    bad = int(np.count_nonzero(~np.isfinite(xyz).all(axis=1)))
    if bad:
        raise InputError(f"{label}: {bad} of {len(xyz)} atoms have non-finite coordinates (NaN or inf)")
    inside = mapio.fraction_inside(dmap, xyz)
    if inside < 0.5:
        raise InputError(f"{label}: only {100 * inside:.0f}% of the model lies inside map {dmap.name}")


def contour_outside_map(level: float, dmap: mapio.DensityMap) -> bool:
    """True when a recommended contour level cannot be a level of this map: not finite, or not
    strictly between the minimum and maximum of ``dmap`` (every atom, or none, would count as
    inside). The pipeline passes the box around the model, where every atom lies."""
    level = float(level)
    return not np.isfinite(level) or not (float(dmap.data.min()) < level < float(dmap.data.max()))


def stage_box(st, dmap: mapio.DensityMap, padding: float = BOX_PADDING) -> mapio.DensityMap:
    """The part of the map around the model (absolute frame kept)."""
    return mapio.cut_box(dmap, modelio.atom_positions(st), padding=padding)


def check_box_density(label: str, box: mapio.DensityMap) -> None:
    """Refuse a model sitting in a region of the map with no density: the map constant over the
    model's box (every figure would be undefined and the refinement would follow the restraints
    alone). Raises :class:`InputError` naming the entry."""
    lo, hi = float(box.data.min()), float(box.data.max())
    if lo == hi:
        raise InputError(f"{label}: no density around the model: map {box.name} is constant ({lo:g}) over the "
                         f"model's box")


def stage_half_boxes(job: EntryJob, box: mapio.DensityMap) -> list[mapio.DensityMap]:
    """Half-maps cut to the same box as the primary map (empty when the entry has none), reading
    only the box (:func:`rerefine.refine.mapio.read_map_region`)."""
    out = []
    for p in job.half_map_paths:
        h = mapio.read_map_header(p)
        lo = np.array(box.start) - np.array(h.start)
        hi = lo + np.array(box.shape)
        same_frame = h.sampling == box.sampling and np.allclose(h.origin_shift, box.origin_shift, atol=1e-3) \
            and np.allclose(h.voxel_size, box.voxel_size, rtol=1e-4)
        if not same_frame or np.any(lo < 0) or np.any(hi > np.array(h.shape)):
            raise InputError(f"{job.pdb_id}: half-map {p.name} is not on the primary map's grid")
        out.append(box.with_data(mapio.read_map_region(p, lo, hi).data))
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


def stage_sharpen_entry(job: EntryJob, box: mapio.DensityMap, resolution: float):
    """:func:`stage_sharpen` with the entry's half-maps cut to the box; unusable half-maps cost
    the FSC weighting, not the entry (the map is sharpened alone, with a warning in
    ``job.metadata``)."""
    from rerefine.common.errors import RerefineError

    try:
        halves = stage_half_boxes(job, box)
    except RerefineError as exc:
        log.warning("%s; sharpening without half-maps", exc)
        job.metadata.setdefault("warnings", []).append(f"{exc}; sharpened without half-maps")
        halves = []
    return stage_sharpen(box, resolution, halves)


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
                 monlib: Path | None, params: PipelineParams, top8000: Path | None = None, *,
                 workers: int | None = None, executor=None):
    """Real-space refinement: coordinates against the sharpened map; B factors, occupancies and the
    density-fit cycles against the deposited box, the map every fit figure is measured on.

    Large models (:func:`rerefine.refine.boxed.use_boxes`: from twice ``params.region_atoms``
    atoms) are refined in boxes, region by region, on
    ``executor`` or a process pool of ``workers`` processes (default: the cores this process may
    run on); smaller ones in one piece as before."""
    if monlib is None:
        raise InputError("no monomer library configured (set RR_MONOMER_LIB or CLIBD_MON)")
    return refine_in_boxes_or_whole(st, sharpened, box, resolution, monlib, params, top8000, workers=workers,
                                    executor=executor)


def refine_in_boxes_or_whole(st, dmap: mapio.DensityMap, fit_map: mapio.DensityMap, resolution: float, monlib,
                             params: PipelineParams, top8000: Path | None = None, *, workers: int | None = None,
                             executor=None, **options):
    """:func:`rerefine.refine.boxed.refine_boxed` when the model is large
    (:func:`rerefine.refine.boxed.use_boxes`), on ``executor`` or a process pool of ``workers``
    processes (default: the cores this process may run on); else
    :func:`rerefine.refine.realspace.refine_model` in one piece. ``options`` go to the
    refinement (e.g. ``b_sharpen``)."""
    import os

    from rerefine.refine.boxed import refine_boxed, use_boxes
    from rerefine.refine.realspace import refine_model

    common = dict(adp=params.refine_adp, cycles=params.macro_cycles, fit_map=fit_map, top8000_dir=top8000,
                  **options)
    if use_boxes(st, fit_map, min_atoms=2 * params.region_atoms):
        if workers is None:
            workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return refine_boxed(st, dmap, resolution, monlib, workers=workers, executor=executor,
                            region_atoms=params.region_atoms, **common)
    return refine_model(st, dmap, resolution, monlib, **common)


def stage_douse(refined, sharpened: mapio.DensityMap, box: mapio.DensityMap, resolution: float,
                monlib: Path | None, params: PipelineParams):
    """Ordered waters on the refined model (:func:`rerefine.refine.douse.douse`, in the sharpened
    map), then the B of the waters alone against the deposited box (:func:`douse.refine_water_b`).

    It runs after :func:`stage_refine` (coordinates and B of the model) rather than between its
    coordinate and B steps, so that the refinement itself is unchanged; only the waters' B are
    refined afterwards. Entries worse than ``params.douse_max_resolution`` are left as they are
    (the summary says so).

    Returns
    -------
    (gemmi.Structure, dict, dict or None)
        The model with its waters, the douse summary (``status``, ``added``, ``kept``,
        ``removed``, ...), and the geometry of the new model (waters included, so clashes with
        them count in the verdict) when the waters changed, else None.
    """
    from rerefine.refine import douse

    if not params.douse:
        return refined, {"status": "skipped: turned off"}, None
    res = douse.douse(refined, sharpened, resolution, max_resolution=params.douse_max_resolution)
    summary = res.summary()
    if res.status != "ok" or not (res.added or res.removed):
        return refined, summary, None
    st = res.structure
    adp = douse.refine_water_b(st, box, resolution)
    if adp is not None:
        summary["water_b"] = {"cc_before": adp.cc_before, "cc_after": adp.cc_after}
        bmap = {(w.chain.name, w.residue.seqid.num): w.atom.b_iso for w in st[0].all() if w.residue.is_water()}
        for row in summary["added"]:
            row["b_iso"] = round(float(bmap.get((row["chain"], row["seq"]), float("nan"))), 1)
    geometry = None
    if monlib is not None:
        from rerefine.refine.geometry import geometry_stats
        from rerefine.refine.realspace import refinement_topology
        from rerefine.refine.restraints import atom_xyz

        geometry = geometry_stats(refinement_topology(st, monlib), atom_xyz(st))
    return st, summary, geometry


def stage_input_b_fit(refined_st, st, box: mapio.DensityMap, resolution: float) -> float:
    """CCmask of the refined coordinates with the deposited B-factors on the deposited box: the
    coordinates' own fit, which B refinement cannot raise (:mod:`rerefine.refine.crossval`)."""
    from rerefine.refine.crossval import cc_mask_with_b

    return cc_mask_with_b(refined_st, st, box, resolution)


def stage_crossval(st, halves: list[mapio.DensityMap], resolution: float, monlib: Path | None,
                   params: PipelineParams, b_sharpen: float = 0.0, top8000: Path | None = None):
    """Half-map cross-validation (Brown et al. 2015): refine coordinates and B against half-map 1
    with the main refinement's parameters (the map sharpened by the same ``b_sharpen``, Å²), then
    measure the deposited and the half-1-refined model against half-map 1 (work) and half-map 2
    (free); a large model is refined in boxes like the main refinement
    (:func:`refine_in_boxes_or_whole`). Returns ``(before, after, info)``: two dicts of
    ``fsc_avg_work``, ``fsc_avg_free``, ``cc_mask_work``, ``cc_mask_free`` and the half-1
    refinement's status; None when the entry has not both half-maps."""
    from rerefine.refine.crossval import half_map_fit

    if len(halves) != 2:
        return None
    if monlib is None:
        raise InputError("no monomer library configured (set RR_MONOMER_LIB or CLIBD_MON)")
    h1, h2 = halves
    before = half_map_fit(st, h1, h2, resolution)
    ref = refine_in_boxes_or_whole(st, h1, h1, resolution, monlib, params, top8000,
                                   b_sharpen=float(b_sharpen or 0.0))
    after = half_map_fit(ref.structure, h1, h2, resolution)
    info = {"status": ref.status, "weight": ref.weight, "cycles": ref.cycles, "rmsd_moved": ref.rmsd_moved,
            "b_sharpen": float(b_sharpen or 0.0), "seconds": ref.seconds}
    return before, after, info


def stage_entry_crossval(job: EntryJob, st, box: mapio.DensityMap, resolution: float, monlib: Path | None,
                         params: PipelineParams, b_sharpen: float = 0.0, top8000: Path | None = None):
    """:func:`stage_crossval` on the entry's half-maps cut to the primary box; None (with a warning
    in ``job.metadata``) when the entry has no usable pair of half-maps."""
    from rerefine.common.errors import RerefineError

    if len(job.half_map_paths) != 2:
        return None
    try:
        halves = stage_half_boxes(job, box)
    except RerefineError as exc:
        job.metadata.setdefault("warnings", []).append(f"{exc}; no half-map cross-validation")
        return None
    return stage_crossval(st, halves, resolution, monlib, params, b_sharpen, top8000)


#: Per-residue validation fields kept with the metrics (for the Ramachandran plots and the residues
#: whose class changed).
VALIDATION_RESIDUE_FIELDS = ("chain", "seq", "icode", "resname", "phi", "psi", "rama", "rama_category",
                             "rotamer", "rotamer_name", "cbeta_dev", "peptide")


def stage_validation(st, monlib: Path | None, top8000: Path | None) -> dict:
    """MolProbity-class validation of a model (:func:`rerefine.refine.validation.validate`) as flat
    metric keys (:func:`validation_metrics`). A validation that cannot run (bad input, no Top8000
    folder) gives only the warning, so the verdict cannot be *improved*."""
    from rerefine.common.errors import RerefineError
    from rerefine.refine.validation import validate

    try:
        rep = validate(st, monlib, top8000_dir=top8000)
    except RerefineError as exc:  # the entry keeps its refinement; its verdict cannot be "improved"
        log.warning("validation skipped: %s", exc)
        return {"validation_warnings": [f"validation not made: {exc}"]}
    return validation_metrics(rep)


def stage_validation_pair(deposited, refined, monlib: Path | None, top8000: Path | None) -> tuple[dict, dict]:
    """:func:`stage_validation` of the deposited and the refined model, with the restraints built
    once when both have the same topology (:func:`rerefine.refine.validation.validate_pair`;
    the figures are those of two separate validations). When the pair cannot be validated
    together, each model is validated on its own (so one model's bad input costs only its own
    figures)."""
    from rerefine.common.errors import RerefineError
    from rerefine.refine.validation import validate_pair

    try:
        first, second = validate_pair(deposited, refined, monlib, top8000_dir=top8000)
    except RerefineError:
        return stage_validation(deposited, monlib, top8000), stage_validation(refined, monlib, top8000)
    return validation_metrics(first), validation_metrics(second)


def validation_metrics(rep) -> dict:
    """A :class:`rerefine.refine.validation.ValidationReport` as flat metric keys:
    :data:`rerefine.refine.validation.SUMMARY_KEYS`, ``cis_nonpro_peptides`` and
    ``twisted_nonpro_peptides`` (the non-proline counts the verdict reads), plus
    ``validation_residues`` (per residue: :data:`VALIDATION_RESIDUE_FIELDS`, angles rounded to
    0.1°) and ``validation_warnings``. The validation's own all-atom RMSDs are left out: the
    metric dicts' ``bond_rmsd``/``angle_rmsd`` are the refinement restraints'."""
    from rerefine.refine.validation import SUMMARY_KEYS

    s = rep.summary
    out = {k: s.get(k) for k in SUMMARY_KEYS}
    out["cis_nonpro_peptides"] = s.get("cis_general")
    out["twisted_nonpro_peptides"] = s.get("twisted_general")
    rows = []
    for r in rep.per_residue:
        row = {k: r.get(k) for k in VALIDATION_RESIDUE_FIELDS}
        for k in ("phi", "psi"):
            row[k] = None if row[k] is None else round(float(row[k]), 1)
        if row["cbeta_dev"] is not None:
            row["cbeta_dev"] = round(float(row["cbeta_dev"]), 3)
        if any(row[k] is not None for k in ("phi", "rama", "rotamer", "cbeta_dev")):
            rows.append(row)
    out["validation_residues"] = rows
    out["validation_warnings"] = list(rep.warnings)[:20]
    return out


CONTOUR_FALLBACK_WARNING = ("no EMDB recommended contour for this entry: atom inclusion uses the level "
                            "enclosing 17 Å³ per non-H atom, which assumes the model explains the whole map "
                            "(a partial model gets far too low an inclusion)")


def add_fit_figures(before: dict, after: dict, *, cc_mask_input_b: float | None, crossval,
                    warnings: list) -> None:
    """Put the fit figures refinement cannot inflate into the metric dicts (in place).

    ``before["cc_mask_input_b"]`` is the deposited CCmask (its B are the input B);
    ``after["cc_mask_input_b"]`` the refined coordinates' with the input B. ``crossval`` is
    :func:`stage_crossval`'s result or None. A fallback contour adds
    :data:`CONTOUR_FALLBACK_WARNING` to ``warnings``.
    """
    before["cc_mask_input_b"] = before.get("cc_mask")
    after["cc_mask_input_b"] = cc_mask_input_b
    if crossval is not None:
        cv_before, cv_after, info = crossval
        before.update(cv_before)
        after.update(cv_after)
        after["crossval"] = info
    if str(before.get("contour_source") or "").startswith("default") and CONTOUR_FALLBACK_WARNING not in warnings:
        log.warning(CONTOUR_FALLBACK_WARNING)
        warnings.append(CONTOUR_FALLBACK_WARNING)


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


def write_viewer(outdir: Path, pdb_id: str, deposited, refined, sharpened: mapio.DensityMap,
                 diff: mapio.DensityMap | None, box: mapio.DensityMap, before: dict, after: dict) -> dict | None:
    """The entry page's 3D-view data (:func:`rerefine.reports.viewer.write_viewer_data`) as an
    artefact record (kind ``viewer_data``): both models, the sharpened map at the level enclosing
    the volume of the atom-inclusion contour (EMDB's when known) on the deposited box, the
    difference map, and the residues to visit. None, with a log line, when it cannot be made:
    a picture never costs the entry."""
    from rerefine.reports import viewer

    try:
        contour = before.get("contour")
        level = viewer.matched_level(box, float(contour), sharpened) if contour is not None else \
            float(sharpened.data.mean() + 1.5 * sharpened.data.std())
        residues = viewer.residue_list(before.get("per_residue"), after.get("per_residue"),
                                       validation=after.get("validation_residues"))
        p = viewer.write_viewer_data(Path(outdir) / f"{pdb_id.lower()}_viewer.js", deposited, refined, sharpened,
                                     diff, level, residues=residues, title=pdb_id)
    except Exception as exc:  # noqa: BLE001 - the 3D view is optional; the log keeps why
        log.warning("%s: 3D-view data skipped: %s: %s", pdb_id, type(exc).__name__, exc)
        return None
    return {"kind": "viewer_data", "path": str(p), "size": p.stat().st_size, "sha256": file_sha256(p)}


def write_artefacts(outdir: Path, pdb_id: str, refined_st, sharpened: mapio.DensityMap | None,
                    diff: mapio.DensityMap | None, *, version: str) -> list[dict]:
    """Write the refined model (unless ``refined_st`` is None) and kept maps atomically; return
    their artefact records."""
    arts = []
    stem = pdb_id.lower()
    if refined_st is not None:
        p = modelio.write_model(outdir / f"{stem}_rerefined.cif", refined_st, program="rerefine", version=version)
        arts.append(("refined_model", p))
    if sharpened is not None:
        arts.append(("sharpened_map", mapio.write_map(outdir / f"{stem}_sharpened.mrc.gz", sharpened)))
    if diff is not None:
        arts.append(("difference_map", mapio.write_map(outdir / f"{stem}_diff.mrc.gz", diff)))
    return [{"kind": k, "path": str(p), "size": p.stat().st_size, "sha256": file_sha256(p)} for k, p in arts]


class EarlyWrites:
    """Outputs written in a thread of the flow's process while the entry's other stages run in its
    stage worker: the refined model and the sharpened map (:func:`write_artefacts`) and the radial
    profiles (:func:`radial_profiles`), so that their compression uses the core the worker leaves
    free. Files go to a ``.partial`` folder inside the entry's folder and are moved into it by
    :meth:`finish` (so a failed entry leaves the previous run's files as they were); :meth:`discard`
    removes them.
    """

    def __init__(self, outdir: Path, pdb_id: str, refined_st, sharpened: mapio.DensityMap | None,
                 box: mapio.DensityMap, sharp_map: mapio.DensityMap, *, version: str):
        import concurrent.futures as cf
        import shutil

        self.outdir = Path(outdir)
        self.partial = self.outdir / ".partial"
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.mkdir(parents=True)
        self.seconds = 0.0
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"write-{pdb_id}")
        self._pdb_id, self._version = pdb_id, version
        self._arts = [self._pool.submit(self._timed, write_artefacts, self.partial, pdb_id, refined_st, sharpened,
                                        None, version=version)]
        self._radial = self._pool.submit(self._timed, radial_profiles, box, sharp_map)

    def add_difference_map(self, diff: mapio.DensityMap) -> None:
        """Write the difference map too (after the others), while the caller goes on."""
        self._arts.append(self._pool.submit(self._timed, write_artefacts, self.partial, self._pdb_id, None, None,
                                            diff, version=self._version))

    def _timed(self, fn, *args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t

    def radial(self) -> dict:
        """:func:`radial_profiles`' result (waits for it)."""
        return self._radial.result()

    def finish(self) -> list[dict]:
        """Wait for the writes, move the files into the entry's folder; their artefact records."""
        import os

        arts = [rec for fut in self._arts for rec in fut.result()]
        self._pool.shutdown()
        for rec in arts:
            final = self.outdir / Path(rec["path"]).name
            os.replace(rec["path"], final)
            rec["path"] = str(final)
        self.partial.rmdir()
        return arts

    def discard(self) -> None:
        """Wait for the thread and remove what it wrote (the entry failed)."""
        import shutil

        self._pool.shutdown(wait=True, cancel_futures=True)
        shutil.rmtree(self.partial, ignore_errors=True)
