"""A local or institutional mirror of the archive (a directory or an http(s) URL).

Layout (the public archive's)::

    pdb/data/structures/divided/mmCIF/{key}/{id}.cif.gz        models (key: ids.divided_key)
    emdb/structures/EMD-{n}/map/emd_{n}.map.gz                  primary maps
    emdb/structures/EMD-{n}/other/emd_{n}_half_map_{1,2}.map.gz half-maps
    emdb/structures/EMD-{n}/header/emd-{n}-v30.xml              EMDB v3 header, or else
    emdb/structures/EMD-{n}/header/emd-{n}.json                 the EMDB API JSON answer

Discovery without a search service reads the models' own mmCIF records
(:func:`model_record`): ``_exptl.method``, the initial release date (revision 1 of
``_pdbx_audit_revision_history``), the EMDB id (``_pdbx_database_related``). A URL mirror
is listed through its HTML directory index (autoindex pages as served by Apache, nginx
or ftp.ebi.ac.uk), reading ``<a href>`` targets.

At archive scale (~230,000 models) a local mirror is not re-read each night: see
:mod:`.mirror_index`.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

from rerefine.common.errors import ArchiveError, InputError

from . import fields, ids
from .http import HttpClient
from .rcsb import ModelInfo

MODELS_DIR = "pdb/data/structures/divided/mmCIF"
EMDB_DIR = "emdb/structures"
_HREF = re.compile(r'href\s*=\s*"([^"?#]+)"', re.IGNORECASE)


class Mirror:
    """A mirror root: a directory (``/data/archive`` or ``file:///data/archive``) or a URL."""

    def __init__(self, location: str | Path):
        loc = str(location).strip()
        if not loc:
            raise InputError("mirror: empty location")
        if loc.startswith(("http://", "https://")):
            self.url: str | None = loc.rstrip("/") + "/"
            self.root: Path | None = None
        else:
            if loc.startswith("file://"):
                loc = unquote(urlsplit(loc).path)
            self.url = None
            self.root = Path(loc).expanduser().resolve()
            if not self.root.is_dir():
                raise InputError(f"mirror {loc}: not a directory")

    def __repr__(self) -> str:
        return f"Mirror({self.url or self.root})"

    @property
    def is_url(self) -> bool:
        return self.url is not None

    # -- relative paths ----------------------------------------------------------------------
    @staticmethod
    def model_rel(pid: str) -> str:
        pid = ids.pdb_id(pid)
        return f"{MODELS_DIR}/{ids.divided_key(pid)}/{pid}.cif.gz"

    @staticmethod
    def map_rel(eid: str, filename: str) -> str:
        eid = ids.emdb_id(eid)
        return f"{EMDB_DIR}/{eid}/map/{ids.safe_filename(filename)}"

    @staticmethod
    def half_map_rel(eid: str, filename: str) -> str:
        eid = ids.emdb_id(eid)
        return f"{EMDB_DIR}/{eid}/other/{ids.safe_filename(filename)}"

    @staticmethod
    def header_rels(eid: str) -> tuple[str, str]:
        """(v3 header XML, API JSON) relative paths of an EMDB entry's metadata."""
        eid = ids.emdb_id(eid)
        n = eid[4:]
        return (f"{EMDB_DIR}/{eid}/header/emd-{n}-v30.xml", f"{EMDB_DIR}/{eid}/header/emd-{n}.json")

    def locate(self, rel: str) -> str | Path:
        """URL or local path of a relative archive path."""
        if self.url is not None:
            return urljoin(self.url, rel)
        return self.root / rel

    # -- reading ---------------------------------------------------------------------------
    def read_small(self, rel: str, client: HttpClient | None, *, what: str) -> bytes | None:
        """Bytes of a small file (a header, an index page), or None when the mirror does not have it.

        Bounded like every small answer (``client.max_answer_bytes``; a local file too).
        """
        client = client or HttpClient()
        if self.url is None:
            p = self.root / rel
            if not p.is_file():
                return None
            if p.stat().st_size > client.max_answer_bytes:
                raise ArchiveError(f"{what}: {p} is larger than {client.max_answer_bytes} bytes")
            return p.read_bytes()
        return client.get_bytes(self.locate(rel), what=what, missing_ok=True)

    def list_model_ids(self, client: HttpClient | None = None) -> list[str]:
        """Every model id in the mirror (sorted); files that are not ``{id}.cif.gz`` are skipped."""
        found: list[str] = []
        if self.url is None:
            base = self.root / MODELS_DIR
            names = [p.name for p in base.glob("*/*.cif.gz")] if base.is_dir() else []
        else:
            client = client or HttpClient()
            names = []
            for sub in self._index(MODELS_DIR + "/", client):
                if sub.endswith("/"):
                    names += [n for n in self._index(f"{MODELS_DIR}/{sub}", client) if not n.endswith("/")]
        for name in names:
            if not name.endswith(".cif.gz"):
                continue
            try:
                pid = ids.pdb_id(name[: -len(".cif.gz")])
            except InputError:
                continue
            found.append(pid)
        return sorted(set(found))

    def _index(self, rel_dir: str, client: HttpClient) -> list[str]:
        """Names (``sub/`` for directories) linked from a directory index page."""
        url = urljoin(self.url, rel_dir)
        data = self.read_small(rel_dir, client, what=f"mirror index {url}")
        if data is None:
            return []
        base_path = urlsplit(url).path
        out = []
        for href in _HREF.findall(data.decode("utf-8", "replace")):
            target = urlsplit(urljoin(url, href))
            if target.netloc != urlsplit(url).netloc or not target.path.startswith(base_path):
                continue  # parent links, sort links, other hosts
            name = unquote(target.path[len(base_path):])
            if name and name.count("/") <= 1 and (name.count("/") == 0 or name.endswith("/")):
                out.append(name)
        return out


def model_record(path: str | Path, pid: str) -> ModelInfo:
    """The records of a model mmCIF (``.cif`` or ``.cif.gz``) that discovery needs.

    Release date: ``revision_date`` of ordinal 1 in ``_pdbx_audit_revision_history`` (the
    initial release), None when the file has no such record. EMDB id: the
    ``_pdbx_database_related`` EMDB row whose content type says "associated", else the
    first EMDB row. Resolution: ``_em_3d_reconstruction.resolution``.

    Raises
    ------
    InputError
        The file is not readable mmCIF.
    """
    import gemmi

    path = Path(path)
    try:
        doc = gemmi.cif.read(str(path))
        block = doc.sole_block() if len(doc) == 1 else doc[0]
    except Exception as exc:  # gemmi raises RuntimeError/ValueError/IndexError
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{pid}: {path.name} is not readable mmCIF ({msg})") from None

    def value(tag):
        v = block.find_value(tag)
        if v is None or v in ("?", "."):
            return None
        return gemmi.cif.as_string(v) or None

    def column_rows(prefix, tags):
        t = block.find(prefix, tags)
        return [[(None if r[i] in ("?", ".") else gemmi.cif.as_string(r[i])) for i in range(len(tags))]
                for r in t] if t else []

    warnings: list[str] = []
    date = None
    revs = column_rows("_pdbx_audit_revision_history.", ["ordinal", "revision_date"])
    dated = sorted((int(o) if o and o.isdigit() else 10**9, d) for o, d in revs if d)
    if dated:
        date = fields.iso_date(dated[0][1], what="initial revision date", warnings=warnings)
    related = column_rows("_pdbx_database_related.", ["db_name", "db_id", "content_type"])
    emdb_rows = [r for r in related if (r[0] or "").upper() == "EMDB" and r[1]]
    emdb_rows.sort(key=lambda r: 0 if "associated" in (r[2] or "").lower() else 1)
    emdb_list = []
    for r in emdb_rows:
        try:
            e = ids.emdb_id(r[1])
        except InputError:
            continue
        if e not in emdb_list:
            emdb_list.append(e)
    res = value("_em_3d_reconstruction.resolution")
    entities = column_rows("_entity.", ["type"])
    polymer = sum(1 for (t,) in entities if (t or "").lower() == "polymer") if entities else None
    authors = [a for (a,) in column_rows("_audit_author.", ["name"]) if a]
    resolution = fields.number(res, what="_em_3d_reconstruction.resolution", lo=fields.RESOLUTION_RANGE[0],
                               hi=fields.RESOLUTION_RANGE[1], warnings=warnings)
    return ModelInfo(pdb_id=pid, method=fields.text(value("_exptl.method"), 100),
                     title=fields.text(value("_struct.title")), release_date=date, resolution=resolution,
                     emdb_ids=emdb_list, polymer_count=polymer, authors=[a[:200] for a in authors],
                     warnings=[f"{pid}: {w}" for w in warnings])
