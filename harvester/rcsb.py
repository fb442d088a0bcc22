"""Discovery through the RCSB APIs: Search API v2 for EM entries released in a date
window, Data API ``core/entry/{id}`` for each entry's metadata.

Search query: ``exptl.method`` exact_match ``ELECTRON MICROSCOPY`` AND
``rcsb_accession_info.initial_release_date`` >= since (and <= until), entries sorted by
release date, paged with ``request_options.paginate``. The API answers 204 with no body
when nothing matches.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from rerefine.common.errors import ArchiveError, InputError

from . import fields, ids
from .http import HttpClient

EM_METHOD = "ELECTRON MICROSCOPY"


def search_query(since: dt.date | None, until: dt.date | None, start: int = 0, rows: int = 100) -> dict:
    """The Search API v2 request for EM entries released in ``[since, until]``."""
    nodes = [{"type": "terminal", "service": "text",
              "parameters": {"attribute": "exptl.method", "operator": "exact_match", "value": EM_METHOD}}]
    if since is not None:
        nodes.append({"type": "terminal", "service": "text",
                      "parameters": {"attribute": "rcsb_accession_info.initial_release_date",
                                     "operator": "greater_or_equal", "value": f"{since.isoformat()}T00:00:00Z"}})
    if until is not None:
        nodes.append({"type": "terminal", "service": "text",
                      "parameters": {"attribute": "rcsb_accession_info.initial_release_date",
                                     "operator": "less_or_equal", "value": f"{until.isoformat()}T23:59:59Z"}})
    return {
        "query": {"type": "group", "logical_operator": "and", "nodes": nodes},
        "return_type": "entry",
        "request_options": {
            "paginate": {"start": start, "rows": rows},
            "sort": [{"sort_by": "rcsb_accession_info.initial_release_date", "direction": "asc"}],
        },
    }


def search_em_entries(client: HttpClient, search_url: str, since, until, *, limit: int | None = None,
                      rows: int = 100) -> list[str]:
    """PDB ids of EM entries released in the window (validated, lower case, in answer order).

    Identifiers that are not PDB entry ids (e.g. computed models ``AF_...``) are skipped.

    Raises
    ------
    ArchiveError
        HTTP failure or an answer without a ``result_set``.
    """
    out: list[str] = []
    start = 0
    while True:
        ans = client.post_json(search_url, search_query(since, until, start, rows), what="RCSB search",
                               allow_empty=True)
        if ans is None:  # 204: nothing matches
            break
        if not isinstance(ans, dict) or not isinstance(ans.get("result_set"), list):
            raise ArchiveError(f"RCSB search: answer without result_set from {search_url}")
        page = ans["result_set"]
        for item in page:
            ident = item.get("identifier") if isinstance(item, dict) else item
            try:
                pid = ids.pdb_id(ident)
            except InputError:
                continue
            if pid not in out:
                out.append(pid)
        total = fields.count(ans.get("total_count"), what="RCSB search total_count") or 0
        start += len(page)
        if not page or start >= total or (limit is not None and len(out) >= limit):
            break
    return out[:limit] if limit is not None else out


@dataclass
class ModelInfo:
    """What the harvester needs from a PDB entry's metadata. Unknown values are None/empty."""

    pdb_id: str
    method: str | None = None
    title: str | None = None
    release_date: str | None = None
    resolution: float | None = None
    emdb_ids: list[str] = field(default_factory=list)  # associated map first
    polymer_count: int | None = None
    authors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # fields present but unusable (ignored)


def parse_entry(pid: str, entry: dict) -> ModelInfo:
    """:class:`ModelInfo` from a Data API ``core/entry`` answer.

    EMDB ids: the ``pdbx_database_related`` row with content type "associated EM volume"
    first, then ``rcsb_entry_container_identifiers.emdb_ids``.
    """
    if not isinstance(entry, dict):
        raise ArchiveError(f"{pid}: RCSB entry answer is not an object")
    warnings: list[str] = []

    def rows(key) -> list[dict]:
        v = entry.get(key)
        return [r for r in v if isinstance(r, dict)] if isinstance(v, list) else []

    def obj(key) -> dict:
        v = entry.get(key)
        return v if isinstance(v, dict) else {}

    def resolution(value):
        return fields.number(value, what="RCSB resolution", lo=fields.RESOLUTION_RANGE[0],
                             hi=fields.RESOLUTION_RANGE[1], warnings=warnings)

    methods = [fields.text(e.get("method"), 100) for e in rows("exptl")]
    info = obj("rcsb_entry_info")
    res = next((r for r in (resolution(rec.get("resolution")) for rec in rows("em_3d_reconstruction"))
                if r is not None), None)
    combined = info.get("resolution_combined")
    if res is None and isinstance(combined, list) and combined:
        res = resolution(combined[0])
    emdb: list[str] = []
    related = [r for r in rows("pdbx_database_related") if str(r.get("db_name", "")).upper() == "EMDB"]
    related.sort(key=lambda r: 0 if "associated" in str(r.get("content_type", "")).lower() else 1)
    cont_ids = obj("rcsb_entry_container_identifiers").get("emdb_ids")
    for raw in [r.get("db_id") for r in related] + (cont_ids if isinstance(cont_ids, list) else []):
        try:
            e = ids.emdb_id(raw)
        except InputError:
            continue
        if e not in emdb:
            emdb.append(e)
    return ModelInfo(
        pdb_id=pid,
        method=methods[0] if methods else None,
        title=fields.text(obj("struct").get("title")),
        release_date=fields.iso_date(obj("rcsb_accession_info").get("initial_release_date"),
                                     what="RCSB initial release date", warnings=warnings),
        resolution=res,
        emdb_ids=emdb,
        polymer_count=fields.count(info.get("polymer_entity_count"), what="RCSB polymer entity count",
                                   warnings=warnings),
        authors=[a for a in (fields.text(r.get("name"), 200) for r in rows("audit_author")) if a],
        warnings=[f"{pid}: {w}" for w in warnings],
    )


def fetch_entry_info(client: HttpClient, data_url: str, pid: str) -> ModelInfo:
    """Data API metadata of one entry (``{data_url}/{PDBID}``)."""
    pid = ids.pdb_id(pid)
    ans = client.get_json(f"{data_url.rstrip('/')}/{pid.upper()}", what=f"{pid}: RCSB entry metadata")
    return parse_entry(pid, ans)
