"""The download client the HTTP and fault tests use against the loopback archive: the production
:class:`rerefine.harvester.http.HttpClient` with a fast back-off (the schedule itself is the same
code), and a look into its cache."""

from __future__ import annotations

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
