"""HTTP for the harvester: polite JSON requests and streaming, resumable downloads into a
content-addressed cache.

Cache layout (all under ``cache_dir``)::

    objects/<h[:2]>/<h>          complete, verified files, named by their SHA-256 ``h``
    urls/<u[:2]>/<u>.json        url -> {sha256, size, etag, last_modified}; u = SHA-256 of the URL
    partial/<u>.part             bytes received so far for an unfinished download
    partial/<u>.json             validators (ETag/Last-Modified, total size) of that partial

A file enters ``objects/`` only by an atomic rename after its size (Content-Length /
Content-Range total) and, for ``*.gz`` names, its gzip stream (CRC and length of every
member) have been checked, so the cache never holds a half-file. A URL whose record and
object exist is served from the cache without any network request. An interrupted
download keeps its ``.part`` and resumes with ``Range: bytes=N-`` (guarded by
``If-Range``), so only the missing bytes cross the network again.

Retries: timeouts, dropped connections, 429 and 5xx answers are retried with
exponential back-off (``backoff * 2**k``, capped, ``Retry-After`` honoured); 404/410 and
other 4xx answers are final. Requests to one host are spaced by ``min_interval`` seconds.

Bytes are read from the socket straight into a fixed pool of reused buffers (``readinto``);
worker threads compute the SHA-256, write the ``.part`` file (``O_DIRECT`` where possible)
and inflate the gzip stream to check it, so the checks overlap with the transfer on a multi-core machine
and memory stays flat whatever the file size. A broken gzip member stops the transfer
early. The optional ``isal`` package (ISA-L) speeds the gzip check up about twofold.

Length: one job, getting archive files right: the client, the resumable download and its
verification (hash, gzip check, disk writes on worker threads) share one buffer pool and one state;
split, they would only pass that state around.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import mmap
import os
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import requests

from rerefine.common.atomicfile import write_atomic
from rerefine.common.errors import ArchiveError

try:  # ISA-L's inflate: about twice zlib's speed on map data, same CRC-32/ISIZE checks
    from isal import isal_zlib as _inflate

    _INFLATE_ERRORS: tuple = (zlib.error, _inflate.error)
except ImportError:  # pragma: no cover - optional speed-up
    _inflate = zlib
    _INFLATE_ERRORS = (zlib.error,)

log = logging.getLogger(__name__)

DEFAULT_USER_AGENT = "rerefine (automated cryo-EM re-refinement; https://github.com/rerefine)"

# Answers worth another try: the server or a proxy is busy or broken for a moment.
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
#: Exceptions of requests worth another try (timeouts, dropped connections).
TRANSIENT_ERRORS = (
    requests.exceptions.Timeout,
    requests.exceptions.ConnectionError,
    requests.exceptions.ChunkedEncodingError,
)


class TransientFailure(Exception):
    """A failure that another attempt may cure (raised inside the download loops, which retry it)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when empty), at most 160 characters."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    # urllib3 wraps causes in long reprs; the tail is the useful part.
    return text if len(text) <= 160 else text[:157] + "..."


def verify_gzip_file(path: Path, chunk: int = 1 << 20) -> str | None:
    """None when ``path`` is a complete gzip stream, else the reason (one line)."""
    v = GzipCheck()
    buf = bytearray(chunk)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            v.feed(memoryview(buf)[:n])
            if v.failed:
                break
    return v.result()


class GzipCheck:
    """Incremental gzip integrity check: every member is inflated and its CRC-32 and ISIZE
    trailer checked (by zlib, or ISA-L's compatible inflate when the ``isal`` package is
    installed: about twice as fast on map data, same checks).

    Feed the file's bytes in order; :meth:`result` is None for a complete stream. The
    inflated bytes are discarded as they come: input goes in 128 KiB slices with output
    capped at 64 KiB per call, so memory stays small even for a gzip bomb. The small cap
    matters for speed too: output buffers of 1 MiB are fresh mmap'd memory for glibc on
    every call, and their page faults made the check 5x slower on stored blocks
    (1.9 vs 11 GB/s measured with ISA-L); 64 KiB buffers are reused from the heap.
    """

    _IN = 1 << 17
    _OUT = 1 << 16

    def __init__(self):
        self._d = _inflate.decompressobj(16 + zlib.MAX_WBITS)
        self._in_member = False
        self._members = 0
        self._consumed = 0  # compressed bytes fed so far (for error messages)
        self._error: str | None = None

    @property
    def failed(self) -> bool:
        return self._error is not None

    def feed(self, data) -> None:
        if self._error is not None:
            return
        mv = memoryview(data)
        try:
            for j in range(0, len(mv), self._IN):
                self._feed(mv[j:j + self._IN])
                self._consumed += min(self._IN, len(mv) - j)
        except _INFLATE_ERRORS as exc:
            self._error = (f"corrupt gzip (member {self._members + 1}, within bytes "
                           f"{self._consumed}-{self._consumed + self._IN}: {one_line(exc)})")

    def _feed(self, buf) -> None:
        d = self._d
        while buf:
            self._in_member = True
            d.decompress(buf, self._OUT)
            while d.unconsumed_tail and not d.eof:
                d.decompress(d.unconsumed_tail, self._OUT)
            if d.eof:
                self._members += 1
                self._in_member = False
                buf = d.unused_data
                d = self._d = _inflate.decompressobj(16 + zlib.MAX_WBITS)
            else:
                buf = b""

    def result(self) -> str | None:
        if self._error:
            return self._error
        if self._in_member:
            return "truncated gzip"
        if self._members == 0:
            return "empty file, not gzip"
        return None


_NO_FILE = object()  # tells the write worker to stop writing
_ALIGN = 4096  # O_DIRECT alignment of buffer address, file offset and length (safe for 512 B and 4 KiB devices)


class _PartFile:
    """Where the store worker writes a download: the ``.part`` file from byte ``pos`` on.

    Block-aligned pieces go through an ``O_DIRECT`` descriptor when the file system
    allows it: the bytes go from our buffer to the disk without a page-cache copy. That
    saves the CPU of the copy and, on virtual machines whose host reclaims freed guest
    memory, the very costly first touch of fresh page-cache pages (a 200 MB write took
    0.33 s of system time after a 1 s pause vs 0.01 s with O_DIRECT, measured). It also
    keeps multi-GB maps from pushing everything else out of the page cache. Unaligned
    pieces (a resume at an odd offset, the file's tail) use the ordinary descriptor.
    """

    def __init__(self, path: Path, flags: int, pos: int, direct: bool):
        self.fd = os.open(path, flags, 0o644)
        self.dfd: int | None = None
        self.pos = pos
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self.dfd = os.open(path, os.O_WRONLY | os.O_DIRECT)
            except OSError:  # e.g. tmpfs, some network file systems
                self.dfd = None

    def write(self, view: memoryview) -> None:
        """Write all of ``view`` (which starts at a page-aligned address) at ``pos``."""
        off, n = 0, len(view)
        while off < n:
            if self.dfd is not None and self.pos % _ALIGN == 0 and off % _ALIGN == 0 and n - off >= _ALIGN:
                try:
                    w = os.pwrite(self.dfd, view[off:off + (n - off) // _ALIGN * _ALIGN], self.pos)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self._no_direct()  # accepted at open, refused at write: buffered from now on
                    continue
            else:
                w = os.pwrite(self.fd, view[off:], self.pos)
            if w <= 0:  # a regular file should never do this; do not spin
                raise OSError(errno.EIO, f"write made no progress at byte {self.pos}")
            off += w
            self.pos += w

    def _no_direct(self) -> None:
        if self.dfd is not None:
            os.close(self.dfd)
            self.dfd = None

    def close(self) -> None:
        self._no_direct()
        os.close(self.fd)


class _Pipeline:
    """Checks and stores a download's bytes on worker threads while the caller reads.

    The reader fills buffers taken from a fixed pool (:meth:`buffer`) and hands each to
    the workers (:meth:`submit`): one computes the SHA-256, one writes the bytes to the
    ``.part`` file, one runs the gzip check. hashlib, zlib/ISA-L and ``pwrite`` release
    the GIL, so on two cores hashing and inflating overlap with the socket reads instead
    of adding to them, and the disk's write latency hides behind both. A buffer returns
    to the pool when every worker is done with it; when the pool is empty the reader
    waits (and TCP pushes back on the server), so memory is ``nbuf * chunk`` whatever the
    file size.
    """

    def __init__(self, gzip_check: bool, chunk: int, nbuf: int = 16):
        import queue

        self.sha = hashlib.sha256()
        self.gz = GzipCheck() if gzip_check else None
        self.fed = 0
        self.write_error: OSError | None = None
        self.worker_error: Exception | None = None  # an unexpected failure in a worker
        self._file: _PartFile | None = None
        # Anonymous mmaps are page-aligned, as O_DIRECT needs; the size rounds up to whole blocks.
        chunk = max(_ALIGN, -(-chunk // _ALIGN) * _ALIGN)
        self._views = [memoryview(mmap.mmap(-1, chunk)) for _ in range(nbuf)]
        self._refs = [0] * nbuf
        self._lock = threading.Lock()
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(nbuf):
            self._free.put(i)
        self._hash_q: queue.SimpleQueue = queue.SimpleQueue()
        self._write_q: queue.SimpleQueue = queue.SimpleQueue()
        self._gzip_q: queue.SimpleQueue | None = queue.SimpleQueue() if self.gz is not None else None
        self._queues = [q for q in (self._hash_q, self._write_q, self._gzip_q) if q is not None]
        work = [(self._hash_q, self._hash, "sha256"), (self._write_q, self._write, "write")]
        if self._gzip_q is not None:
            work.append((self._gzip_q, self.gz.feed, "gzip"))
        self._threads = [threading.Thread(target=self._loop, args=(q, fn), daemon=True, name=f"download-{name}")
                         for q, fn, name in work]
        for t in self._threads:
            t.start()
        self._closed = False

    # -- workers ---------------------------------------------------------------------
    def _loop(self, q, fn) -> None:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            if isinstance(item, _PartFile) or item is _NO_FILE:
                self._file = item if item is not _NO_FILE else None
                continue
            i, n = item
            try:
                if self.worker_error is None:
                    fn(self._views[i][:n])
            except Exception as exc:  # kept for the reader; the worker must go on releasing buffers
                self.worker_error = exc
            finally:
                with self._lock:
                    self._refs[i] -= 1
                    free = self._refs[i] == 0
                if free:
                    self._free.put(i)

    def _hash(self, view) -> None:
        self.sha.update(view)

    def _write(self, view) -> None:
        if self._file is not None and self.write_error is None:
            try:
                self._file.write(view)
            except OSError as exc:
                self.write_error = exc

    # -- reader side -----------------------------------------------------------------
    @property
    def gzip_failed(self) -> bool:
        return self.gz is not None and self.gz.failed

    @property
    def stopped(self) -> bool:
        """True when reading on is pointless: a write, gzip or worker failure."""
        return self.write_error is not None or self.worker_error is not None or self.gzip_failed

    def buffer(self) -> tuple[int, memoryview]:
        """A free buffer (index, writable view); waits while the workers catch up."""
        i = self._free.get()
        return i, self._views[i]

    def give_back(self, i: int) -> None:
        """Return an unused buffer from :meth:`buffer`."""
        self._free.put(i)

    def submit(self, i: int, n: int, write: bool = True) -> None:
        """Hand the first ``n`` bytes of buffer ``i`` to the workers (the writer too when ``write``)."""
        self.fed += n
        qs = self._queues if write else [q for q in self._queues if q is not self._write_q]
        with self._lock:
            self._refs[i] = len(qs)
        for q in qs:
            q.put((i, n))

    def attach(self, part: _PartFile | None) -> None:
        """Following buffers are also written to ``part`` (None: not written)."""
        self._write_q.put(part if part is not None else _NO_FILE)

    def sync(self) -> None:
        """Wait until every submitted buffer is hashed, checked and written."""
        evs = [threading.Event() for _ in self._queues]
        for q, e in zip(self._queues, evs):
            q.put(e)
        for e in evs:
            e.wait()

    def feed_file(self, path: Path, start: int, stop: int) -> None:
        """Hash and check bytes already on disk (not written again)."""
        with open(path, "rb", buffering=0) as fh:
            fh.seek(start)
            left = stop - start
            while left > 0:
                i, view = self.buffer()
                n = fh.readinto(view[:min(len(view), left)])
                if not n:
                    self.give_back(i)
                    break
                left -= n
                self.submit(i, n, write=False)

    def finish(self) -> tuple[str, str | None]:
        self.sync()
        self.abandon()
        return self.sha.hexdigest(), (self.gz.result() if self.gz is not None else None)

    def abandon(self) -> None:
        if not self._closed:
            self._closed = True
            for q in self._queues:
                q.put(None)


@dataclass
class DownloadResult:
    """Where a URL's verified bytes are, and whether the network was used."""

    url: str
    path: Path
    sha256: str
    size: int
    from_cache: bool
    bytes_transferred: int = 0


@dataclass
class HttpClient:
    """Polite HTTP access with retries; one per run (it keeps the connection pool).

    Parameters
    ----------
    user_agent : str
        Sent with every request; names the project so archive operators can reach us.
    timeout : float
        Seconds to wait for a connection and for each read from the socket.
    retries : int
        Further attempts after a transient failure (timeouts, drops, 429, 5xx).
    backoff : float
        First wait between attempts, seconds; doubles each time up to ``max_backoff``.
    min_interval : float
        Minimum spacing of requests to one host, seconds (politeness).
    chunk_size : int
        Bytes per read while streaming a download (memory use is 16 chunks).
    direct_io : bool
        Write downloads with ``O_DIRECT`` where the file system allows it (see
        ``_PartFile``); False always goes through the page cache.
    """

    user_agent: str = DEFAULT_USER_AGENT
    timeout: float = 60.0
    retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 60.0
    min_interval: float = 0.2
    chunk_size: int = 1 << 20
    direct_io: bool = True
    session: requests.Session | None = None
    _last: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self):
        if self.session is None:
            self.session = requests.Session()
        self.session.headers["User-Agent"] = self.user_agent

    # -- politeness and retry loop -------------------------------------------------
    def _pace(self, url: str) -> None:
        if self.min_interval <= 0:
            return
        host = urlsplit(url).netloc
        with self._lock:
            now = time.monotonic()
            wait = self._last.get(host, 0.0) + self.min_interval - now
            self._last[host] = max(now, now + wait)
        if wait > 0:
            time.sleep(wait)

    def _retrying(self, what: str, attempt_fn):
        """Run ``attempt_fn`` until it returns, retrying transient failures."""
        last = ""
        for attempt in range(self.retries + 1):
            try:
                return attempt_fn()
            except TransientFailure as exc:
                last = str(exc)
                if attempt == self.retries:
                    break
                wait = min(self.max_backoff, self.backoff * 2**attempt)
                if exc.retry_after is not None:
                    wait = min(self.max_backoff, max(wait, exc.retry_after))
                log.info("%s: %s; retry %d/%d in %.1f s", what, last, attempt + 1, self.retries, wait)
                time.sleep(wait)
        raise ArchiveError(f"{what}: {last} (gave up after {self.retries + 1} attempts)", transient=True)

    def _send(self, method: str, url: str, what: str, **kw) -> requests.Response:
        self._pace(url)
        try:
            r = self.session.request(method, url, timeout=self.timeout, **kw)
        except requests.exceptions.Timeout:
            raise TransientFailure(f"timed out after {self.timeout:g} s ({url})") from None
        except TRANSIENT_ERRORS as exc:
            raise TransientFailure(f"connection failed ({one_line(exc)})") from None
        except requests.exceptions.RequestException as exc:
            raise ArchiveError(f"{what}: request failed ({one_line(exc)})") from None
        if r.status_code in _RETRY_STATUS:
            ra = r.headers.get("Retry-After")
            r.close()
            raise TransientFailure(f"HTTP {r.status_code} from {url}",
                             float(ra) if ra and ra.strip().isdigit() else None)
        if r.status_code in (404, 410):
            r.close()
            raise ArchiveError(f"{what}: not found (HTTP {r.status_code} {url})")
        if r.status_code >= 400:
            r.close()
            raise ArchiveError(f"{what}: HTTP {r.status_code} from {url}")
        return r

    # -- JSON --------------------------------------------------------------------------
    def get_json(self, url: str, *, what: str, allow_empty: bool = False):
        """GET ``url`` and parse JSON. 204/empty -> None when ``allow_empty``."""
        return self._json("GET", url, what=what, allow_empty=allow_empty)

    def post_json(self, url: str, body: dict, *, what: str, allow_empty: bool = False):
        """POST ``body`` as JSON and parse the JSON answer (204/empty -> None when allowed)."""
        return self._json("POST", url, what=what, allow_empty=allow_empty, json=body)

    def _json(self, method, url, *, what, allow_empty, **kw):
        def attempt():
            r = self._send(method, url, what, **kw)
            try:
                content = r.content  # bodies of API answers are small
            except TRANSIENT_ERRORS as exc:
                raise TransientFailure(f"connection dropped ({one_line(exc)})") from None
            return r.status_code, content

        status, content = self._retrying(what, attempt)
        if status == 204 or not content.strip():
            if allow_empty:
                return None
            raise ArchiveError(f"{what}: empty answer from {url}")
        try:
            return json.loads(content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ArchiveError(f"{what}: malformed JSON from {url} ({one_line(exc)})") from None

    # -- downloads ---------------------------------------------------------------------
    def download(self, url: str, cache_dir: str | os.PathLike, *, what: str | None = None,
                 verify_gzip: bool | None = None, expected_size: int | None = None,
                 progress=None) -> DownloadResult:
        """Fetch ``url`` into the content-addressed cache and return the verified object.

        Parameters
        ----------
        url : str
            http(s) URL.
        cache_dir : path-like
            Cache root (see module docstring).
        what : str
            Names the entry/file in error messages.
        verify_gzip : bool, optional
            Check the gzip stream; default: when the URL path ends in ``.gz``.
        expected_size : int, optional
            Size the file must have (bytes), when known from metadata.
        progress : None, bool or callable
            None: a tqdm bar when stderr is a terminal; True/False force it on/off; a
            callable is called as ``progress(done_bytes, total_bytes_or_None)``.

        Raises
        ------
        ArchiveError
            404, final HTTP errors, retries exhausted, size mismatch, broken gzip. The
            partial file is discarded when its content is wrong (not when the network
            merely failed, so a later call resumes).
        """
        what = what or url
        cache = Path(cache_dir)
        ukey = hashlib.sha256(url.encode()).hexdigest()
        rec_path = cache / "urls" / ukey[:2] / f"{ukey}.json"
        hit = _cached(cache, rec_path)
        if hit is not None:
            return DownloadResult(url, hit[0], hit[1], hit[2], True, 0)
        if verify_gzip is None:
            verify_gzip = urlsplit(url).path.endswith(".gz")
        part_dir = cache / "partial"
        part_dir.mkdir(parents=True, exist_ok=True)
        part = part_dir / f"{ukey}.part"
        meta_path = part_dir / f"{ukey}.json"
        state = {"sent": 0, "pipe": None, "gzip": verify_gzip}

        bar = _Progress(progress, what)
        try:
            def attempt():
                self._attempt_download(url, what, part, meta_path, state, bar)

            try:
                self._retrying(what, attempt)
            except BaseException:
                if state["pipe"] is not None:
                    state["pipe"].abandon()
                raise
        finally:
            bar.close()

        # Complete: check size and gzip, then move into objects/ atomically.
        meta = _read_json(meta_path) or {}
        size = part.stat().st_size
        pipe = state["pipe"]
        if pipe is None or pipe.fed != size:  # e.g. the transfer had finished in an earlier call
            if pipe is not None:
                pipe.abandon()
            pipe = _Pipeline(verify_gzip, self.chunk_size)
            pipe.feed_file(part, 0, size)
        digest, gz_problem = pipe.finish()
        total = meta.get("total")
        problem = None
        if pipe.worker_error is not None:
            problem = (f"checking the download failed ({type(pipe.worker_error).__name__}: "
                       f"{one_line(pipe.worker_error)})")
        elif total is not None and size != total:
            problem = f"size {size} B differs from the announced {total} B"
        elif expected_size is not None and size != expected_size:
            problem = f"size {size} B differs from the expected {expected_size} B"
        elif gz_problem:
            problem = gz_problem
        if problem is not None:
            part.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            raise ArchiveError(f"{what}: {problem} ({url})")
        obj = cache / "objects" / digest[:2] / digest
        obj.parent.mkdir(parents=True, exist_ok=True)
        if obj.exists() and obj.stat().st_size == size:
            part.unlink()  # same content already stored under another URL
        else:
            os.replace(part, obj)
        _write_json_atomic(rec_path, {"url": url, "sha256": digest, "size": size,
                                      "etag": meta.get("etag"), "last_modified": meta.get("last_modified"),
                                      "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        meta_path.unlink(missing_ok=True)
        return DownloadResult(url, obj, digest, size, False, state["sent"])

    def _attempt_download(self, url, what, part: Path, meta_path: Path, state: dict, bar) -> None:
        have = part.stat().st_size if part.exists() else 0
        meta = _read_json(meta_path) or {}
        headers = {"Accept-Encoding": "identity"}  # byte ranges refer to the stored bytes
        if have > 0 and meta.get("total") is not None and have >= meta["total"]:
            return  # a previous attempt finished the transfer; verification follows
        if have > 0:
            headers["Range"] = f"bytes={have}-"
            validator = meta.get("etag") or meta.get("last_modified")
            if validator:
                headers["If-Range"] = validator
        r = self._send("GET", url, what, headers=headers, stream=True)
        with r:
            if r.status_code == 206:
                start, total = _content_range(r.headers.get("Content-Range", ""))
                if start != have:
                    # The server resumed somewhere else: do not splice; start over.
                    part.unlink(missing_ok=True)
                    raise TransientFailure(f"server resumed at byte {start}, not {have}")
                flags = os.O_WRONLY
            elif r.status_code == 200:
                total = _int_or_none(r.headers.get("Content-Length"))
                have = 0
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
            elif r.status_code == 416:
                part.unlink(missing_ok=True)
                meta_path.unlink(missing_ok=True)
                raise TransientFailure("range not satisfiable; restarting from byte 0")
            else:
                raise ArchiveError(f"{what}: unexpected HTTP {r.status_code} from {url}")
            _write_json_atomic(meta_path, {"total": total, "etag": r.headers.get("ETag"),
                                           "last_modified": r.headers.get("Last-Modified")})
            bar.start(total, have)
            pipe = state["pipe"]
            if have == 0 or pipe is None or pipe.fed > have:
                if pipe is not None:
                    pipe.abandon()
                pipe = state["pipe"] = _Pipeline(state["gzip"], self.chunk_size)
            if pipe.fed < have:  # bytes kept from an earlier call: hash and check them first
                pipe.feed_file(part, pipe.fed, have)
            got = have
            try:
                out = _PartFile(part, flags, have, self.direct_io)
                try:
                    pipe.attach(out)
                    try:
                        for n in _read_body(r, pipe):
                            got += n
                            state["sent"] += n
                            bar.update(n, got)
                            if pipe.stopped:
                                break
                    finally:
                        pipe.attach(None)
                        pipe.sync()  # the .part holds every byte received, even after a drop
                finally:
                    out.close()
                if pipe.write_error is not None:
                    raise pipe.write_error
            except TRANSIENT_ERRORS + (OSError,) as exc:
                if isinstance(exc, OSError) and not _is_network(exc):
                    raise ArchiveError(f"{what}: cannot write cache ({one_line(exc)})") from None
                raise TransientFailure(f"connection dropped at byte {got} ({one_line(exc)})") from None
            except Exception as exc:  # urllib3 ProtocolError / IncompleteRead / ReadTimeoutError
                if _is_urllib3_transient(exc):
                    raise TransientFailure(f"connection dropped at byte {got} ({one_line(exc)})") from None
                raise
            if pipe.gzip_failed or pipe.worker_error is not None:
                # Broken content is final (the same bytes would come again): stop early, keep nothing.
                part.unlink(missing_ok=True)
                meta_path.unlink(missing_ok=True)
                problem = pipe.gz.result() if pipe.gzip_failed else \
                    f"checking the download failed ({type(pipe.worker_error).__name__}: {one_line(pipe.worker_error)})"
                raise ArchiveError(f"{what}: {problem} ({url})")
            if total is not None and got < total:
                raise TransientFailure(f"connection closed at byte {got} of {total}")


def _read_body(r: requests.Response, pipe: _Pipeline):
    """Read the body into the pipeline's buffers; yields the byte count of each buffer.

    ``readinto`` on the http.client response fills a whole pooled buffer straight from the
    socket (no per-chunk allocation, no copy through requests' iterator). Chunked answers
    go through urllib3's decoder and are copied into the buffers.
    """
    fp = getattr(r.raw, "_fp", None)
    if fp is not None and hasattr(fp, "readinto") and not getattr(fp, "chunked", False):
        while True:
            i, view = pipe.buffer()
            try:
                n = fp.readinto(view)
            except BaseException:
                pipe.give_back(i)
                raise
            if not n:
                pipe.give_back(i)
                return
            pipe.submit(i, n)
            yield n
    for piece in r.raw.stream(1 << 16, decode_content=False):
        piece = memoryview(piece)
        while piece:
            i, view = pipe.buffer()
            n = min(len(view), len(piece))
            view[:n] = piece[:n]
            piece = piece[n:]
            pipe.submit(i, n)
            yield n


def _is_network(exc: OSError) -> bool:
    return isinstance(exc, (ConnectionError, TimeoutError)) or exc.__class__.__module__.startswith("urllib3")


def _is_urllib3_transient(exc: Exception) -> bool:
    mod = type(exc).__module__
    return mod.startswith("urllib3") or mod.startswith("http.client")


def _content_range(value: str) -> tuple[int, int | None]:
    # "bytes 100-199/200" (total may be "*")
    try:
        unit, rest = value.split(" ", 1)
        span, total = rest.split("/", 1)
        start = int(span.split("-", 1)[0])
        return start, (None if total.strip() == "*" else int(total))
    except ValueError:
        raise TransientFailure(f"bad Content-Range {value!r}") from None


def _int_or_none(v) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _write_json_atomic(path: Path, obj) -> None:
    write_atomic(path, json.dumps(obj))


def _cached(cache: Path, rec_path: Path):
    rec = _read_json(rec_path)
    if not rec:
        return None
    obj = cache / "objects" / rec["sha256"][:2] / rec["sha256"]
    try:
        if obj.stat().st_size == rec["size"]:
            return obj, rec["sha256"], rec["size"]
    except OSError:
        pass
    return None


class _Progress:
    """tqdm bar on a terminal, a callback, or nothing."""

    def __init__(self, progress, what: str):
        self.cb: Callable | None = progress if callable(progress) else None
        use_bar = progress is True or (progress is None and sys.stderr.isatty())
        self.use_bar = use_bar and self.cb is None
        self.what = what
        self.bar = None
        self.total = None

    def start(self, total, have):
        self.total = total
        if self.use_bar:
            from tqdm import tqdm

            if self.bar is None:
                self.bar = tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                unit_divisor=1024, desc=self.what[:40], leave=False)
            else:
                self.bar.reset(total=total)
                self.bar.update(have)

    def update(self, n, done):
        if self.bar is not None:
            self.bar.update(n)
        elif self.cb is not None:
            self.cb(done, self.total)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def link_into(obj: Path, dest: Path) -> Path:
    """Make ``dest`` name the cached object ``obj`` (hard link, else copy), atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        try:
            if os.path.samefile(dest, obj):
                return dest
        except OSError:
            pass
    tmp = dest.parent / f".tmp-{os.getpid()}-{threading.get_ident()}-{dest.name}"
    tmp.unlink(missing_ok=True)
    try:
        os.link(obj, tmp)
    except OSError:
        import shutil

        shutil.copyfile(obj, tmp)
    os.replace(tmp, dest)
    return dest
