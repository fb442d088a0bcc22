"""Where the site's data come from: a *source* lists the entries and gives each one's detail and
the pipeline versions' summaries, as :func:`rerefine.reports.site.build_site` takes them.

:class:`DatabaseSource` reads the results database through :mod:`rerefine.reports.queries` only;
:class:`DictSource` holds entry dicts in memory (tests, previews) and takes its version pages from a
database too, so every version comparison is :func:`rerefine.reports.queries.compare_versions`.
"""

from __future__ import annotations

import datetime as dt

from rerefine.reports import db, queries
from rerefine.reports.numbers import finite_float
from rerefine.reports.site_manifest import data_hash
from rerefine.reports.site_views import date_text, delta, page_slug, residue_columns
from rerefine.reports.verdict import CC_MARGIN


def _impact_item(pdb_id, title, resolution, prev_cc, cur_cc, d_q, prev_verdict, cur_verdict, why) -> dict:
    return {"pdb_id": pdb_id, "slug": page_slug(pdb_id), "title": title or "", "resolution": finite_float(resolution),
            "prev_cc": finite_float(prev_cc), "cur_cc": finite_float(cur_cc), "d_cc": delta(prev_cc, cur_cc),
            "d_q": finite_float(d_q),
            "prev_verdict": prev_verdict, "cur_verdict": cur_verdict, "why": "; ".join(why)}


def _impact(both: list[dict], margin: float) -> dict:
    improved = sorted((i for i in both if not i["why"] and i["d_cc"] is not None and i["d_cc"] >= margin),
                      key=lambda i: -i["d_cc"])
    worsened = sorted((i for i in both if i["why"]), key=lambda i: i["d_cc"] if i["d_cc"] is not None else 0.0)
    return {"margin": margin, "n_both": len(both), "improved": improved, "worsened": worsened,
            "d_cc": [i["d_cc"] for i in both], "d_q": [i["d_q"] for i in both]}


class DictSource:
    """Site data held in memory (tests, previews).

    Parameters
    ----------
    entries : list of dict
        The latest result of every entry, as :func:`~rerefine.reports.site_views.entry_view` takes them.
    engine : sqlalchemy.engine.Engine, optional
        A results database whose pipeline versions make the method-impact pages (through
        :class:`DatabaseSource`, i.e. :func:`rerefine.reports.queries.compare_versions`);
        without it the site has no version pages.
    """

    def __init__(self, entries: list[dict], engine=None):
        self._entries = {str(e["pdb_id"]): e for e in entries}
        self._versions = DatabaseSource(engine) if engine is not None else None

    def listing(self, since=None) -> list[dict]:
        """Every entry (index-level data is all there is); marker = hash of the entry."""
        return [{**e, "marker": data_hash(e, "")} for e in self._entries.values()]

    def detail(self, item: dict) -> dict:
        return self._entries[str(item["pdb_id"])]

    def version_summaries(self) -> list[dict]:
        return self._versions.version_summaries() if self._versions is not None else []


class DatabaseSource:
    """Site data from the results database, through :mod:`rerefine.reports.queries` only.

    The listing is one query (:func:`~rerefine.reports.queries.latest_results`); an entry's
    full detail (:func:`~rerefine.reports.queries.entry_detail`, a handful of primary-key
    lookups) is read only when its marker changed: the run id and time stamps from the
    listing, plus any entry :func:`~rerefine.reports.queries.changed_since` the previous
    build started (entry metadata edits that the listing does not show).
    """

    def __init__(self, engine):
        self.engine = engine

    def listing(self, since=None) -> list[dict]:
        if isinstance(since, str):
            since = dt.datetime.fromisoformat(since)
        changed = set(queries.changed_since(self.engine, since)) if since is not None else None
        labels = self._labels()
        out = []
        for r in queries.latest_results(self.engine):
            before = {n: r.get(f"{n}_before") for n in db.METRIC_COLUMNS}
            after = {n: r.get(f"{n}_after") for n in db.METRIC_COLUMNS}
            marker = None if changed is not None and r["pdb_id"] in changed else data_hash(
                [r["run_id"], r["status"], r["verdict"], r["verdict_gate"], r["updated_at"], r["finished_at"], r["title"],
                 r["emdb_id"], r["resolution"], r["release_date"], r["version"], r["params_hash"]], "")
            out.append({"pdb_id": r["pdb_id"], "emdb_id": r["emdb_id"], "title": r["title"],
                        "resolution": r["resolution"], "release_date": r["release_date"],
                        "status": r["status"], "verdict": r["verdict"], "reason": r["reason"],
                        "verdict_gate": r["verdict_gate"],
                        "version": r["version"],
                        "version_label": labels.get((r["version"], r["params_hash"]), r["version"]),
                        "metrics": {"before": before, "after": after},
                        "run_id": r["run_id"], "marker": marker})
        return out

    def _labels(self) -> dict:
        """(version, params_hash) -> label: the version string, plus ``@hash`` when one version
        string ran with several parameter sets."""
        vs = queries.versions(self.engine)
        n = {}
        for v in vs:
            n[v["version"]] = n.get(v["version"], 0) + 1
        return {(v["version"], v["params_hash"]): v["version"] if n[v["version"]] == 1
                else f"{v['version']}@{v['params_hash'][:8]}" for v in vs}

    def detail(self, item: dict) -> dict:
        d = queries.entry_detail(self.engine, item["pdb_id"], run_id=item.get("run_id"))
        if d is None:
            return item
        return entry_from_detail(d, item.get("version_label"))

    def version_summaries(self) -> list[dict]:
        vs = queries.versions(self.engine)
        labels = self._labels()
        out = []
        prev = None
        for v in vs:
            label = labels[(v["version"], v["params_hash"])]
            spec = f"{v['version']}@{v['params_hash']}"
            dist = queries.distributions(self.engine, spec, metrics=("cc_mask",))
            comp = None
            if prev is not None:
                c = queries.compare_versions(self.engine, prev[1], spec)
                worse = {w["pdb_id"]: w["why"] for w in c["worse"]}
                comp = _impact([_impact_item(r["pdb_id"], r["title"], r["resolution"], r["cc_mask_a"], r["cc_mask_b"],
                                             r["d_q_score"], r["verdict_a"], r["verdict_b"], worse.get(r["pdb_id"], []))
                                for r in c["rows"]], CC_MARGIN)
            counts = dict(v["by_status"])
            counts.pop("done", None)
            counts.update(v["by_verdict"])
            out.append({"version": label, "created": v["created_at"], "git_commit": v["git_commit"],
                        "parameters": v["params"] or {}, "n": v["n_runs"], "counts": counts,
                        "median_dcc": dist["metrics"]["cc_mask"]["summary_delta"]["median"],
                        "previous": prev[0] if prev else None, "comp": comp})
            prev = (label, spec)
        return out


def entry_from_detail(d: dict, version_label: str | None = None) -> dict:
    """Entry dict (input of :func:`~rerefine.reports.site_views.entry_view`) from :func:`rerefine.reports.queries.entry_detail`."""
    e, run = d["entry"], d.get("run") or {}
    details = e.get("method_details") or {}
    out = {k: e.get(k) for k in ("pdb_id", "emdb_id", "title", "resolution", "release_date", "method")}
    out["authors"] = details.get("authors") or ""
    if not run:
        out["status"] = "no run"
        return out
    before = dict(run.get("before") or {k: run.get(f"{k}_before") for k in db.METRIC_COLUMNS})
    after = dict(run.get("after") or {k: run.get(f"{k}_after") for k in db.METRIC_COLUMNS})
    sharp = {k: run.get(k) for k in ("b_iso_before", "b_iso_after", "b_sharpen")}
    sharp["method"] = run.get("sharpening_method")
    for m in (after, before):  # a radial amplitude profile, if the pipeline kept one
        sub = m.get("sharpening") if isinstance(m.get("sharpening"), dict) else {}
        if sub.get("radial") and "radial" not in sharp:
            sharp["radial"] = sub["radial"]
    out.update({
        "status": run.get("status"), "verdict": run.get("verdict"), "reason": run.get("reason"),
        "verdict_reasons": run.get("verdict_reasons") or [],
        "verdict_gate": run.get("verdict_gate"), "verdict_gates": run.get("verdict_gates") or [],
        "version": run.get("version"), "version_label": version_label or run.get("version"),
        "git_commit": run.get("git_commit"), "parameters": run.get("params") or {},
        "timings": run.get("timings") or {}, "host": run.get("host"),
        "metrics": {"before": before, "after": after}, "sharpening": sharp,
        "residues": residue_columns(run.get("per_residue")), "artefacts": run.get("artefacts") or [],
        "history": [{"version": h.get("version"), "status": h.get("status"), "verdict": h.get("verdict"),
                     "reason": h.get("reason") if h.get("status") != "done" else None,
                     "cc_mask_before": h.get("cc_mask_before"), "cc_mask_after": h.get("cc_mask_after"),
                     "finished_at": date_text(h.get("finished_at"))} for h in d.get("history") or []],
    })
    return out
