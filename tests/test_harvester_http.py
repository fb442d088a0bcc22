"""Downloads and JSON requests against a real HTTP server on loopback, with injected faults.

The server (rerefine.harvester.loopback) serves real files from ../shared/data; every fault
must end in a complete, verified file or a one-line ArchiveError, never a half-file in the
cache.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil

import pytest

from rerefine.harvester.http import verify_gzip_file
from rerefine.harvester.loopback import LoopbackArchive
from rerefine.common.errors import ArchiveError
from fastclient import cache_objects, fast_client, serve_real_map  # noqa: E402  (tests/ is on sys.path under pytest)




@pytest.fixture(scope="module")
def served(tmp_path_factory, test_data):
    """A directory of real files: a gzipped real map, a truncated copy, the real .map.gz of EMD-3001."""
    root = tmp_path_factory.mktemp("served")
    src = test_data / "maps_models" / "emd_3488_5me2" / "emd_3488.mrc"
    data = serve_real_map(root, test_data)
    (root / "truncated.map.gz").write_bytes(data[: len(data) // 2])
    (root / "not_gzip.map.gz").write_bytes(src.read_bytes()[:50_000])
    shutil.copy(test_data / "maps_models" / "maps_only_mrcfile" / "emd_3001.map.gz", root / "emd_3001.map.gz")
    shutil.copy(src, root / "emd_3488.mrc")
    return root


def _partial_files(cache):
    return [p for p in (cache / "partial").glob("*.part")] if (cache / "partial").exists() else []




def test_plain_download_verified_and_never_twice(served, tmp_path):
    cache = tmp_path / "cache"
    with LoopbackArchive(served) as srv:
        c = fast_client()
        r = c.download(srv.url + "/emd_3001.map.gz", cache, progress=False)
        assert not r.from_cache
        raw = (served / "emd_3001.map.gz").read_bytes()
        assert r.size == len(raw) == 270080
        assert r.sha256 == hashlib.sha256(raw).hexdigest()
        assert r.path.read_bytes() == raw
        assert r.path.parent.name == r.sha256[:2]  # content-addressed
        n_req = len(srv.requests)
        r2 = c.download(srv.url + "/emd_3001.map.gz", cache, progress=False)
        assert r2.from_cache and r2.path == r.path
        assert len(srv.requests) == n_req  # no network at all for a complete file
        assert all("rerefine" in ua for ua in srv.user_agents)
    assert _partial_files(cache) == []


def test_drop_mid_file_resumes_with_range(served, tmp_path):
    cache = tmp_path / "cache"
    name = "/emd_3488.map.gz"
    size = (served / name[1:]).stat().st_size
    with LoopbackArchive(served) as srv:
        srv.add_fault(name, "drop", 0.5)
        r = fast_client().download(srv.url + name, cache, progress=False)
        ranges = [rng for (_, p, rng) in srv.requests if p == name]
        assert ranges == [None, f"bytes={size // 2}-"]
        # The server sent the first half once and only the missing half afterwards.
        assert srv.bytes_sent[name] == size
    assert r.path.read_bytes() == (served / name[1:]).read_bytes()
    assert verify_gzip_file(r.path) is None
    assert _partial_files(cache) == []


def test_interrupted_call_resumes_in_a_later_call(served, tmp_path):
    """Drops beyond the retry budget leave a .part; the next call sends only the rest."""
    cache = tmp_path / "cache"
    name = "/emd_3488.mrc"
    size = (served / name[1:]).stat().st_size
    with LoopbackArchive(served) as srv:
        srv.add_fault(name, "drop", 1_000_000)
        srv.add_fault(name, "drop", 1_000_000)
        with pytest.raises(ArchiveError, match="connection"):
            fast_client(retries=1).download(srv.url + name, cache, progress=False)
        parts = _partial_files(cache)
        assert len(parts) == 1 and parts[0].stat().st_size == 2_000_000
        assert cache_objects(cache) == []  # nothing unverified in the cache proper
        before = srv.bytes_sent[name]
        r = fast_client().download(srv.url + name, cache, progress=False)
        assert srv.bytes_sent[name] - before == size - 2_000_000
    assert r.path.read_bytes() == (served / name[1:]).read_bytes()


def test_503_then_success(served, tmp_path):
    with LoopbackArchive(served) as srv:
        srv.add_fault("/emd_3001.map.gz", "status", 503)
        srv.add_fault("/emd_3001.map.gz", "status", 502)
        r = fast_client().download(srv.url + "/emd_3001.map.gz", tmp_path / "c", progress=False)
        assert sum(1 for (_, p, _) in srv.requests if p == "/emd_3001.map.gz") == 3
    assert r.size == 270080


def test_404_is_not_retried(served, tmp_path):
    with LoopbackArchive(served) as srv:
        with pytest.raises(ArchiveError) as ei:
            fast_client().download(srv.url + "/emd_9999.map.gz", tmp_path / "c", what="9xyz: map EMD-9999")
        assert len(srv.requests) == 1
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("9xyz: map EMD-9999: not found")
    assert ei.value.transient is False  # the nightly flow does not retry the task either


def test_persistent_5xx_gives_up_with_clear_error(served, tmp_path):
    with LoopbackArchive(served) as srv:
        for _ in range(3):
            srv.add_fault("/emd_3001.map.gz", "status", 503)
        with pytest.raises(ArchiveError, match="HTTP 503.*gave up after 3 attempts") as ei:
            fast_client(retries=2).download(srv.url + "/emd_3001.map.gz", tmp_path / "c", progress=False)
    # worth another try later (the nightly flow retries the task), also after a trip through pickle
    # as from a Dask worker
    import pickle

    again = pickle.loads(pickle.dumps(ei.value))
    assert ei.value.transient and again.transient and str(again) == str(ei.value)


@pytest.mark.parametrize("name,reason", [("truncated.map.gz", "truncated gzip"),
                                         ("not_gzip.map.gz", "corrupt gzip")])
def test_broken_gzip_is_rejected_and_removed(served, tmp_path, name, reason):
    cache = tmp_path / "cache"
    with LoopbackArchive(served) as srv:
        with pytest.raises(ArchiveError, match=reason) as ei:
            fast_client().download(srv.url + "/" + name, cache, what="5me2: map", progress=False)
    assert _partial_files(cache) == [] and cache_objects(cache) == []
    assert not ei.value.transient  # a broken file is not retried by the nightly flow (next night it is)


def test_truncated_by_server_with_matching_length_detected_by_gzip(served, tmp_path):
    """The server ends the file early but announces that shorter length: only gzip can tell."""
    cache = tmp_path / "cache"
    with LoopbackArchive(served) as srv:
        srv.add_fault("/emd_3488.map.gz", "truncate", 400_000)
        with pytest.raises(ArchiveError, match="truncated gzip"):
            fast_client().download(srv.url + "/emd_3488.map.gz", cache, progress=False)
        # a later, healthy answer is fetched completely
        r = fast_client().download(srv.url + "/emd_3488.map.gz", cache, progress=False)
    assert verify_gzip_file(r.path) is None
    assert _partial_files(cache) == []


def test_slow_response_times_out_then_recovers(served, tmp_path):
    with LoopbackArchive(served) as srv:
        srv.add_fault("/emd_3001.map.gz", "delay", 0.8)
        r = fast_client(timeout=0.25).download(srv.url + "/emd_3001.map.gz", tmp_path / "c", progress=False)
        assert r.size == 270080
        srv.add_fault("/emd_3001.map.gz", "delay", 0.8)
        srv.add_fault("/emd_3001.map.gz", "delay", 0.8)
        with pytest.raises(ArchiveError, match="timed out"):
            fast_client(timeout=0.25, retries=1).download(srv.url + "/emd_3001.map.gz", tmp_path / "c2",
                                                      progress=False)
    assert cache_objects(tmp_path / "c2") == []


def test_expected_size_mismatch(served, tmp_path):
    with LoopbackArchive(served) as srv:
        with pytest.raises(ArchiveError, match="differs from the expected"):
            fast_client().download(srv.url + "/emd_3001.map.gz", tmp_path / "c", expected_size=12345, progress=False)
    assert cache_objects(tmp_path / "c") == []


def test_progress_callback_reports_bytes(served, tmp_path):
    seen = []
    with LoopbackArchive(served) as srv:
        fast_client(chunk_size=65536).download(srv.url + "/emd_3001.map.gz", tmp_path / "c",
                                           progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (270080, 270080)
    assert len(seen) > 1


def test_json_faults(test_data):
    entry = (test_data / "api" / "emdb" / "EMD-25107.entry.json").read_bytes()
    with LoopbackArchive(routes={"/api/entry/EMD-25107": entry}) as srv:
        url = srv.url + "/api/entry/EMD-25107"
        c = fast_client()
        # malformed JSON is a clear error (not retried: the same bytes would come back)
        srv.add_fault("/api/entry/EMD-25107", "body", entry[:500])
        with pytest.raises(ArchiveError, match="malformed JSON"):
            c.get_json(url, what="EMD-25107")
        # 503 then the recorded answer
        srv.add_fault("/api/entry/EMD-25107", "status", 503)
        assert c.get_json(url, what="EMD-25107")["emdb_id"] == "EMD-25107"
        # dropped mid-body, then the recorded answer
        srv.add_fault("/api/entry/EMD-25107", "drop", 0.3)
        assert c.get_json(url, what="EMD-25107") == json.loads(entry)
        with pytest.raises(ArchiveError, match="not found"):
            c.get_json(srv.url + "/api/entry/EMD-1", what="EMD-1")


def _multi_member_with_corrupt_middle(src: bytes) -> tuple[bytes, int]:
    """Three gzip members of a real map; one byte of the middle member's deflate data
    flipped. Returns the bytes and the offset of the flipped byte."""
    member = gzip.compress(src, compresslevel=6, mtime=0)
    data = bytearray(member * 3)
    at = len(member) + len(member) // 2
    data[at] ^= 0x55
    return bytes(data), at


def test_corrupt_middle_member_stops_the_transfer_early(served, tmp_path, test_data):
    """The gzip check runs while the file arrives: a broken member in
    the middle ends the download before the rest is transferred, with a one-line error
    naming the entry, and nothing is left in the cache."""
    src = (test_data / "maps_models" / "emd_3488_5me2" / "emd_3488.mrc").read_bytes()
    data, at = _multi_member_with_corrupt_middle(src * 8)  # ~10 MB of gzip, 3 members
    (tmp_path / "srv").mkdir()
    (tmp_path / "srv" / "bad.map.gz").write_bytes(data)
    cache = tmp_path / "cache"
    received = []
    with LoopbackArchive(tmp_path / "srv") as srv:
        with pytest.raises(ArchiveError) as ei:
            fast_client(chunk_size=65536).download(srv.url + "/bad.map.gz", cache, what="5me2: map EMD-3488",
                                               progress=lambda done, total: received.append(done))
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("5me2: map EMD-3488: corrupt gzip (member 2,")
    # A flipped deflate byte may only show at the member's CRC-32 (end of member 2, 2/3 of
    # the file); the check runs on every piece as it arrives, so most of member 3 is never fetched.
    end2 = 2 * len(data) // 3
    assert at < max(received) < end2 + (2 << 20) < len(data)
    assert _partial_files(cache) == [] and cache_objects(cache) == []
    assert not list((cache / "partial").glob("*.json"))


def test_gzip_check_verdicts(test_data):
    """Every member's CRC-32 and ISIZE trailer is checked, a cut stream and an empty file are named."""
    from rerefine.harvester.http import GzipCheck

    src = (test_data / "maps_models" / "emd_3488_5me2" / "emd_3488.mrc").read_bytes()
    good = gzip.compress(src, 6, mtime=0) * 2
    bad_mid, _ = _multi_member_with_corrupt_middle(src)
    bad_crc = bytearray(good)
    bad_crc[-6] ^= 1  # CRC-32 of the last member
    bad_isize = bytearray(good)
    bad_isize[-2] ^= 1  # ISIZE of the last member
    cases = {"good": good, "mid": bad_mid, "crc": bytes(bad_crc), "isize": bytes(bad_isize),
             "cut": good[:-3], "empty": b""}
    v = {}
    for name, data in cases.items():
        g = GzipCheck()
        for i in range(0, len(data), 100_000):
            g.feed(data[i:i + 100_000])
        v[name] = g.result()
    assert v["good"] is None
    assert v["mid"].startswith("corrupt gzip (member 2,")
    assert v["crc"].startswith("corrupt gzip (member 2,")
    assert v["isize"].startswith("corrupt gzip (member 2,")
    assert v["cut"] == "truncated gzip"
    assert v["empty"] == "empty file, not gzip"
    # the inflated size is bounded: two members of 4 MB stop a 5 MB cap
    g = GzipCheck(max_inflated=5_000_000)
    g.feed(good)
    assert g.result().startswith("inflates to more than")


def test_resume_at_unaligned_offset(served, tmp_path):
    """Drops at odd bytes resume into a byte-identical file."""
    name = "/emd_3488.map.gz"
    size = (served / name[1:]).stat().st_size
    cache = tmp_path / "cache"
    with LoopbackArchive(served) as srv:
        srv.add_fault(name, "drop", 123_457)
        srv.add_fault(name, "drop", 700_001)
        r = fast_client(chunk_size=65536).download(srv.url + name, cache, progress=False)
        assert srv.bytes_sent[name] == size
    assert r.path.read_bytes() == (served / name[1:]).read_bytes()
    assert r.sha256 == hashlib.sha256(r.path.read_bytes()).hexdigest()


def test_write_error_is_one_line_and_leaves_no_object(served, tmp_path):
    """A real write failure (the file-size limit of this process, EFBIG) ends the download with
    one line naming the entry, and no object enters the cache."""
    import resource
    import signal

    cache = tmp_path / "cache"
    cache.mkdir()
    old_sig = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    with LoopbackArchive(served) as srv:
        try:
            resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, old[1]))
            with pytest.raises(ArchiveError) as ei:
                fast_client().download(srv.url + "/emd_3488.map.gz", cache, what="5me2: map EMD-3488", progress=False)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old)
            signal.signal(signal.SIGXFSZ, old_sig)
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("5me2: map EMD-3488: cannot write cache")
    assert "too large" in msg
    assert cache_objects(cache) == [] and _partial_files(cache) == []
