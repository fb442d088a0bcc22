"""The download client the HTTP and fault tests use against the loopback archive: the production
:class:`rerefine.harvester.http.HttpClient` with a fast back-off (the schedule itself is the same
code), a look into its cache, and the real map the served folders hold."""

from __future__ import annotations

import gzip
from pathlib import Path

from rerefine.harvester.http import HttpClient


def fast_client(**kw) -> HttpClient:
    """An :class:`HttpClient` with back-off 0.01-0.05 s, no spacing, a 2 s timeout and 3 retries;
    ``kw`` overrides any of them."""
    base = dict(backoff=0.01, max_backoff=0.05, min_interval=0.0, timeout=2.0, retries=3)
    base.update(kw)
    return HttpClient(**base)


def cache_objects(cache: Path) -> list[Path]:
    """The sealed objects of a download cache folder."""
    objects = Path(cache) / "objects"
    return [p for p in objects.rglob("*") if p.is_file()] if objects.exists() else []


def serve_real_map(root: Path, test_data: Path) -> bytes:
    """Write EMD-3488's real map (shared data), gzipped (level 1, no time stamp), to
    ``root/emd_3488.map.gz``, the file the served folders of the HTTP and fault tests hold; returns
    the gzipped bytes."""
    src = Path(test_data) / "maps_models" / "emd_3488_5me2" / "emd_3488.mrc"
    data = gzip.compress(src.read_bytes(), compresslevel=1, mtime=0)
    (Path(root) / "emd_3488.map.gz").write_bytes(data)
    return data
