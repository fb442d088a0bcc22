"""Lay out the real map/model pairs of the test data (``../shared/data``) as an archive mirror.

The result has the public archive's layout (see :mod:`.mirror`), so discovery, download
and the nightly flow run against it exactly as against the archive (as a directory, or
served over HTTP). What goes in, and from where:

========================  ==========  ==========================================================
model (mirror id)         EMDB        what the files state / how the link is known
========================  ==========  ==========================================================
``5me2``                  EMD-3488    ``5me2.pdb``: EXPDTA EM, REVDAT 1 23-NOV-16 (initial
                                      release), REMARK 2 3.20 Å, REMARK 900 related EMD-3488.
                                      Map ``emd_3488.mrc``: whole 100³ map, label names EMD-3488.
``5ni1``                  (none)      ``5ni1_updated.cif`` as is: EM, 3.2 Å, but no release date
                                      and no EMDB id in the file, so discovery rejects it
                                      ("no associated EMDB map stated") - honestly.
``7cec``                  EMD-30342   ``390_7cec_A.cif`` as is (chain A of 7CEC): EM, revision 1
                                      2021-06-23, 3.9 Å, related EMD-30342. Map: a Chimera *zone*
                                      around chain A, not the whole EMDB map.
``loc_3ajo_fitted``       EMD-20026   ``3ajo_fitted_refined.pdb``: one apoferritin protomer derived
                                      from crystal structure 3AJO and fitted/refined into a Chimera
                                      *box* of EMD-20026 by the MapQ tutorial author. It is not a
                                      deposited model, so it gets a local ``loc_`` id (never a
                                      wwPDB id). The file states nothing but coordinates: no method,
                                      date or resolution; the EMDB link comes from the map's file
                                      name ``emd20026_prot.mrc`` and the tutorial that pairs them.
========================  ==========  ==========================================================

Models are written as gzipped mmCIF (PDB files converted with gemmi; mmCIF files copied
byte for byte). Records that discovery needs are added to converted models only when the
source states them (``_pdbx_audit_revision_history`` from REVDAT, ``_pdbx_database_related``
from REMARK 900 or the pairing above, ``_em_3d_reconstruction.resolution`` from REMARK 2).
Maps are copied byte for byte and gzipped (Chimera-boxed maps keep their ORIGIN words).
EMDB metadata is ``header/emd-N.json`` in the EMDB API's JSON shape holding only values the
files state (id, map file, grid, voxel size, size, label; resolution when the model states
it); unknown values (contour level, dates, authors, half-maps) are absent, never invented.
A top-level ``_rerefine_sample`` key records provenance and is not part of the EMDB shape.
All output is deterministic (gzip mtime 0).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
from pathlib import Path

from rerefine.common.atomicfile import write_atomic
from rerefine.common.errors import InputError

from . import ids
from .mirror import Mirror

# (source dir, model file, mirror id or None = the file's own id, map file or None, EMDB id, note)
SAMPLE = [
    ("emd_3488_5me2", "5me2.pdb", None, "emd_3488.mrc", "EMD-3488",
     "whole primary map (EMDB label intact, 100^3, origin 0); from PyPI ccpem-utils test data"),
    ("emd_3488_5me2", "5ni1_updated.cif", None, None, None,
     "mmCIF with SIFTS categories; the file names no EMDB map"),
    ("emd_30342_zone_7cec_chainA", "390_7cec_A.cif", None, "390_emd_30342_A_z4.mrc", "EMD-30342",
     "zone map around chain A (UCSF Chimera 1.13), not the whole EMDB map; ORIGIN header words kept; "
     "from gregdp/mapq test data"),
    ("emd_20026_box_3ajo_refined", "3ajo_fitted_refined.pdb", "loc_3ajo_fitted", "emd20026_prot.mrc",
     "EMD-20026",
     "box region (UCSF Chimera 1.13) of EMD-20026 from the MapQ apoferritin tutorial; ORIGIN header words kept. "
     "Model derived from crystal structure 3AJO, fitted and refined into this map by the tutorial author; "
     "not a deposited model (local id)"),
]

_MODES = {0: "IMAGE STORED AS SIGNED BYTE", 1: "IMAGE STORED AS SIGNED INTEGER (2 BYTES)",
          2: "IMAGE STORED AS FLOATING POINT NUMBER (4 BYTES)"}
_MONTHS = {m: i + 1 for i, m in enumerate("JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())}


def _gzip(data: bytes) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=6) as gz:
        gz.write(data)
    return buf.getvalue()


def _pdb_header_facts(text: str) -> dict:
    """Initial release date (REVDAT modification 1) and EMDB ids (REMARK 900) of a PDB file."""
    facts: dict = {"release_date": None, "emdb_ids": []}
    for line in text.splitlines():
        if line.startswith("REVDAT") and line[7:10].strip() == "1":
            m = re.match(r"(\d\d)-([A-Z]{3})-(\d\d)", line[13:22])
            if m:
                yy = int(m.group(3))
                year = 1900 + yy if yy >= 70 else 2000 + yy  # PDB dates: 1970s onwards
                facts["release_date"] = f"{year:04d}-{_MONTHS[m.group(2)]:02d}-{int(m.group(1)):02d}"
        elif line.startswith("REMARK 900") and "RELATED DB: EMDB" in line:
            m = re.search(r"RELATED ID:\s*(EMD-\d+)", line)
            if m:
                facts["emdb_ids"].append(ids.emdb_id(m.group(1)))
    return facts


def _convert_pdb(src: Path, mirror_id: str | None, emdb_id: str | None) -> tuple[str, bytes, float | None]:
    """(id, mmCIF bytes, resolution) of a PDB-format model, adding only stated records."""
    import gemmi

    text = src.read_text(errors="replace")
    facts = _pdb_header_facts(text)
    st = gemmi.read_structure(str(src))
    st.setup_entities()
    info = dict(st.info)
    pid = ids.pdb_id(mirror_id or info.get("_entry.id", "") or src.stem)
    st.name = pid.upper() if len(pid) == 4 else pid
    res = float(st.resolution) if st.resolution and st.resolution > 0 else None
    doc = st.make_mmcif_document()
    block = doc.sole_block()
    if facts["release_date"]:
        loop = block.init_loop("_pdbx_audit_revision_history.",
                               ["ordinal", "data_content_type", "major_revision", "minor_revision", "revision_date"])
        loop.add_row(["1", gemmi.cif.quote("Structure model"), "1", "0", facts["release_date"]])
    related = list(facts["emdb_ids"])
    if emdb_id and emdb_id not in related and not related:
        related.append(emdb_id)  # the pairing documented for a local model (see module docstring)
    if related:
        loop = block.init_loop("_pdbx_database_related.", ["db_name", "details", "db_id", "content_type"])
        for e in related:
            stated = e in facts["emdb_ids"]
            detail = "." if stated else gemmi.cif.quote("pairing from the MapQ apoferritin tutorial")
            loop.add_row(["EMDB", detail, e, "." if stated else "other"])
    if res is not None and "ELECTRON MICROSCOPY" in (info.get("_exptl.method") or "").upper():
        block.set_pair("_em_3d_reconstruction.entry_id", gemmi.cif.quote(st.name))
        block.set_pair("_em_3d_reconstruction.id", "1")
        block.set_pair("_em_3d_reconstruction.resolution", f"{res:g}")
    if not info.get("_entry.id"):
        block.set_pair("_entry.id", gemmi.cif.quote(st.name))
    block.name = st.name
    return pid, doc.as_string().encode(), res


def _cif_facts(src: Path) -> tuple[str, float | None]:
    from .mirror import model_record

    import gemmi

    doc = gemmi.cif.read(str(src))
    entry = doc[0].find_value("_entry.id")
    pid = ids.pdb_id(gemmi.cif.as_string(entry) if entry else src.stem)
    return pid, model_record(src, pid).resolution


def _map_header(path: Path) -> dict:
    """EMDB-API-shaped ``map`` object from the MRC header (values the file states)."""
    import gemmi

    m = gemmi.read_ccp4_header(str(path)) if hasattr(gemmi, "read_ccp4_header") else gemmi.read_ccp4_map(str(path))
    nx, ny, nz = (m.header_i32(i) for i in (1, 2, 3))
    mode = m.header_i32(4)
    nstart = [m.header_i32(i) for i in (5, 6, 7)]
    mxyz = [m.header_i32(i) for i in (8, 9, 10)]
    cell = [m.header_float(i) for i in (11, 12, 13)]
    axis = {1: "X", 2: "Y", 3: "Z"}
    spacing = [round(c / g, 6) if g else None for c, g in zip(cell, mxyz)]
    nlabl = m.header_i32(56)
    label = m.header_str(57, 80).split("\x00")[0].strip() if nlabl > 0 else ""
    size = path.stat().st_size
    out = {
        "file": None,
        "format": "CCP4",
        "data_type": _MODES.get(mode, f"MODE {mode}"),
        "dimensions": {"col": nx, "row": ny, "sec": nz},
        "origin": {"col": nstart[0], "row": nstart[1], "sec": nstart[2]},
        "spacing": {"x": mxyz[0], "y": mxyz[1], "z": mxyz[2]},
        "axis_order": {"fast": axis.get(m.header_i32(17), "?"), "medium": axis.get(m.header_i32(18), "?"),
                       "slow": axis.get(m.header_i32(19), "?")},
        "pixel_spacing": {k: {"valueOf_": f"{v:g}", "units": "Å"} for k, v in zip("xyz", spacing) if v},
        "size_kbytes": int(round(size / 1000)),
    }
    if label:
        out["label"] = label
    return out


def build(out_dir: str | os.PathLike, data_dir: str | os.PathLike) -> list[dict]:
    """Write the sample archive under ``out_dir`` from the test data in ``data_dir``.

    Returns
    -------
    list of dict
        One record per model: ``pdb_id``, ``emdb_id`` (or None), files written.

    Raises
    ------
    InputError
        ``data_dir`` lacks the expected files.
    """
    out = Path(out_dir)
    mm = Path(data_dir) / "maps_models"
    if not mm.is_dir():
        raise InputError(f"{data_dir}: no maps_models/ folder (is this the shared test data?)")
    records = []
    for sub, model_name, mirror_id, map_name, emdb_id, note in SAMPLE:
        src = mm / sub / model_name
        if not src.is_file():
            raise InputError(f"{src}: sample model missing")
        if src.suffix == ".pdb":
            pid, cif_bytes, res = _convert_pdb(src, mirror_id, emdb_id)
        else:
            pid, res = _cif_facts(src)
            cif_bytes = src.read_bytes()  # already mmCIF with its own records: keep as is
        model_rel = Mirror.model_rel(pid)
        write_atomic(out / model_rel, _gzip(cif_bytes))
        rec = {"pdb_id": pid, "emdb_id": emdb_id, "model": model_rel, "source": f"{sub}/{model_name}"}
        if map_name:
            eid = ids.emdb_id(emdb_id)
            n = ids.emdb_number(eid)
            map_src = mm / sub / map_name
            fname = f"emd_{n}.map.gz"
            map_rel = Mirror.map_rel(eid, fname)
            write_atomic(out / map_rel, _gzip(map_src.read_bytes()))
            header = {"emdb_id": eid, "admin": {}, "map": {**_map_header(map_src), "file": fname},
                      "crossreferences": {"pdb_list": {"pdb_reference": [{"pdb_id": pid}]}}}
            if res is not None:
                header["structure_determination_list"] = {"structure_determination": [{"image_processing": [
                    {"final_reconstruction": {"resolution": {"valueOf_": f"{res:g}", "units": "Å",
                                                             "res_type": "BY AUTHOR"}}}]}]}
            header["_rerefine_sample"] = {"map_source": f"{sub}/{map_name}", "model_source": f"{sub}/{model_name}",
                                          "note": note}
            json_rel = Mirror.header_rels(eid)[1]
            write_atomic(out / json_rel, (json.dumps(header, indent=2, ensure_ascii=False) + "\n").encode())
            rec.update(map=map_rel, header=json_rel, resolution=res)
        records.append(rec)
    return records
