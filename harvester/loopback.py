"""A small static HTTP server for loopback tests, benchmarks and demos, with fault injection.

It serves a directory (e.g. a sample archive made by ``rerefine sample-archive``) with
single-range ``Range`` support, ETag/Last-Modified and ``os.sendfile`` for speed, plus
canned answers for API routes (recorded JSON payloads). Faults are queued per path and
used up one request at a time:

* ``("status", 503)`` - answer with that status and no body;
* ``("drop", n)`` - announce the full length, send ``n`` bytes (an int) or that fraction
  of the answer (a float below 1), then close the connection;
* ``("delay", s)`` - sleep ``s`` seconds before answering (beyond a client's timeout);
* ``("truncate", n)`` - serve only the first ``n`` bytes as if they were the whole file;
* ``("body", bytes)`` - answer 200 with these bytes (e.g. malformed JSON);
* ``("endless", bytes)`` - answer 200 without a length and send these bytes again and again
  until the client goes away;
* ``("endless_gzip", None)`` - the same with a valid gzip stream of zeros that never ends;
* ``("trickle", s)`` - send the real answer's headers, then its body one byte every ``s`` seconds;
* ``("ignore_range", None)`` - answer 200 with the whole file even to a ``Range`` request.

``add_fault(path, kind, value, times=n)`` queues a fault for the next ``n`` requests (``times=None``:
every request from now on).

It counts the body bytes sent per path (``bytes_sent``) and logs each request, so tests
can check that a resume transferred only the missing part. Never used against the
public internet: it binds 127.0.0.1 only.
"""

from __future__ import annotations

import email.utils
import os
import socket
import threading
import time
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


class LoopbackArchive:
    """Threaded HTTP server on 127.0.0.1 serving ``root`` plus canned ``routes``.

    Use as a context manager; ``url`` is the base URL (no trailing slash).
    """

    def __init__(self, root: str | os.PathLike | None = None, routes: dict | None = None):
        self.root = Path(root).resolve() if root else None
        self.routes: dict[str, tuple[int, bytes, str]] = {}
        for path, spec in (routes or {}).items():
            self.add_route(path, *spec) if isinstance(spec, tuple) else self.add_route(path, spec)
        self.faults: dict[str, deque] = defaultdict(deque)
        self.sticky: dict[str, tuple] = {}
        self.bytes_sent: dict[str, int] = defaultdict(int)
        self.requests: list[tuple[str, str, str | None]] = []
        self.posted: list[tuple[str, bytes]] = []  # (path, body) of POST requests
        self.user_agents: list[str] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- configuration -------------------------------------------------------------------
    def add_route(self, path: str, body: bytes | str | Path, content_type: str = "application/json",
                  status: int = 200) -> None:
        """Answer ``path`` (GET or POST) with ``body`` (bytes, text, or a file's bytes)."""
        if isinstance(body, Path):
            body = body.read_bytes()
        elif isinstance(body, str):
            body = body.encode()
        self.routes[path] = (status, body, content_type)

    def add_fault(self, path: str, kind: str, value=None, times: int | None = 1) -> None:
        """Queue a fault for the next ``times`` requests of ``path`` (None: all of them; see module docstring)."""
        if times is None:
            self.sticky[path] = (kind, value)
        else:
            self.faults[path].extend([(kind, value)] * times)

    def total_sent(self) -> int:
        return sum(self.bytes_sent.values())

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> "LoopbackArchive":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        archive = self

        class Handler(_Handler):
            server_archive = archive

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"


class _Handler(BaseHTTPRequestHandler):
    server_archive: LoopbackArchive
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def setup(self):
        super().setup()
        # Headers and body leave in separate writes: without this, Nagle's algorithm and the client's
        # delayed ACK hold every small answer back by 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        with self.server_archive._lock:
            self.server_archive.posted.append((unquote(urlsplit(self.path).path), body))
        self.do_GET()

    def do_HEAD(self):
        self.do_GET(head=True)

    def do_GET(self, head: bool = False):
        arc = self.server_archive
        path = unquote(urlsplit(self.path).path)
        with arc._lock:
            arc.requests.append((self.command, path, self.headers.get("Range")))
            arc.user_agents.append(self.headers.get("User-Agent", ""))
            fault = arc.faults[path].popleft() if arc.faults.get(path) else arc.sticky.get(path)
        if fault and fault[0] in ("endless", "endless_gzip"):
            return self._endless(fault, path)
        if fault and fault[0] == "delay":
            time.sleep(float(fault[1]))
            fault = None
        if fault and fault[0] == "status":
            return self._simple(int(fault[1]), b"")
        if fault and fault[0] == "body":
            return self._simple(200, fault[1], "application/json")
        if path in arc.routes:
            status, body, ctype = arc.routes[path]
            if fault and fault[0] == "drop":
                return self._send_bytes(body, ctype, fault, path)
            return self._simple(status, body, ctype)
        target = self._resolve(path)
        if target is None:
            return self._simple(404, b"not found\n", "text/plain")
        if target.is_dir():
            return self._listing(target, path)
        self._send_file(target, path, fault, head)

    # -- helpers -------------------------------------------------------------------------
    def _resolve(self, path: str) -> Path | None:
        root = self.server_archive.root
        if root is None:
            return None
        p = (root / path.lstrip("/")).resolve()
        if p != root and root not in p.parents:  # no escaping the served tree
            return None
        return p if p.exists() else None

    def _simple(self, status: int, body: bytes, ctype: str = "application/octet-stream"):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            self._count(self.path, len(body))

    def _count(self, path: str, n: int) -> None:
        arc = self.server_archive
        with arc._lock:
            arc.bytes_sent[unquote(urlsplit(path).path)] += n

    def _send_bytes(self, body: bytes, ctype: str, fault, path: str):
        n = _drop_count(fault[1], len(body))
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:n])
        self._count(path, n)
        self.close_connection = True

    def _endless(self, fault, path: str):
        import zlib

        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        piece = fault[1] or b"x" * 65536
        if fault[0] == "endless_gzip":  # header + 1 MiB of zeros, then the same deflate block for each further MiB
            gz = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            first = gz.compress(bytes(1 << 20)) + gz.flush(zlib.Z_SYNC_FLUSH)
            piece = gz.compress(bytes(1 << 20)) + gz.flush(zlib.Z_SYNC_FLUSH)
            self.wfile.write(first)
        try:
            while True:  # until the client closes the connection
                self.wfile.write(piece)
                self._count(path, len(piece))
        except OSError:
            pass

    def _listing(self, target: Path, path: str):
        # An autoindex page like Apache/nginx/ftp.ebi.ac.uk produce: one <a href> per entry.
        base = path if path.endswith("/") else path + "/"
        rows = []
        for child in sorted(target.iterdir()):
            name = child.name + ("/" if child.is_dir() else "")
            rows.append(f'<a href="{base}{name}">{name}</a>')
        body = ("<html><body>\n" + "\n".join(rows) + "\n</body></html>\n").encode()
        self._simple(200, body, "text/html")

    def _send_file(self, target: Path, path: str, fault, head: bool):
        st = target.stat()
        size = st.st_size
        etag = f'"{st.st_mtime_ns:x}-{size:x}"'
        lastmod = email.utils.formatdate(st.st_mtime, usegmt=True)
        if fault and fault[0] == "truncate":
            size = min(size, int(fault[1]))
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range") if not (fault and fault[0] == "ignore_range") else None
        if_range = self.headers.get("If-Range")
        if rng and (not if_range or if_range in (etag, lastmod)):
            try:
                unit, spec = rng.split("=", 1)
                a, b = spec.split(",")[0].split("-", 1)
                start = int(a)
                end = min(int(b), size - 1) if b.strip() else size - 1
                if unit.strip() != "bytes" or start > end or start >= size:
                    raise ValueError
                status = 206
            except ValueError:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", lastmod)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if head:
            return
        count = length
        if fault and fault[0] == "drop":
            count = min(length, _drop_count(fault[1], size) - start) if isinstance(fault[1], float) \
                else min(length, int(fault[1]))
            count = max(count, 0)
            self.close_connection = True
        sent = 0
        with open(target, "rb") as fh:
            try:
                if fault and fault[0] == "trickle":  # a stalled server: one byte at a time
                    fh.seek(start)
                    for _ in range(count):
                        time.sleep(float(fault[1]))
                        self.wfile.write(fh.read(1))
                        self.wfile.flush()
                        sent += 1
                else:
                    sent = self.connection.sendfile(fh, offset=start, count=count) if count else 0
            except (BrokenPipeError, ConnectionResetError):
                pass
        self._count(path, sent)
        if self.close_connection and count < length:
            try:
                self.connection.shutdown(2)
            except OSError:
                pass


def _drop_count(value, size: int) -> int:
    if isinstance(value, float) and value < 1:
        return int(size * value)
    return int(value)
