"""EMDB entry metadata: from the EMDB REST API JSON or the entry's v3 header XML.

Both carry the same content: the API's JSON is the v3 header XML serialised by
generateDS (XML attributes become keys; an element's text next to attributes becomes
``valueOf_``; repeated elements become lists). :func:`xml_to_api_shape` turns a header
XML into that shape, so one extractor, :func:`parse_entry`, reads both.

Fields used (API JSON paths; the XML has the same element names):

* resolution, Å: ``structure_determination_list.structure_determination[0].*_processing[0]
  .final_reconstruction.resolution`` (``BY AUTHOR``);
* recommended contour level: ``map.contour_list.contour[]`` with ``primary`` true;
* primary map file: ``map.file``; half-maps: ``interpretation.half_map_list.half_map[].file``;
* map size: ``map.size_kbytes`` x 1000 (the uncompressed map), else grid dimensions x
  bytes per voxel + 1024-byte header;
* title ``admin.title``, release date ``admin.key_dates.map_release``, authors
  ``admin.authors_list.author[]``, fitted models ``crossreferences.pdb_list.pdb_reference[].pdb_id``.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from rerefine.common.errors import ArchiveError, InputError

from . import fields, ids

_BYTES_PER_VOXEL = {"IMAGE STORED AS SIGNED BYTE": 1, "IMAGE STORED AS SIGNED INTEGER (2 BYTES)": 2,
                    "IMAGE STORED AS FLOATING POINT NUMBER (4 BYTES)": 4}


@dataclass
class EmdbInfo:
    """What the harvester needs from an EMDB entry. Unknown values are None / empty."""

    emdb_id: str
    resolution: float | None = None
    contour_level: float | None = None
    map_file: str | None = None
    half_map_files: list[str] = field(default_factory=list)
    map_size_bytes: int | None = None
    title: str | None = None
    release_date: str | None = None
    authors: list[str] = field(default_factory=list)
    pdb_ids: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # fields present but unusable (ignored)


def _list(x) -> list:
    if x is None:
        return []
    return x if isinstance(x, list) else [x]


def _text(x) -> str | None:
    if isinstance(x, dict):
        x = x.get("valueOf_")
    if x is None or isinstance(x, (list, dict, bool)):
        return None
    s = str(x).strip()
    return s or None


def _date(x, warnings: list) -> str | None:
    return fields.iso_date(_text(x), what="EMDB map release date", warnings=warnings)


def _resolution(entry: dict, warnings: list) -> float | None:
    for sd in _list(_dict(entry.get("structure_determination_list")).get("structure_determination")):
        if not isinstance(sd, dict):
            continue
        for key, procs in sd.items():
            # singleparticle_processing, helical_processing, subtomogram_averaging_processing, ...
            # In the API JSON they all sit in "image_processing"; in the XML under their own names.
            if not (key == "image_processing" or key.endswith("_processing")):
                continue
            for proc in _list(procs):
                if isinstance(proc, dict) and isinstance(proc.get("final_reconstruction"), dict):
                    r = fields.number(_text(proc["final_reconstruction"].get("resolution")), what="EMDB resolution",
                                      lo=fields.RESOLUTION_RANGE[0], hi=fields.RESOLUTION_RANGE[1],
                                      warnings=warnings)
                    if r is not None:
                        return r
    return None


def _contour(mp: dict, warnings: list) -> float | None:
    contours = [c for c in _list(_dict(mp.get("contour_list")).get("contour")) if isinstance(c, dict)]
    primary = [c for c in contours if str(c.get("primary")).lower() == "true"]
    for c in primary + contours:
        v = fields.number(_text(c.get("level")), what="EMDB recommended contour level",
                          lo=fields.CONTOUR_RANGE[0], hi=fields.CONTOUR_RANGE[1], warnings=warnings)
        if v is not None:
            return v
    return None


def _dict(x) -> dict:
    return x if isinstance(x, dict) else {}


def _map_size(mp: dict, warnings: list) -> int | None:
    kb = fields.number(_text(mp.get("size_kbytes")), what="EMDB map size_kbytes", lo=1e-3, hi=1e12,
                       warnings=warnings)
    if kb:
        return int(kb * 1000)
    dims = _dict(mp.get("dimensions"))
    n = [fields.count(_text(dims.get(k)), what=f"EMDB map dimension {k}", warnings=warnings)
         for k in ("col", "row", "sec")]
    if None in n or 0 in n:
        return None
    return n[0] * n[1] * n[2] * _BYTES_PER_VOXEL.get(str(mp.get("data_type", "")).upper(), 4) + 1024


def parse_entry(entry: dict, *, source: str = "EMDB entry") -> EmdbInfo:
    """Extract :class:`EmdbInfo` from an EMDB API entry (or a header XML in that shape).

    Raises
    ------
    ArchiveError
        The answer is not an EMDB entry (no valid ``emdb_id``).
    InputError
        A file name in the entry is unsafe to use as a path.
    """
    if not isinstance(entry, dict):
        raise ArchiveError(f"{source}: not an EMDB entry object")
    raw_id = entry.get("emdb_id")
    try:
        eid = ids.emdb_id(raw_id)
    except InputError:
        raise ArchiveError(f"{source}: answer has no valid emdb_id ({str(raw_id)[:30]!r})") from None
    mp, admin, interp = _dict(entry.get("map")), _dict(entry.get("admin")), _dict(entry.get("interpretation"))
    warnings: list[str] = []
    map_file = _text(mp.get("file"))
    if map_file:
        map_file = ids.safe_filename(map_file, what=f"{eid} map file name")
    halves = []
    for h in _list(_dict(interp.get("half_map_list")).get("half_map")):
        name = _text(h.get("file")) if isinstance(h, dict) else None
        if name:
            halves.append(ids.safe_filename(name, what=f"{eid} half-map file name"))
    pdbs = []
    for ref in _list(_dict(_dict(entry.get("crossreferences")).get("pdb_list")).get("pdb_reference")):
        if isinstance(ref, dict) and _text(ref.get("pdb_id")):
            try:
                pdbs.append(ids.pdb_id(_text(ref.get("pdb_id"))))
            except InputError:
                pass
    authors = [a for a in (fields.text(_text(x), 200) for x in _list(_dict(admin.get("authors_list")).get("author")))
               if a]
    return EmdbInfo(
        emdb_id=eid,
        resolution=_resolution(entry, warnings),
        contour_level=_contour(mp, warnings),
        map_file=map_file,
        half_map_files=halves,
        map_size_bytes=_map_size(mp, warnings) if mp else None,
        title=fields.text(_text(admin.get("title"))),
        release_date=_date(_dict(admin.get("key_dates")).get("map_release"), warnings),
        authors=authors,
        pdb_ids=pdbs,
        warnings=[f"{eid}: {w}" for w in warnings],
    )


def parse_json_bytes(data: bytes, *, source: str) -> EmdbInfo:
    """Parse an EMDB API JSON answer saved as a file (mirror ``header/emd-N.json``)."""
    try:
        entry = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArchiveError(f"{source}: malformed JSON ({str(exc).splitlines()[0]})") from None
    return parse_entry(entry, source=source)


def xml_to_api_shape(xml: bytes | str, *, source: str = "EMDB header") -> dict:
    """Convert an EMDB v3 header XML (``emd-N-v30.xml``) into the API's JSON shape.

    Raises
    ------
    ArchiveError
        Not well-formed XML, or a document type declaration (refused: entity
        expansion is never needed for a header).
    """
    text = xml.decode("utf-8", "replace") if isinstance(xml, bytes) else xml
    if "<!DOCTYPE" in text[:4096] or "<!ENTITY" in text:
        raise ArchiveError(f"{source}: XML with a DOCTYPE/ENTITY declaration refused")
    try:
        root = ET.fromstring(text.encode("utf-8"))
    except ET.ParseError as exc:
        raise ArchiveError(f"{source}: malformed XML ({exc})") from None
    out = _element(root)
    if not isinstance(out, dict):
        out = {"valueOf_": out}
    # The root's id attribute is called emdb_id in the XML too.
    return out


# Elements that are lists in the API JSON even when only one is present.
_LIST_TAGS = {"author", "contour", "half_map", "structure_determination", "image_processing",
              "singleparticle_processing", "helical_processing", "subtomogram_averaging_processing",
              "tomography_processing", "crystallography_processing", "pdb_reference", "emdb_reference",
              "additional_map", "mask", "software", "grant_reference"}


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _element(el):
    children = list(el)
    text = (el.text or "").strip()
    if not children and not el.attrib:
        return text
    d: dict = {k: v for k, v in el.attrib.items()}
    if text and not children:
        d["valueOf_"] = text
    for ch in children:
        tag = _local(ch.tag)
        val = _element(ch)
        if tag in d:
            if not isinstance(d[tag], list):
                d[tag] = [d[tag]]
            d[tag].append(val)
        else:
            d[tag] = [val] if tag in _LIST_TAGS else val
    return d


def parse_xml_bytes(data: bytes, *, source: str) -> EmdbInfo:
    """Parse an EMDB v3 header XML into :class:`EmdbInfo`."""
    return parse_entry(xml_to_api_shape(data, source=source), source=source)
