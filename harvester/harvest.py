"""The harvester's API for the CLI and the nightly flow: :func:`discover` and :func:`fetch_entry`.

Discovery has two modes:

* **search** (``search_url`` given): RCSB Search API for EM entries released in
  ``[since, until]``, RCSB Data API for each entry, EMDB metadata from the mirror's
  header files when a mirror is given and has them, else from the EMDB API;
* **mirror walk** (a ``mirror`` and no ``search_url``): every ``{id}.cif.gz`` of the
  mirror, read for its own records (method, initial release date, EMDB id); EMDB
  metadata from the mirror's header files (v3 XML, else the API JSON), else the EMDB API
  when ``emdb_api_url`` is given. Entries whose files state no release date are
  *undated*: they are candidates when neither ``since`` nor ``until`` is given, and are
  recorded as rejected ("no release date stated") when a window is given.

Selection rules, in order (the first that fails gives the reason):

1. the method, when stated, is electron microscopy (a model that states no method but
   names an EMDB map is taken as an EM model - only local ``loc_`` models lack it);
2. the entry names an EMDB map (``_pdbx_database_related`` / Data API);
3. the model has at least one polymer entity (when the count is known);
4. the EMDB entry names a primary map file;
5. a reported resolution exists (EMDB's, else the model's) and is <= ``max_resolution``
   (unknown resolution is accepted only with ``accept_unknown_resolution=True``);
6. the uncompressed map size (EMDB ``size_kbytes``, else grid x voxel bytes) is at most
   ``max_map_mb`` MiB (unknown size passes).

Failures to get metadata (HTTP errors, malformed JSON/XML) give status ``"failed"`` with
the one-line cause, distinct from policy rejections (``"rejected"``): a failed entry is
worth another try on the next run, a rejected one is not. In a local mirror,
``only_changed=True`` (the nightly) judges only entries that are new or whose inputs changed
(:mod:`.mirror_index` keeps the judgements; :meth:`Discovery.remember`).

Length (~620 lines): one job, the harvester's public API; the selection rules above are one
decision per entry, shared by both discovery modes.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from rerefine.common.errors import ArchiveError, InputError, RerefineError
from rerefine.common.version import __version__

from . import emdb, ids, rcsb
from .http import HttpClient, link_into, verify_gzip_file
from .mirror import Mirror, model_record
from .mirror_index import KEPT_STATUSES, ModelIndex, file_stat, judgement_key, mirror_records, scan_models

log = logging.getLogger(__name__)

#: The local mirror's model index (:class:`rerefine.harvester.mirror.ModelIndex`) in the download cache.
MODEL_INDEX_NAME = "mirror-models.sqlite"
MiB = 1 << 20
MAX_MODEL_MB = 512.0  # default limit on a model mmCIF's bytes and inflated size (the largest PDB entries are ~100 MiB)


@dataclass
class Candidate:
    """One PDB entry found by :func:`discover`, with the verdict of the selection rules.

    ``status`` is "accepted", "rejected" (a selection rule failed) or "failed" (metadata
    could not be obtained); ``reason`` says why (empty when accepted). Resolution in Å,
    ``contour_level`` in the map's units, ``map_size_bytes`` uncompressed.
    """

    pdb_id: str
    emdb_id: str | None = None
    resolution: float | None = None
    release_date: str | None = None
    title: str | None = None
    contour_level: float | None = None
    map_file: str | None = None
    half_map_files: list[str] = field(default_factory=list)
    map_size_bytes: int | None = None
    status: str = "accepted"
    reason: str = ""
    method: str | None = None
    authors: list[str] = field(default_factory=list)
    source: str = "rcsb"  # "rcsb" or "mirror": where discovery found it
    sources: dict = field(default_factory=dict)  # figure -> where it came from (resolution, contour_level)
    warnings: list[str] = field(default_factory=list)  # archive fields present but ignored as unusable

    def to_dict(self) -> dict:
        return asdict(self)


class Discovery(list):
    """The candidates of one :func:`discover` call (a list of :class:`Candidate`), with

    ``unchanged``
        how many entries were left out because they were judged (and rejected) before from the
        same inputs (``only_changed=True``); their earlier judgement and its record stand;
    ``pending``
        this call's judgements, kept in the mirror's state file by :meth:`remember`;
    ``kept_inputs``
        ``pdb_id -> newest modification time (ns since the epoch)`` of the mirror files read by the
        judgement, for each accepted entry returned as judged before from the same inputs (not judged
        again): a run started after that time read those files as they are now.
    """

    def __init__(self, items=(), *, unchanged: int = 0, index_path=None, root=None, pending=(), forget=(),
                 kept_inputs=None):
        super().__init__(items)
        self.unchanged = unchanged
        self.kept_inputs = dict(kept_inputs or {})
        self.index_path = None if index_path is None else str(index_path)
        self.root = None if root is None else str(root)
        self.pending = list(pending)
        self.forget = list(forget)

    def remember(self) -> int:
        """Store this call's judgements (accepted and rejected entries) in the mirror's state file, so a
        later ``discover(..., only_changed=True)`` leaves the unchanged ones out. Call it once the
        judgements are recorded (the nightly: after storing each skip's reason). Returns how many."""
        n = len(self.pending)
        if self.index_path is None or not (self.pending or self.forget):
            return 0
        index = ModelIndex(self.index_path)
        try:
            index.store_judgements(Path(self.root), self.pending, self.forget)
        finally:
            index.close()
        self.pending, self.forget = [], []
        return n


@dataclass
class EntryFiles:
    """One entry's local files (model, primary map, half-maps) and its archive metadata.

    The common part of :class:`FetchedEntry` and the pipeline's ``rerefine.flows.pipeline.EntryJob``;
    :meth:`to_dict`/:meth:`from_dict` carry it across processes (paths as strings).
    """

    pdb_id: str
    emdb_id: str | None
    model_path: Path
    map_path: Path
    half_map_paths: list[Path] = field(default_factory=list)
    metadata: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["model_path"] = str(self.model_path)
        d["map_path"] = str(self.map_path)
        d["half_map_paths"] = [str(p) for p in self.half_map_paths]
        return d

    @classmethod
    def from_dict(cls, d: dict):
        d = dict(d)
        d["model_path"] = Path(d["model_path"])
        d["map_path"] = Path(d["map_path"])
        d["half_map_paths"] = [Path(p) for p in d.get("half_map_paths") or []]
        return cls(**d)


@dataclass
class FetchedEntry(EntryFiles):
    """Local files of one fetched entry and the metadata the later stages need.

    ``status`` is "fetched" (bytes crossed the network) or "cached" (all files were
    already in the cache or are used in place from a local mirror).
    """

    status: str = "fetched"
    bytes_transferred: int = 0


def _client(session) -> HttpClient:
    if session is None:
        return HttpClient()
    if isinstance(session, HttpClient):
        return session
    if isinstance(session, requests.Session):
        return HttpClient(session=session)
    raise TypeError("session must be an HttpClient or a requests.Session")


def _as_date(value) -> dt.date | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise InputError(f"bad date {str(value)[:30]!r}: expected YYYY-MM-DD") from None


def _as_mirror(mirror) -> Mirror | None:
    if mirror is None or mirror == "":
        return None
    return mirror if isinstance(mirror, Mirror) else Mirror(mirror)


def discover(since=None, until=None, *, search_url: str | None = None, data_url: str | None = None,
             emdb_api_url: str | None = None, mirror=None, max_resolution: float = 5.0,
             max_map_mb: float = 2048.0, limit: int | None = None, session=None,
             accept_unknown_resolution: bool = False, cache_dir=None, only_changed: bool = False,
             run_key: str = "") -> Discovery:
    """Find EM entries released in ``[since, until]`` and judge them by the selection rules.

    Parameters
    ----------
    since, until : datetime.date or "YYYY-MM-DD", optional
        Release-date window (inclusive). Search mode needs ``since``.
    search_url, data_url : str, optional
        RCSB Search API and Data API ``core/entry`` base URLs. Without ``search_url``
        a ``mirror`` is walked instead.
    emdb_api_url : str, optional
        EMDB API ``entry`` base URL (``{emdb_api_url}/EMD-N``), used when a mirror has no
        header for the entry (or there is no mirror).
    mirror : str, Path or Mirror, optional
        Local directory or URL with the archive layout (see :mod:`.mirror`).
    max_resolution : float
        Reported resolution limit, Å.
    max_map_mb : float
        Uncompressed primary-map size limit, MiB.
    limit : int, optional
        Stop once this many entries are accepted (rejected ones found before still listed).
    session : HttpClient or requests.Session, optional
        HTTP access (retries, politeness, User-Agent). A default HttpClient otherwise.
    accept_unknown_resolution : bool
        Accept entries whose files state no resolution (e.g. the sample archive's local
        model); the refinement must then be given a resolution.
    cache_dir : path-like, optional
        Download cache, needed to read models when walking a URL mirror; a local mirror's state
        file (:data:`MODEL_INDEX_NAME`) is kept there.
    only_changed : bool
        Local mirror only: judge only entries that are new or whose inputs changed since a judgement
        stored by :meth:`Discovery.remember`. Inputs: the model file's size and modification time,
        the EMDB header and map files' (when the judgement read the header from the mirror), the
        selection settings, the date window, the pipeline version and ``run_key``. An unchanged
        accepted entry is returned as judged then (not judged again); an unchanged rejected one is
        left out and counted in ``Discovery.unchanged``. Failed entries are always judged again.
        Either way a local mirror's judgements can be kept for later calls (:meth:`Discovery.remember`).
    run_key : str
        What else the caller's records of the judgements depend on (the nightly: its parameters
        and database), part of the judgement key.

    Returns
    -------
    Discovery
        A list of every entry looked at, accepted ones and rejected/failed ones with their reason.
    """
    since_d, until_d = _as_date(since), _as_date(until)
    if since_d and until_d and since_d > until_d:
        raise InputError(f"date window: since {since_d} is after until {until_d}")
    client = _client(session)
    mir = _as_mirror(mirror)
    rules = dict(max_resolution=max_resolution, max_map_bytes=max_map_mb * MiB,
                 accept_unknown_resolution=accept_unknown_resolution)
    out: list[Candidate] = []
    n_accepted = 0

    def judge_and_add(cand: Candidate, info: rcsb.ModelInfo) -> None:
        nonlocal n_accepted
        _judge(cand, info, client, mir, emdb_api_url, **rules)
        out.append(cand)
        if cand.status == "accepted":
            n_accepted += 1

    if search_url:
        if not data_url:
            raise InputError("discover: a search_url needs a data_url (RCSB Data API)")
        if since_d is None:
            raise InputError("discover: the RCSB search needs a since date")
        for pid in rcsb.search_em_entries(client, search_url, since_d, until_d):
            if limit is not None and n_accepted >= limit:
                break
            cand = Candidate(pdb_id=pid, source="rcsb")
            with guarded(cand, "judging its RCSB and EMDB metadata", out):
                judge_and_add(cand, rcsb.fetch_entry_info(client, data_url, pid))
        return Discovery(out)

    if mir is None:
        raise InputError("discover: give a search_url (RCSB) or a mirror")
    cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "rerefine-harvest-cache"
    indexed, kept, files, key, n_unchanged, kept_inputs = None, {}, {}, "", 0, {}
    if not mir.is_url:  # a local mirror: parse only the model files new or changed since the last walk
        index = ModelIndex(cache / MODEL_INDEX_NAME)
        try:
            files = scan_models(mir.root)
            todo = files
            key = judgement_key(version=__version__, since=since_d, until=until_d, run_key=run_key, **rules)
            if only_changed:
                done = index.unchanged(mir.root, files, key)
                kept = index.accepted_candidates(mir.root, [p for p, (st, _m) in done.items() if st == "accepted"])
                todo = [p for p in files if p not in done or (done[p][0] == "accepted" and p not in kept)]
                n_unchanged = sum(st == "rejected" for st, _m in done.values())
                kept_inputs = {p: done[p][1] for p in kept}
            indexed, unreadable = mirror_records(mir, index, files, todo)
        finally:
            index.close()
        pids = sorted(set(indexed) | set(unreadable) | set(kept))
    else:
        pids = mir.list_model_ids(client)
    pending, forget = [], []
    for pid in pids:
        if limit is not None and n_accepted >= limit:
            break
        if pid in kept:  # judged before from the same inputs: that judgement stands
            out.append(candidate_from_dict(kept[pid]))
            n_accepted += 1
            continue
        cand = Candidate(pdb_id=pid, source="mirror")
        n_out = len(out)
        with guarded(cand, "reading its mirror mmCIF", out):
            if indexed is None:
                info = model_record(_model_file(mir, pid, client, cache, progress=False)[0], pid)
            elif pid in unreadable:
                raise unreadable[pid]
            else:
                info = indexed[pid]
            if info.release_date is None and (since_d or until_d):
                cand.title, cand.method = info.title, info.method
                cand.status, cand.reason = "rejected", "no release date stated (undated entry outside a dated window)" \
                    + "".join(f"; {w}" for w in info.warnings if "date" in w)
                out.append(cand)
                continue
            d = _as_date(info.release_date)
            if d and ((since_d and d < since_d) or (until_d and d > until_d)):
                continue  # outside the window: not a candidate of this run
            judge_and_add(cand, info)
        if indexed is not None and len(out) > n_out:  # judged this time: kept if remembered
            row = _judgement_row(mir.root, cand, files[pid], key)
            if row is None:
                forget.append(pid)
            else:
                pending.append(row)
    if indexed is None:
        return Discovery(out)
    returned = {c.pdb_id for c in out}
    return Discovery(out, unchanged=n_unchanged, index_path=cache / MODEL_INDEX_NAME, root=mir.root,
                     pending=pending, forget=forget,
                     kept_inputs={p: m for p, m in kept_inputs.items() if p in returned})


def _judgement_row(root: Path, cand: Candidate, model: tuple[str, int, int], key: str) -> tuple | None:
    """The state-file row of a judgement (see :meth:`ModelIndex.store_judgements`), or None when it
    must be made again next time: a failure, or EMDB metadata that came from outside the mirror
    (neither header file there), which may change without any file changing."""
    if cand.status not in KEPT_STATUSES:
        return None
    deps = []
    if cand.emdb_id:
        heads = [(rel, *file_stat(root / rel)) for rel in Mirror.header_rels(cand.emdb_id)]
        if all(size < 0 for _rel, size, _m in heads):
            return None
        deps += heads
        if cand.map_file:
            rel = Mirror.map_rel(cand.emdb_id, cand.map_file)
            deps.append((rel, *file_stat(root / rel)))
    return (cand.pdb_id, model[1], model[2], key, json.dumps(deps), cand.status, cand.reason,
            json.dumps(cand.to_dict()) if cand.status == "accepted" else None)


@contextmanager
def guarded(cand: Candidate, stage: str, out: list | None = None):
    """The per-entry guard: any exception while discovering, judging or fetching one entry becomes
    that entry's failure (status "failed", reason naming the entry, the stage and the cause) and is
    appended to ``out`` when given; the caller goes on with the next entry. Only a KeyboardInterrupt
    or a SystemExit passes."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - the guard's job: one bad record never ends the night
        if isinstance(exc, RerefineError):
            cause = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        else:
            log.debug("%s: %s failed", cand.pdb_id, stage, exc_info=True)
            cause = f"unusable data ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        if not cause.startswith(cand.pdb_id):
            cause = f"{cand.pdb_id}: {stage}: {cause}"
        cand.status, cand.reason = "failed", cause[:500]
        if out is not None and cand not in out:
            out.append(cand)


def candidate_for(pdb_id: str, *, data_url: str | None = None, emdb_api_url: str | None = None, mirror=None,
                  max_resolution: float = 5.0, max_map_mb: float = 2048.0, session=None,
                  accept_unknown_resolution: bool = False, cache_dir=None) -> Candidate:
    """Judge one named entry by the same rules as :func:`discover` (for ``rerefine entry``).

    The model record comes from the mirror when one is given, else from the RCSB Data API.
    """
    pid = ids.pdb_id(pdb_id)
    client = _client(session)
    mir = _as_mirror(mirror)
    cand = Candidate(pdb_id=pid, source="mirror" if mir else "rcsb")
    with guarded(cand, "judging its metadata"):
        if mir is not None:
            cache = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "rerefine-harvest-cache"
            info = model_record(_model_file(mir, pid, client, cache, progress=False)[0], pid)
        else:
            if not data_url:
                raise InputError(f"{pid}: no RCSB Data API URL and no mirror to look the entry up in")
            info = rcsb.fetch_entry_info(client, data_url, pid)
        _judge(cand, info, client, mir, emdb_api_url, max_resolution=max_resolution,
               max_map_bytes=max_map_mb * MiB, accept_unknown_resolution=accept_unknown_resolution)
    return cand


def _judge(cand: Candidate, info: rcsb.ModelInfo, client: HttpClient, mir: Mirror | None,
           emdb_api_url: str | None, *, max_resolution: float, max_map_bytes: float,
           accept_unknown_resolution: bool) -> None:
    cand.title, cand.release_date, cand.method = info.title, info.release_date, info.method
    cand.authors = list(info.authors)
    cand.resolution = info.resolution
    cand.warnings = list(info.warnings)
    if info.resolution is not None:
        cand.sources["resolution"] = "model mmCIF record" if cand.source == "mirror" else "RCSB entry"

    def reject(reason: str) -> None:
        cand.status, cand.reason = "rejected", reason

    if info.method and "ELECTRON MICROSCOPY" not in info.method.upper():
        return reject(f"method {info.method}, not electron microscopy")
    if not info.emdb_ids:
        return reject("no associated EMDB map stated")
    cand.emdb_id = info.emdb_ids[0]
    if info.polymer_count == 0:
        return reject("model has no polymer chain")
    try:
        em = emdb_metadata(cand.emdb_id, mirror=mir, emdb_api_url=emdb_api_url, session=client)
    except RerefineError as exc:
        cand.status, cand.reason = "failed", f"{cand.pdb_id}: {exc}"
        return
    cand.contour_level = em.contour_level
    cand.map_file = em.map_file
    cand.half_map_files = list(em.half_map_files)
    cand.map_size_bytes = em.map_size_bytes
    cand.warnings += em.warnings
    if em.contour_level is not None:
        cand.sources["contour_level"] = f"EMDB {em.emdb_id} recommended contour"
    if em.resolution is not None:
        cand.resolution = em.resolution
        cand.sources["resolution"] = f"EMDB {em.emdb_id}"
    if not cand.authors:
        cand.authors = list(em.authors)
    if not cand.map_file:
        return reject(f"{cand.emdb_id} names no primary map file")
    if cand.resolution is None:
        if not accept_unknown_resolution:
            return reject("no reported resolution")
    elif cand.resolution > max_resolution:
        return reject(f"resolution {cand.resolution:g} Å worse than the {max_resolution:g} Å limit")
    if cand.map_size_bytes is not None and cand.map_size_bytes > max_map_bytes:
        return reject(f"map {cand.map_size_bytes / MiB:.0f} MiB over the {max_map_bytes / MiB:.0f} MiB limit")
    cand.status, cand.reason = "accepted", ""


def emdb_metadata(eid: str, *, mirror=None, emdb_api_url: str | None = None, session=None) -> emdb.EmdbInfo:
    """EMDB metadata: mirror header XML, else mirror API JSON, else ``{emdb_api_url}/EMD-N``.

    Raises
    ------
    ArchiveError
        Nothing found anywhere, HTTP failure, malformed JSON/XML.
    """
    eid = ids.emdb_id(eid)
    client = _client(session)
    mir = _as_mirror(mirror)
    if mir is not None:
        xml_rel, json_rel = mir.header_rels(eid)
        data = mir.read_small(xml_rel, client, what=f"{eid} header XML")
        if data is not None:
            return emdb.parse_xml_bytes(data, source=f"{eid} header XML")
        data = mir.read_small(json_rel, client, what=f"{eid} header JSON")
        if data is not None:
            return emdb.parse_json_bytes(data, source=f"{eid} header JSON")
    if emdb_api_url:
        ans = client.get_json(f"{emdb_api_url.rstrip('/')}/{eid}", what=f"{eid}: EMDB entry metadata")
        info = emdb.parse_entry(ans, source=f"{eid}: EMDB entry metadata")
        if info.emdb_id != eid:
            raise ArchiveError(f"{eid}: EMDB API answered for {info.emdb_id}")
        return info
    raise ArchiveError(f"{eid}: no EMDB header in the mirror and no EMDB API configured")


# -- fetching ---------------------------------------------------------------------------------

def _model_file(mir: Mirror, pid: str, client: HttpClient, cache: Path, progress) -> tuple[Path, int]:
    rel = mir.model_rel(pid)
    path, n = _mirror_file(mir, rel, client, cache, progress, what=f"{pid}: model", max_mb=MAX_MODEL_MB)
    if mir.is_url:  # cached objects have no suffix; gemmi needs ".cif.gz" to see gzip
        path = link_into(path, cache / "entries" / pid / f"{pid}.cif.gz")
    return path, n


def _mirror_file(mir: Mirror, rel: str, client: HttpClient, cache: Path, progress, *, what: str,
                 max_mb: float | None = None) -> tuple[Path, int]:
    """(local path, bytes transferred) of a mirror file; local files are used in place.

    ``max_mb`` bounds the file's bytes and, for gzip files, its inflated size (MiB).
    """
    loc = mir.locate(rel)
    cap = None if max_mb is None else int(max_mb * MiB)
    if isinstance(loc, Path):
        if not loc.is_file():
            raise ArchiveError(f"{what}: not in the mirror ({rel})")
        if cap is not None and loc.stat().st_size > cap:
            raise ArchiveError(f"{what}: {loc.stat().st_size / MiB:.1f} MiB, over the {max_mb:g} MiB limit ({loc})")
        if loc.name.endswith(".gz"):
            problem = verify_gzip_file(loc, cap)
            if problem:
                raise ArchiveError(f"{what}: {problem} ({loc})")
        return loc, 0
    r = client.download(loc, cache, what=what, progress=progress, max_bytes=cap, max_inflated=cap)
    return r.path, r.bytes_transferred


def fetch_entry(candidate: Candidate, cache_dir, *, mirror=None, files_url: str | None = None,
                emdb_files_url: str | None = None, session=None, progress=None,
                half_maps: bool = True, max_map_mb: float | None = None,
                max_model_mb: float | None = MAX_MODEL_MB) -> FetchedEntry:
    """Fetch the model (mmCIF), primary map and half-maps of an accepted candidate.

    Parameters
    ----------
    candidate : Candidate
        From :func:`discover` (must name an EMDB id and a map file).
    cache_dir : path-like
        Content-addressed download cache; the entry's files are also linked under
        ``cache_dir/entries/{pdb_id}/`` with their archive names.
    mirror : str, Path or Mirror, optional
        Take files from the mirror (a local mirror's files are used in place after a
        gzip check; a URL mirror's are downloaded).
    files_url : str, optional
        RCSB file server (``{files_url}/{ID}.cif.gz``), used without a mirror.
    emdb_files_url : str, optional
        EMDB structures base (``{base}/EMD-N/map/{file}``, half-maps in ``/other/``).
    session : HttpClient or requests.Session, optional
    progress : None, bool or callable
        Download progress (see :meth:`HttpClient.download`).
    half_maps : bool
        Also fetch the half-maps. A half-map that cannot be fetched does not fail the
        entry: both are dropped and ``metadata["warnings"]`` says why.
    max_map_mb, max_model_mb : float, optional
        Limits (MiB) on each map's and on the model's bytes and inflated size, checked on the
        actual bytes while they arrive (metadata can be wrong).

    Raises
    ------
    ArchiveError, InputError
        One-line message naming the entry and the cause.
    """
    pid = ids.pdb_id(candidate.pdb_id)
    if not candidate.emdb_id or not candidate.map_file:
        raise InputError(f"{pid}: candidate names no EMDB map; cannot fetch")
    eid = ids.emdb_id(candidate.emdb_id)
    cache = Path(cache_dir)
    client = _client(session)
    mir = _as_mirror(mirror)
    entry_dir = cache / "entries" / pid
    sent = 0
    warnings: list[str] = []
    sources: dict = {}

    def get(rel: str | None, url: str | None, what: str, max_mb: float | None) -> Path:
        nonlocal sent
        if mir is not None:
            path, n = _mirror_file(mir, rel, client, cache, progress, what=what, max_mb=max_mb)
            sources[what] = str(mir.locate(rel))
        else:
            cap = None if max_mb is None else int(max_mb * MiB)
            r = client.download(url, cache, what=what, progress=progress, max_bytes=cap, max_inflated=cap)
            path, n = r.path, r.bytes_transferred
            sources[what] = url
        sent += n
        return path

    if mir is None and not (files_url and emdb_files_url):
        raise InputError(f"{pid}: fetch needs a mirror or files_url and emdb_files_url")
    model_name = f"{pid}.cif.gz"
    model_url = None
    if mir is None:
        if ids.is_local(pid):
            raise InputError(f"{pid}: a local model id exists only in a mirror")
        remote = (ids.classic_of(pid) or pid).upper()
        model_url = f"{files_url.rstrip('/')}/{remote}.cif.gz"
    base = (emdb_files_url or "").rstrip("/")
    model = get(Mirror.model_rel(pid) if mir else None, model_url, f"{pid}: model", max_model_mb)
    mp = get(Mirror.map_rel(eid, candidate.map_file) if mir else None,
             f"{base}/{eid}/map/{ids.safe_filename(candidate.map_file)}", f"{pid}: map {eid}", max_map_mb)
    halves: list[Path] = []
    if half_maps and candidate.half_map_files:
        try:
            for name in candidate.half_map_files:
                halves.append(get(Mirror.half_map_rel(eid, name) if mir else None,
                                  f"{base}/{eid}/other/{ids.safe_filename(name)}", f"{pid}: half-map {name}",
                                  max_map_mb))
        except RerefineError as exc:
            warnings.append(f"half-maps not used: {exc}")
            halves = []

    # Named views of the cached objects; local-mirror files stay where they are.
    def named(path: Path, name: str) -> Path:
        if mir is not None and not mir.is_url:
            return path
        return link_into(path, entry_dir / ids.safe_filename(name))

    model_p = named(model, model_name)
    map_p = named(mp, candidate.map_file)
    half_p = [named(h, n) for h, n in zip(halves, candidate.half_map_files)]
    metadata = {
        "pdb_id": pid, "emdb_id": eid, "title": candidate.title, "resolution": candidate.resolution,
        "contour_level": candidate.contour_level, "release_date": candidate.release_date,
        "authors": list(candidate.authors), "sources": sources, "warnings": list(candidate.warnings) + warnings,
        "figure_sources": dict(candidate.sources),
    }
    return FetchedEntry(pdb_id=pid, emdb_id=eid, model_path=model_p, map_path=map_p, half_map_paths=half_p,
                        metadata=metadata, status="fetched" if sent else "cached", bytes_transferred=sent)


def candidate_from_dict(d: dict) -> Candidate:
    """Rebuild a :class:`Candidate` from :meth:`Candidate.to_dict` output (e.g. across processes)."""
    known = {f for f in Candidate.__dataclass_fields__}
    return Candidate(**{k: v for k, v in d.items() if k in known})



