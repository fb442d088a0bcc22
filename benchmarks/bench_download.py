"""Download benchmark: throughput vs the loopback server's raw throughput, peak memory, resume.

* raw: a minimal socket client (GET, then ``recv_into`` one reused 1 MiB buffer, bytes
  discarded) - the most the loopback server can deliver;
* ours: ``HttpClient.download`` into a fresh content-addressed cache (streams to disk,
  SHA-256 on a worker thread, size check, atomic rename), run in a child process so its
  peak RSS (``ru_maxrss``) is its own;
* resume: the server drops the connection at 50 %; the next call resumes with Range; the
  server's byte counter must show only the missing half sent the second time.

Medians of several alternating runs (the machine is shared and noisy). Writes
``benchmarks/results/download.json``.

Usage: ``python benchmarks/bench_download.py [--mb 200] [--runs 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

from rerefine.harvester.http import HttpClient
from rerefine.harvester.loopback import LoopbackArchive
from rerefine.refine.errors import ArchiveError

HERE = Path(__file__).resolve().parent


def raw_get(url: str) -> tuple[int, float]:
    """(bytes, seconds) of a bare-socket GET whose body is read and discarded."""
    u = urlsplit(url)
    t0 = time.perf_counter()
    s = socket.create_connection((u.hostname, u.port))
    s.sendall(f"GET {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n\r\n".encode())
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(65536)
    hdr, body = head.split(b"\r\n\r\n", 1)
    length = int([ln.split(b":")[1] for ln in hdr.split(b"\r\n") if ln.lower().startswith(b"content-length")][0])
    got = len(body)
    while got < length:
        n = s.recv_into(view)
        if not n:
            break
        got += n
    s.close()
    return got, time.perf_counter() - t0


def child(url: str, cache: str) -> None:
    """Run one download in this process and print timing and peak RSS as JSON."""
    client = HttpClient(min_interval=0.0)
    t0 = time.perf_counter()
    r = client.download(url, cache, progress=False)
    dt = time.perf_counter() - t0
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"seconds": dt, "bytes": r.size, "peak_rss_mb": rss_mb}))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sink-dir", help="where downloads are written (e.g. /dev/shm to take the disk out)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(*a.child)
        return 0

    out: dict = {"file_mb": a.mb, "runs": a.runs, "sink_dir": a.sink_dir or "(temp dir)"}
    with tempfile.TemporaryDirectory(prefix="bench-dl-") as tmp:
        tmp = Path(tmp)
        served = tmp / "served"
        served.mkdir()
        big = served / "big.bin"
        with open(big, "wb") as fh:  # incompressible bytes, written in pieces (flat memory)
            for _ in range(a.mb):
                fh.write(os.urandom(1 << 20))
        size = big.stat().st_size
        sink = Path(tempfile.mkdtemp(prefix="bench-dl-sink-", dir=a.sink_dir)) if a.sink_dir else tmp
        with LoopbackArchive(served) as srv:
            url = srv.url + "/big.bin"
            raw_get(url)  # warm the page cache
            raw_t, ours_t, rss, curl_t = [], [], [], []
            curl = shutil.which("curl")
            for i in range(a.runs):
                n, t = raw_get(url)
                assert n == size
                raw_t.append(t)
                if curl:  # a minimal downloader that writes to disk: the raw to-disk reference
                    dst = sink / "curl.out"
                    t0 = time.perf_counter()
                    subprocess.run([curl, "-s", "-o", str(dst), url], check=True)
                    curl_t.append(time.perf_counter() - t0)
                    dst.unlink()
                cache = sink / f"cache{i}"
                res = subprocess.run([sys.executable, __file__, "--child", url, str(cache)],
                                     capture_output=True, text=True, check=True)
                info = json.loads(res.stdout)
                assert info["bytes"] == size
                ours_t.append(info["seconds"])
                rss.append(info["peak_rss_mb"])
                subprocess.run(["rm", "-rf", str(cache)], check=True)
            raw_mbps = size / statistics.median(raw_t) / 1e6
            ours_mbps = size / statistics.median(ours_t) / 1e6
            out.update(raw_MBps=round(raw_mbps, 1), ours_MBps=round(ours_mbps, 1),
                       ratio=round(ours_mbps / raw_mbps, 3), peak_rss_mb_max=round(max(rss), 1),
                       raw_seconds=[round(t, 3) for t in raw_t], ours_seconds=[round(t, 3) for t in ours_t])
            if curl_t:
                curl_mbps = size / statistics.median(curl_t) / 1e6
                out.update(curl_to_disk_MBps=round(curl_mbps, 1), ratio_vs_curl_to_disk=round(ours_mbps / curl_mbps, 3))

            # Resume after a drop at 50 %: the first call gives up, the second sends the rest.
            cache = tmp / "cache-resume"
            srv.bytes_sent.clear()
            srv.add_fault("/big.bin", "drop", 0.5)
            try:
                HttpClient(min_interval=0.0, retries=0).download(url, cache, progress=False)
                raise SystemExit("expected the dropped download to fail")
            except ArchiveError:
                pass
            first = srv.bytes_sent["/big.bin"]
            r = HttpClient(min_interval=0.0).download(url, cache, progress=False)
            second = srv.bytes_sent["/big.bin"] - first
            assert r.size == size
            if a.sink_dir:
                shutil.rmtree(sink, ignore_errors=True)
            out.update(resume_first_call_bytes=first, resume_second_call_bytes=second, file_bytes=size,
                       resume_second_fraction=round(second / size, 4))

    out["goals"] = {"ratio>=0.8": out["ratio"] >= 0.8, "peak_rss<100MB": out["peak_rss_mb_max"] < 100,
                    "resume_sends_half": abs(out["resume_second_fraction"] - 0.5) < 1e-3}
    res_dir = HERE / "results"
    res_dir.mkdir(exist_ok=True)
    name = "download.json" if not a.sink_dir else "download_tmpfs.json"
    (res_dir / name).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
