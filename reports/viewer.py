"""Per-entry data of the entry page's 3D view (Mol*, vendored under ``site/static/molstar/``).

One compact file per entry, written by the pipeline beside the entry's other outputs
(``{id}_viewer.js``) and linked into the site like any artefact, so the site build does no map
work. It is a *script-loaded asset*: ``window.rerefineViewer = {...}`` holding a MolViewSpec
archive (MVSX: a zip with ``index.mvsj`` and the files it names; Mol*'s
``Viewer.loadMvsData(data, "mvsx")``) as base64 text, and the residue list the page shows.
A ``<script>`` element loads it when the user opens the viewer: that works from ``file://``,
where ``fetch()`` is refused, as well as from any static server, and costs the page nothing
until then.

The archive holds

* the deposited and the re-refined model (mmCIF, atom records only), drawn in two colours;
* the sharpened map around the model, as a mesh at the level that encloses the same volume as
  the deposited map at the contour of the atom-inclusion metric (EMDB's recommended level when
  the archive gives one);
* the difference map at +3 and -3 of its standard deviations (green, red).

Maps are cut to the model plus :data:`PADDING` Å (block-averaged above :data:`MAX_VOXELS`) and stored as MRC mode 0 (int8) in steps of
0.1 SD of each map (``(value - mean) / sd * 10``, clipped to ±12.7 SD): a contour needs no more
precision, and the zip's deflate shrinks the mostly-solvent boxes well.
"""

from __future__ import annotations

import base64
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

import gemmi
import mrcfile
import numpy as np

from rerefine.common.atomicfile import link_atomic, write_atomic
from rerefine.refine import mapio
from rerefine.refine.mapio import DensityMap

#: Å of map kept around the model.
PADDING = 3.0
#: Larger map boxes are averaged over k×k×k blocks (k the smallest whole number that brings
#: them under this): a browser contours some millions of voxels in seconds, not 70 million.
MAX_VOXELS = 2 ** 23
#: Map values are stored in these units of each map's SD.
STEP_SD = 0.1
#: SD of the difference-map contours (the usual ±3 sigma of an mFo-DFc map).
DIFF_SD = 3.0
#: Residues listed per kind (largest change, poorest fit).
N_RESIDUES = 12
COLOURS = {"deposited": "#9e9e9e", "rerefined": "#e07b00", "map": "#3b7dd8", "diff_plus": "#1a9e3a",
           "diff_minus": "#d62728"}
GLOBAL_NAME = "rerefineViewer"


def quantize(data: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Map values as int8 in steps of :data:`STEP_SD` SD about the mean; returns (q, mean, sd)."""
    mean = float(data.mean(dtype=np.float64))
    sd = float(data.std(dtype=np.float64)) or 1.0
    q = np.clip(np.rint((data - mean) / (sd * STEP_SD)), -127, 127).astype(np.int8)
    return q, mean, sd


def coarsen(dmap: DensityMap, max_voxels: int = MAX_VOXELS) -> DensityMap:
    """``dmap`` averaged over k×k×k blocks when it has more than ``max_voxels`` voxels (orthogonal
    maps; the block centres keep their absolute positions), else ``dmap`` itself."""
    n = np.array(dmap.shape)
    if np.prod(n) <= max_voxels or not dmap.is_orthogonal:
        return dmap
    k = int(np.ceil((np.prod(n) / max_voxels) ** (1 / 3) - 1e-9))
    m = n // k
    d = dmap.data[:m[0] * k, :m[1] * k, :m[2] * k].reshape(m[0], k, m[1], k, m[2], k).mean(axis=(1, 3, 5))
    vox = dmap.voxel_size
    cell = gemmi.UnitCell(*(vox * k * m), 90, 90, 90)
    return DensityMap(data=np.ascontiguousarray(d, dtype=np.float32), cell=cell, sampling=tuple(int(x) for x in m),
                      start=(0, 0, 0), origin_shift=dmap.origin + 0.5 * (k - 1) * vox, name=dmap.name)


def mrc_int8_bytes(q: np.ndarray, dmap: DensityMap) -> bytes:
    """MRC2014 mode-0 file of ``q`` (indexed ``[x, y, z]``) in the frame of ``dmap`` (orthogonal):
    NSTART 0, the box position in the ORIGIN words (Å), one cell per box, as Mol* reads it."""
    vox = dmap.voxel_size
    fd, tmp = tempfile.mkstemp(suffix=".mrc")
    os.close(fd)
    try:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(np.ascontiguousarray(q.transpose(2, 1, 0)))
            h = mrc.header
            h.mx, h.my, h.mz = q.shape
            h.cella = tuple(float(v * n) for v, n in zip(vox, q.shape))
            h.origin = tuple(float(o) for o in dmap.origin)
            mrc.update_header_stats()
        return Path(tmp).read_bytes()
    finally:
        os.unlink(tmp)


def model_cif(st: gemmi.Structure) -> bytes:
    """The first model as mmCIF with the atom records and what Mol* needs to draw them."""
    groups = gemmi.MmcifOutputGroups(False)
    groups.atoms = True
    groups.entity = True
    groups.struct_asym = True
    groups.cell = True
    work = st.clone()
    work.setup_entities()
    return work.make_mmcif_document(groups).as_string().encode()


def matched_level(deposited_box: DensityMap, contour: float, sharpened: DensityMap) -> float:
    """Level of ``sharpened`` enclosing the volume ``deposited_box`` encloses at ``contour``."""
    frac = float(np.mean(deposited_box.data >= contour))
    frac = min(max(frac, 1e-4), 0.5)
    return float(np.quantile(sharpened.data, 1.0 - frac))


#: Å: a Cβ deviation at least this large is an outlier (MolProbity; rerefine.refine.validation.cbeta).
CBETA_OUTLIER = 0.25


def validation_outliers(rows: list | None, n: int = N_RESIDUES) -> list[dict]:
    """Residues of the re-refined model with validation outliers (Ramachandran, rotamer, Cβ
    deviation) from the pipeline's ``validation_residues`` rows, at most ``n``."""
    out = []
    for r in rows or []:
        why = []
        if r.get("rama") == "outlier":
            why.append("Ramachandran outlier")
        if r.get("rotamer") == "outlier":
            why.append("rotamer outlier")
        if r.get("cbeta_dev") is not None and float(r["cbeta_dev"]) >= CBETA_OUTLIER:
            why.append(f"Cβ deviation {float(r['cbeta_dev']):.2f} Å")
        if why and r.get("chain") is not None and r.get("seq") is not None:
            icode = (r.get("icode") or "").strip()
            out.append({"chain": r["chain"], "seq": int(r["seq"]), "icode": icode,
                        "label": f"{r['chain']}/{r.get('resname', '')} {r['seq']}{icode}", "why": ", ".join(why)})
        if len(out) >= n:
            break
    return out


def residue_list(before: list | None, after: list | None, n: int = N_RESIDUES,
                 validation: list | None = None) -> list[dict]:
    """Residues to visit: validation outliers of the re-refined model (``validation``: the
    pipeline's ``validation_residues``), the ``n`` largest CC changes and the ``n`` poorest fits
    after re-refinement (lowest real-space CC), each ``chain``, ``seq``, ``label``, ``why``."""
    bmap = {(r.get("chain"), int(r.get("seq", 0)), (r.get("icode") or "").strip()): r for r in before or []}
    rows = []
    for r in after or []:
        key = (r.get("chain"), int(r.get("seq", 0)), (r.get("icode") or "").strip())
        cc1 = r.get("cc")
        cc0 = (bmap.get(key) or {}).get("cc")
        if cc1 is None or not np.isfinite(cc1) or r.get("resname") == "HOH":
            continue
        rows.append((key, r.get("resname", ""), float(cc1), float(cc0) if cc0 is not None else np.nan))
    out = validation_outliers(validation, n)
    seen = {(r["chain"], r["seq"], r["icode"]) for r in out}

    def add(row, why):
        key, resname, _, _ = row
        if key in seen:
            return
        seen.add(key)
        out.append({"chain": key[0], "seq": int(key[1]), "icode": key[2], "label": f"{key[0]}/{resname} {key[1]}{key[2]}", "why": why})

    changes = sorted((r for r in rows if np.isfinite(r[3])), key=lambda r: -abs(r[2] - r[3]))
    for r in changes[:n]:
        add(r, f"CC {r[3]:.2f} → {r[2]:.2f}")
    for r in sorted(rows, key=lambda r: r[2])[:n]:
        add(r, f"poorest fit: CC {r[2]:.2f}")
    return out


def _structure_node(url: str, colour: str) -> dict:
    rep = lambda kind: {"kind": "representation", "params": {"type": kind},  # noqa: E731
                        "children": [{"kind": "color", "params": {"color": colour}}]}
    return {"kind": "download", "params": {"url": url}, "children": [
        {"kind": "parse", "params": {"format": "mmcif"}, "children": [
            {"kind": "structure", "params": {"type": "model"}, "children": [
                {"kind": "component", "params": {"selector": "polymer"}, "children": [rep("cartoon")]},
                {"kind": "component", "params": {"selector": "all"}, "children": [rep("ball_and_stick")]},
            ]}]}]}


def _volume_node(url: str, levels: list[tuple[float, str, float]]) -> dict:
    reps = [{"kind": "volume_representation",
             "params": {"type": "isosurface", "absolute_isovalue": level, "show_wireframe": True, "show_faces": False},
             "children": [{"kind": "color", "params": {"color": colour}},
                          {"kind": "opacity", "params": {"opacity": opacity}}]}
            for level, colour, opacity in levels]
    return {"kind": "download", "params": {"url": url}, "children": [
        {"kind": "parse", "params": {"format": "map"}, "children": [{"kind": "volume", "params": {}, "children": reps}]}]}


def build_archive(deposited: gemmi.Structure, refined: gemmi.Structure, sharpened: DensityMap,
                  diff: DensityMap | None, map_level: float, *, title: str = "") -> tuple[bytes, dict]:
    """The MVSX archive (zip bytes) and what it holds (levels in SD, file sizes).

    ``map_level`` is the contour of ``sharpened`` in its own units.
    """
    xyz = np.array([c.atom.pos.tolist() for c in refined[0].all()], float).reshape(-1, 3)
    files = {"deposited.cif": model_cif(deposited), "rerefined.cif": model_cif(refined)}
    box = coarsen(mapio.cut_box(sharpened, xyz, padding=PADDING) if sharpened.is_orthogonal else sharpened)
    q, mean, sd = quantize(box.data)
    level_sd = (map_level - mean) / sd
    files["sharpened.map"] = mrc_int8_bytes(q, box)
    children = [{"kind": "canvas", "params": {"background_color": "white"}},
                _structure_node("deposited.cif", COLOURS["deposited"]),
                _structure_node("rerefined.cif", COLOURS["rerefined"]),
                _volume_node("sharpened.map", [(round(level_sd / STEP_SD, 2), COLOURS["map"], 0.6)])]
    info = {"map_level_sd": round(level_sd, 3), "diff_level_sd": None}
    if diff is not None:
        dbox = coarsen(mapio.cut_box(diff, xyz, padding=PADDING) if diff.is_orthogonal else diff)
        dq, _dm, _ds = quantize(dbox.data)
        files["difference.map"] = mrc_int8_bytes(dq, dbox)
        step = round(DIFF_SD / STEP_SD, 2)
        children.append(_volume_node("difference.map", [(step, COLOURS["diff_plus"], 0.9),
                                                        (-step, COLOURS["diff_minus"], 0.9)]))
        info["diff_level_sd"] = DIFF_SD
    mvs = {"metadata": {"version": "1", "title": title, "timestamp": "1970-01-01T00:00:00Z"},
           "root": {"kind": "root", "children": children}}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as z:
        z.writestr("index.mvsj", json.dumps(mvs))
        for name, data in files.items():
            z.writestr(name, data)
    info["sizes"] = {k: len(v) for k, v in files.items()}
    return buf.getvalue(), info


def write_viewer_data(path: str | os.PathLike, deposited: gemmi.Structure, refined: gemmi.Structure,
                      sharpened: DensityMap, diff: DensityMap | None, map_level: float, *,
                      residues: list | None = None, title: str = "") -> Path:
    """Write the entry's viewer asset (see the module docstring), atomically; returns its path."""
    archive, info = build_archive(deposited, refined, sharpened, diff, map_level, title=title)
    payload = {"format": "mvsx", "data": "base64," + base64.b64encode(archive).decode("ascii"),
               "residues": residues or [], "colours": COLOURS, **{k: v for k, v in info.items() if k != "sizes"}}
    text = f"window.{GLOBAL_NAME} = " + json.dumps(payload, ensure_ascii=True, separators=(",", ":")) + ";\n"
    path = Path(path)
    write_atomic(path, text)
    return path


#: Files of the vendored viewer (``scripts/vendor_molstar.sh``) the site needs.
ASSETS = ("molstar.js", "molstar.css", "LICENSE", "VERSION")


def copy_viewer_assets(static_src: Path, static_out: Path) -> bool:
    """Put the vendored Mol* files into the site's ``static/molstar/`` (hard link, else copy;
    only when missing or changed). False when the viewer is not vendored (the 3D view then says
    so when opened)."""
    src = Path(static_src) / "molstar"
    if not (src / "molstar.js").is_file():
        return False
    dst = Path(static_out) / "molstar"
    dst.mkdir(parents=True, exist_ok=True)
    for name in ASSETS:
        s, d = src / name, dst / name
        if not s.is_file():
            continue
        if d.is_file() and d.stat().st_size == s.stat().st_size and d.stat().st_mtime >= s.stat().st_mtime:
            continue
        link_atomic(s, d)
    return True
