"""HTTP for the harvester, on requests with urllib3's ``Retry``: bounded small answers (JSON,
headers, index pages) and streaming, resumable, verified downloads into a content-addressed cache.

Cache layout (under ``cache_dir``)::

    objects/<h[:2]>/<h>        verified files named by their SHA-256 ``h`` (sealed read-only)
    urls/<u[:2]>/<u>.json      url -> {sha256, size, sample}; u = SHA-256 of the URL
    partial/<u>.part, .json    bytes received so far and their validators (ETag, total)
    partial/<u>.lock           held (``flock``) by the one writer of that URL; a killed process releases it

Every download streams through one loop that counts the bytes (cap ``max_bytes``), hashes them,
inflates ``.gz`` files to check every member's CRC-32/length and the inflated size (cap
``max_inflated``: gzip bombs), and writes them; only a complete, checked file is renamed into
``objects/``. A cache hit re-checks the object's size and a sampled digest (:func:`sample_digest`);
a corrupt object is removed and fetched again.

Retries: urllib3's ``Retry`` handles failed connections, read timeouts before the answer and the
statuses in :data:`RETRY_STATUS` (back-off doubling from ``backoff``, capped at ``max_backoff``;
``Retry-After`` in seconds or as an HTTP date, capped likewise). A body that drops mid-way resumes
with ``Range`` (guarded by ``If-Range``). 404/410 raise :class:`NotFound`; other answers >= 400 are
final. Time: ``timeout`` bounds the connection and every single read (idle time), ``total_timeout``
one whole call (all attempts; exceeding it is final for the call: the ``.part`` is kept for a resume).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util.retry import Retry

from rerefine.common.atomicfile import link_atomic, write_atomic
from rerefine.common.errors import ArchiveError

log = logging.getLogger(__name__)

DEFAULT_USER_AGENT = "rerefine (automated cryo-EM re-refinement; https://github.com/rerefine)"
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class NotFound(ArchiveError):
    """The server answered 404 or 410: the file does not exist there (final)."""


class BadContent(ArchiveError):
    """The bytes themselves are wrong or too many (size, gzip, a cap): final, nothing is kept."""


class _Drop(Exception):
    """The body stopped early (connection lost or idle too long): resume (internal)."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


class GzipCheck:
    """Incremental gzip check: every member inflated, its CRC-32 and length trailer checked by zlib,
    and the inflated total bounded by ``max_inflated`` bytes. Output goes in 64 KiB pieces and is
    discarded, so memory stays small even for a gzip bomb. :meth:`result` is None for a good stream."""

    def __init__(self, max_inflated: int | None = None):
        self.max_inflated, self.inflated, self.members = max_inflated, 0, 0
        self._d, self._open, self._consumed, self._error = None, False, 0, None

    @property
    def failed(self) -> bool:
        return self._error is not None

    def feed(self, data) -> None:
        buf = bytes(data)
        try:
            while buf and self._error is None:
                if self._d is None:
                    self._d, self._open = zlib.decompressobj(16 + zlib.MAX_WBITS), True
                out = self._d.decompress(buf, 1 << 16)
                while True:
                    self.inflated += len(out)
                    if self.max_inflated is not None and self.inflated > self.max_inflated:
                        self._error = f"inflates to more than {self.max_inflated / 2**20:g} MiB (gzip bomb?)"
                        return
                    if not self._d.unconsumed_tail or self._d.eof:
                        break
                    out = self._d.decompress(self._d.unconsumed_tail, 1 << 16)
                if self._d.eof:
                    buf, self._d, self._open = self._d.unused_data, None, False
                    self.members += 1
                else:
                    buf = b""
        except zlib.error as exc:
            self._error = f"corrupt gzip (member {self.members + 1}, near byte {self._consumed}: {_one_line(exc)})"
        self._consumed += len(data)

    def result(self) -> str | None:
        if self._error:
            return self._error
        if self._open:
            return "truncated gzip"
        return None if self.members else "empty file, not gzip"


def verify_gzip_file(path: Path, max_inflated: int | None = None) -> str | None:
    """None when ``path`` is a complete gzip stream (inflating to at most ``max_inflated`` bytes), else why."""
    g = GzipCheck(max_inflated)
    with open(path, "rb") as fh:
        while not g.failed and (piece := fh.read(1 << 20)):
            g.feed(piece)
    return g.result()


def sample_digest(path: Path, size: int, pieces: int = 16, width: int = 1 << 16) -> str:
    """SHA-256 of the size and of ``pieces`` slices of ``width`` bytes spread evenly over the file:
    a cache hit's cheap check (1 MiB read whatever the size) that catches zeroed or swapped blocks."""
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        for i in range(pieces):
            fh.seek(max(size - width, 0) * i // max(pieces - 1, 1))
            h.update(fh.read(width))
    return h.hexdigest()


@dataclass
class DownloadResult:
    """Where a URL's verified bytes are, and whether the network was used."""

    url: str
    path: Path
    sha256: str
    size: int
    from_cache: bool
    bytes_transferred: int = 0


@contextmanager
def _locked(path: Path):
    with open(path, "a") as fh:  # flock: one writer per URL across threads and processes
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


@dataclass
class HttpClient:
    """Polite, bounded HTTP access; one per run (it keeps the connection pool).

    ``timeout`` (s) bounds the connection and each read, ``total_timeout`` (s) one whole call;
    ``retries`` further attempts after transient failures, waits from ``backoff`` doubling up to
    ``max_backoff`` (s); ``min_interval`` (s) spaces requests to one host; ``max_answer_bytes``
    caps JSON answers, headers and index pages; ``chunk_size`` bytes per read.
    """

    user_agent: str = DEFAULT_USER_AGENT
    timeout: float = 60.0
    total_timeout: float = 3600.0
    retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 60.0
    min_interval: float = 0.2
    max_answer_bytes: int = 32 << 20
    chunk_size: int = 1 << 20
    session: requests.Session | None = None
    _last: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        self.session = self.session or requests.Session()
        self.session.headers.update({"User-Agent": self.user_agent, "Accept-Encoding": "identity"})
        retry = Retry(total=self.retries, connect=self.retries, read=self.retries, status=self.retries,
                      other=0, redirect=5, allowed_methods=None, status_forcelist=RETRY_STATUS,
                      backoff_factor=self.backoff, backoff_max=self.max_backoff, raise_on_status=False,
                      retry_after_max=max(1, int(self.max_backoff)))
        for prefix in ("http://", "https://"):
            self.session.mount(prefix, HTTPAdapter(max_retries=retry))

    def _pace(self, url: str) -> None:
        with self._lock:
            host, now = urlsplit(url).netloc, time.monotonic()
            wait = self._last.get(host, 0.0) + self.min_interval - now
            self._last[host] = now + max(wait, 0.0)
        if wait > 0:
            time.sleep(wait)

    def _request(self, method: str, url: str, what: str, **kw) -> requests.Response:
        self._pace(url)
        try:
            r = self.session.request(method, url, timeout=self.timeout, stream=True, **kw)
        except (requests.RequestException, Urllib3Error) as exc:
            inner = exc.args[0] if exc.args else None  # requests wraps urllib3's MaxRetryError(reason)
            timed_out = isinstance(exc, (requests.Timeout, Urllib3Timeout)) or \
                isinstance(getattr(inner, "reason", inner), Urllib3Timeout)
            cause = f"timed out after {self.timeout:g} s" if timed_out else f"connection failed ({_one_line(exc)})"
            raise ArchiveError(f"{what}: {cause} ({url}; gave up after {self.retries + 1} attempts)",
                               transient=True) from None
        if r.status_code < 400:
            return r
        r.close()
        if r.status_code in (404, 410):
            raise NotFound(f"{what}: not found (HTTP {r.status_code} {url})")
        tail = f" (gave up after {self.retries + 1} attempts)" if r.status_code in RETRY_STATUS else ""
        raise ArchiveError(f"{what}: HTTP {r.status_code} from {url}{tail}", transient=bool(tail))

    def _body(self, r: requests.Response, deadline: float, what: str):
        """The raw body in pieces; a drop or idle read raises :class:`_Drop`, the deadline ArchiveError."""
        try:
            # read1: whatever has arrived (up to a chunk), so a trickle cannot hold a read past the deadline
            while piece := r.raw.read1(self.chunk_size, decode_content=False):
                yield piece
                if time.monotonic() > deadline:
                    raise ArchiveError(f"{what}: took longer than the {self.total_timeout:g} s limit "
                                       f"({r.url})")  # not retried tonight: a stalled server stays stalled
        except (Urllib3Error, requests.RequestException, OSError) as exc:
            raise _Drop(f"connection dropped ({_one_line(exc)})") from None

    def _attempts(self, what: str, fn):
        deadline = time.monotonic() + self.total_timeout
        for k in range(self.retries + 1):
            if time.monotonic() > deadline:
                raise ArchiveError(f"{what}: took longer than the {self.total_timeout:g} s limit")
            try:
                return fn(deadline)
            except _Drop as exc:
                if k == self.retries:
                    raise ArchiveError(f"{what}: {exc} (gave up after {k + 1} attempts)", transient=True) from None
                time.sleep(min(self.max_backoff, self.backoff * 2**k))

    def get_bytes(self, url: str, *, what: str, max_bytes: int | None = None, missing_ok: bool = False,
                  method: str = "GET", **kw) -> bytes | None:
        """A small answer's body (at most ``max_bytes``, default ``max_answer_bytes``); None for a
        404/410 when ``missing_ok``. A gzip- or deflate-encoded answer is inflated under the same cap."""
        cap = max_bytes or self.max_answer_bytes

        def attempt(deadline):
            with self._request(method, url, what, **kw) as r:
                out = bytearray()
                for piece in self._body(r, deadline, what):
                    out += piece
                    if len(out) > cap:
                        raise ArchiveError(f"{what}: answer larger than {cap} bytes ({url})")
                enc = r.headers.get("Content-Encoding", "identity").strip().lower()
            if enc in ("gzip", "deflate", "x-gzip"):
                d = zlib.decompressobj(zlib.MAX_WBITS | 32)
                try:
                    out = d.decompress(bytes(out), cap + 1)
                except zlib.error as exc:
                    raise ArchiveError(f"{what}: corrupt {enc} answer ({_one_line(exc)})") from None
                if len(out) > cap:
                    raise ArchiveError(f"{what}: answer inflates beyond {cap} bytes ({url})")
            elif enc not in ("identity", ""):
                raise ArchiveError(f"{what}: unsupported Content-Encoding {enc[:20]!r} ({url})")
            return bytes(out)

        try:
            return self._attempts(what, attempt)
        except NotFound:
            if missing_ok:
                return None
            raise

    def get_json(self, url: str, *, what: str, allow_empty: bool = False):
        """GET ``url`` and parse JSON. 204/empty -> None when ``allow_empty``."""
        return self._json(self.get_bytes(url, what=what), url, what, allow_empty)

    def post_json(self, url: str, body: dict, *, what: str, allow_empty: bool = False):
        """POST ``body`` as JSON and parse the JSON answer (204/empty -> None when allowed)."""
        return self._json(self.get_bytes(url, what=what, method="POST", json=body), url, what, allow_empty)

    @staticmethod
    def _json(content: bytes, url: str, what: str, allow_empty: bool):
        if not content.strip():
            if allow_empty:
                return None
            raise ArchiveError(f"{what}: empty answer from {url}")
        try:
            return json.loads(content)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise ArchiveError(f"{what}: malformed JSON from {url} ({_one_line(exc)})") from None

    def download(self, url: str, cache_dir, *, what: str | None = None, verify_gzip: bool | None = None,
                 expected_size: int | None = None, max_bytes: int | None = None,
                 max_inflated: int | None = None, progress=None) -> DownloadResult:
        """Fetch ``url`` into the content-addressed cache (see the module docstring) and return the
        verified object. ``verify_gzip`` defaults to a ``.gz`` URL path; ``expected_size``, ``max_bytes``
        and ``max_inflated`` are in bytes; ``progress`` is None or ``callable(done, total_or_None)``.

        Raises
        ------
        ArchiveError
            One line naming ``what``: HTTP failure (:class:`NotFound` for 404/410), retries or time
            exhausted (``transient``; the ``.part`` is kept for a resume), size over a cap or unlike
            the announced/expected one, broken gzip (nothing kept).
        """
        what, cache = what or url, Path(cache_dir)
        ukey = hashlib.sha256(url.encode()).hexdigest()
        rec_path = cache / "urls" / ukey[:2] / f"{ukey}.json"
        parts = cache / "partial"
        parts.mkdir(parents=True, exist_ok=True)
        part, meta_path = parts / f"{ukey}.part", parts / f"{ukey}.json"
        gz = urlsplit(url).path.endswith(".gz") if verify_gzip is None else verify_gzip
        with _locked(parts / f"{ukey}.lock"):
            hit = _cached(cache, rec_path)
            if hit is not None:
                return DownloadResult(url, *hit, True, 0)
            st = {"sent": 0, "sha": hashlib.sha256(), "gz": GzipCheck(max_inflated) if gz else None, "have": 0}
            try:
                if part.exists() and _read_json(meta_path):  # an earlier call's partial transfer: check, resume
                    with open(part, "rb") as fh:
                        while piece := fh.read(1 << 20):
                            self._take(st, piece, what, url, max_bytes)
                self._attempts(what, lambda dl: self._attempt(url, what, part, meta_path, st, dl, max_bytes, progress))
                size = part.stat().st_size
                total = (_read_json(meta_path) or {}).get("total")
                problem = (f"size {size} B differs from the announced {total} B" if total not in (None, size) else
                           f"size {size} B differs from the expected {expected_size} B"
                           if expected_size not in (None, size) else st["gz"] and st["gz"].result())
                if problem:
                    raise BadContent(f"{what}: {problem} ({url})")
            except (BadContent, NotFound):  # the same bytes would come again: keep nothing
                part.unlink(missing_ok=True)
                meta_path.unlink(missing_ok=True)
                raise
            digest = st["sha"].hexdigest()
            obj = cache / "objects" / digest[:2] / digest
            obj.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(part, 0o444)
            os.replace(part, obj)
            write_atomic(rec_path, json.dumps({"url": url, "sha256": digest, "size": size,
                                               "sample": sample_digest(obj, size)}))
            meta_path.unlink(missing_ok=True)
        return DownloadResult(url, obj, digest, size, False, st["sent"])

    def _take(self, st: dict, piece: bytes, what: str, url: str, max_bytes: int | None) -> None:
        st["have"] += len(piece)
        if max_bytes is not None and st["have"] > max_bytes:
            raise BadContent(f"{what}: more than the {max_bytes / 2**20:g} MiB limit ({url})")
        st["sha"].update(piece)
        if st["gz"] is not None:
            st["gz"].feed(piece)
            if st["gz"].failed:
                raise BadContent(f"{what}: {st['gz'].result()} ({url})")

    @staticmethod
    def _restart(st: dict, part: Path) -> None:
        st.update(have=0, sha=hashlib.sha256(), gz=st["gz"] and GzipCheck(st["gz"].max_inflated))
        part.unlink(missing_ok=True)

    def _attempt(self, url, what, part: Path, meta_path: Path, st: dict, deadline, max_bytes, progress) -> None:
        meta = _read_json(meta_path) or {}
        have = st["have"]
        if have and meta.get("total") is not None and have >= meta["total"]:
            return  # an earlier call received everything; the checks follow
        headers = {"Range": f"bytes={have}-", "If-Range": meta.get("etag") or meta.get("last_modified") or ""} \
            if have else {}
        with self._request("GET", url, what, headers={k: v for k, v in headers.items() if v}) as r:
            total = _int(r.headers.get("Content-Length"))
            if r.status_code == 206:
                start, _, end_total = r.headers.get("Content-Range", "").partition("-")
                total = _int(end_total.partition("/")[2])
                if _int(start.rpartition(" ")[2]) != have:  # do not splice: start over on the next attempt
                    self._restart(st, part)
                    raise _Drop(f"server resumed at {start!r}, not byte {have}")
            elif have:  # the server ignored the Range: start again from byte 0
                self._restart(st, part)
            if max_bytes is not None and total is not None and total > max_bytes:
                raise BadContent(f"{what}: announces {total / 2**20:.1f} MiB, over the "
                                   f"{max_bytes / 2**20:g} MiB limit ({url})")
            write_atomic(meta_path, json.dumps({"total": total, "etag": r.headers.get("ETag"),
                                                "last_modified": r.headers.get("Last-Modified")}))
            try:
                with open(part, "r+b" if st["have"] else "wb") as fh:
                    fh.seek(st["have"])
                    fh.truncate()
                    for piece in self._body(r, deadline, what):
                        self._take(st, piece, what, url, max_bytes)
                        fh.write(piece)
                        st["sent"] += len(piece)
                        if progress:
                            progress(st["have"], total)
            except OSError as exc:
                raise BadContent(f"{what}: cannot write cache ({_one_line(exc)})") from None
            if total is not None and st["have"] < total:
                raise _Drop(f"connection closed at byte {st['have']} of {total}")


def _int(v) -> int | None:
    try:
        return int(str(v).strip())
    except ValueError:
        return None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _cached(cache: Path, rec_path: Path):
    """(object, sha256, size) when the URL's record names an intact object; a corrupt one is removed."""
    rec = _read_json(rec_path)
    if not isinstance(rec, dict) or not str(rec.get("sha256", "")).isalnum():
        return None
    obj = cache / "objects" / rec["sha256"][:2] / rec["sha256"]
    try:
        if obj.stat().st_size == rec.get("size") and sample_digest(obj, rec["size"]) == rec.get("sample"):
            return obj, rec["sha256"], rec["size"]
    except OSError:
        return None
    log.warning("cache object %s is corrupt: removed, fetching %s again", obj.name, rec.get("url"))
    obj.unlink(missing_ok=True)
    rec_path.unlink(missing_ok=True)
    return None


def link_into(obj: Path, dest: Path) -> Path:
    """Make ``dest`` name the cached object ``obj`` (hard link, else copy), atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        if os.path.samefile(dest, obj):
            return dest
    except OSError:
        pass
    return link_atomic(obj, dest)
