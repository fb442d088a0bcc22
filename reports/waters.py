"""The entry page's view of the ordered-water step (:func:`rerefine.refine.douse.douse`): what was
added and what was removed, from the summary the pipeline stores under ``metrics_after["douse"]``."""

from __future__ import annotations

from rerefine.reports.numbers import finite_float

#: Rows listed per table on the page; the counts always cover every water.
MAX_ROWS = 200


def waters_view(d) -> dict | None:
    """Normalise a douse summary for the page: ``status``, ``skipped`` (bool), counts ``n_added``,
    ``n_kept``, ``n_removed`` and up to :data:`MAX_ROWS` rows each of ``added`` (``label``,
    ``height_sd``, ``partner``, ``distance`` Å, ``b_iso`` Å²) and ``removed`` (``label``,
    ``reason``). None when the run has no douse record (older pipeline versions)."""
    if not isinstance(d, dict) or not d.get("status"):
        return None
    status = str(d["status"])
    added = [w for w in d.get("added") or [] if isinstance(w, dict)]
    removed = [w for w in d.get("removed") or [] if isinstance(w, dict)]
    kept = d.get("kept")

    def label(w):
        return f"{w.get('chain', '')}/HOH {w.get('seq', '')}{w.get('icode') or ''}"

    return {
        "status": status,
        "skipped": status != "ok",
        "n_added": int(d.get("n_added", len(added)) or 0),
        "n_kept": int(d.get("n_kept", len(kept) if isinstance(kept, list) else 0) or 0),
        "n_removed": int(d.get("n_removed", len(removed)) or 0),
        "added": [{"label": label(w), "height_sd": finite_float(w.get("height_sd")), "partner": str(w.get("partner", "")),
                   "distance": finite_float(w.get("distance")), "b_iso": finite_float(w.get("b_iso"))} for w in added[:MAX_ROWS]],
        "removed": [{"label": label(w), "reason": str(w.get("reason", ""))} for w in removed[:MAX_ROWS]],
        "max_rows": MAX_ROWS,
    }
