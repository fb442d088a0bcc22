"""The site's manifest (``.manifest.json``): a hash of every page's data from the previous build,
so that an incremental build rewrites a page only when its data changed.

The file holds ``salt`` (the rendering code's fingerprint: a different one invalidates every
page), ``started`` (when the build that wrote it began: entries changed since then are read
again), ``pages`` (page path -> data hash) and ``markers`` (entry page path -> the source's
marker, which lets a page be kept without reading its data at all).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from rerefine.common.atomicfile import write_atomic

MANIFEST = ".manifest.json"


def json_default(o):
    """JSON form of what :func:`json.dumps` cannot write: dates as ISO text, numpy arrays by dtype,
    shape and SHA-1 of their bytes, numpy scalars as Python numbers, anything else as text."""
    if hasattr(o, "isoformat"):
        return o.isoformat()
    if isinstance(o, np.ndarray):
        # Arrays (per-residue columns) are hashed by their bytes, see data_hash.
        return ["ndarray", str(o.dtype), list(o.shape), hashlib.sha1(o.tobytes()).hexdigest()]
    if hasattr(o, "item"):
        return o.item()
    return str(o)


def data_hash(obj, salt: str) -> str:
    """Hash of a page's data (plus ``salt``, the code fingerprint); numpy arrays by their bytes."""
    text = json.dumps(obj, sort_keys=True, default=json_default, separators=(",", ":"))
    return hashlib.sha256((salt + text).encode()).hexdigest()[:24]


class Manifest:
    """The previous build's page hashes and markers (``old``) and this build's (``new``).

    Parameters
    ----------
    out : Path
        Site folder (the manifest is ``out/.manifest.json``).
    salt : str
        Fingerprint of the rendering code; a manifest with another salt counts as absent.
    full : bool
        Ignore the previous manifest (rewrite every page).
    """

    def __init__(self, out: Path, salt: str, full: bool = False):
        self.path = Path(out) / MANIFEST
        self.salt = salt
        old = {}
        if not full and self.path.is_file():
            try:
                old = json.loads(self.path.read_text())
            except (OSError, ValueError):
                old = {}
        same = old.get("salt") == salt
        self.old: dict[str, str] = old.get("pages", {}) if same else {}
        self.old_markers: dict[str, str] = old.get("markers", {}) if same else {}
        self.old_started: str | None = old.get("started") if same else None
        self.new: dict[str, str] = {}
        self.markers: dict[str, str] = {}

    def keep_marked(self, rel: str, marker: str, exists: bool) -> bool:
        """True (and ``rel`` carried over with its old hash) when ``marker`` is the one of the
        previous build and the page file ``exists``."""
        if self.old_markers.get(rel) == marker and rel in self.old and exists:
            self.new[rel] = self.old[rel]
            self.markers[rel] = marker
            return True
        return False

    def record(self, rel: str, h: str, marker: str | None = None) -> None:
        """``rel`` has data hash ``h`` (and source marker ``marker``) in this build."""
        self.new[rel] = h
        if marker is not None:
            self.markers[rel] = marker

    def unchanged(self, rel: str, h: str) -> bool:
        """Whether the previous build wrote ``rel`` from data with hash ``h``."""
        return self.old.get(rel) == h

    def gone(self) -> list[str]:
        """Pages of the previous build that this build did not make (entry withdrawn, version gone)."""
        return sorted(set(self.old) - set(self.new))

    def write(self, started: str) -> None:
        """Write the manifest (atomically; last, so that an interrupted build is redone)."""
        write_atomic(self.path, json.dumps({"salt": self.salt, "started": started, "pages": self.new,
                                            "markers": self.markers}, sort_keys=True, indent=0))
