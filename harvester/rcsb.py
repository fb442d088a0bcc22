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

from . import ids
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
        total = int(ans.get("total_count") or 0)
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


def parse_entry(pid: str, entry: dict) -> ModelInfo:
    """:class:`ModelInfo` from a Data API ``core/entry`` answer.

    EMDB ids: the ``pdbx_database_related`` row with content type "associated EM volume"
    first, then ``rcsb_entry_container_identifiers.emdb_ids``.
    """
    if not isinstance(entry, dict):
        raise ArchiveError(f"{pid}: RCSB entry answer is not an object")
    methods = [e.get("method") for e in entry.get("exptl") or [] if isinstance(e, dict)]
    acc = entry.get("rcsb_accession_info") or {}
    info = entry.get("rcsb_entry_info") or {}
    res = None
    for rec in entry.get("em_3d_reconstruction") or []:
        if isinstance(rec, dict) and rec.get("resolution") is not None:
            res = float(rec["resolution"])
            break
    if res is None and info.get("resolution_combined"):
        res = float(info["resolution_combined"][0])
    emdb: list[str] = []
    related = [r for r in entry.get("pdbx_database_related") or [] if isinstance(r, dict)
               and str(r.get("db_name", "")).upper() == "EMDB"]
    related.sort(key=lambda r: 0 if "associated" in str(r.get("content_type", "")).lower() else 1)
    cont = entry.get("rcsb_entry_container_identifiers") or {}
    for raw in [r.get("db_id") for r in related] + list(cont.get("emdb_ids") or []):
        try:
            e = ids.emdb_id(raw)
        except InputError:
            continue
        if e not in emdb:
            emdb.append(e)
    date = acc.get("initial_release_date")
    return ModelInfo(
        pdb_id=pid,
        method=methods[0] if methods else None,
        title=(entry.get("struct") or {}).get("title"),
        release_date=str(date)[:10] if date else None,
        resolution=res,
        emdb_ids=emdb,
        polymer_count=info.get("polymer_entity_count"),
        authors=[a["name"] for a in entry.get("audit_author") or [] if isinstance(a, dict) and a.get("name")],
    )


def fetch_entry_info(client: HttpClient, data_url: str, pid: str) -> ModelInfo:
    """Data API metadata of one entry (``{data_url}/{PDBID}``)."""
    pid = ids.pdb_id(pid)
    ans = client.get_json(f"{data_url.rstrip('/')}/{pid.upper()}", what=f"{pid}: RCSB entry metadata")
    return parse_entry(pid, ans)
