"""The entry page's ordered-water section (issue 20): added and removed waters from the douse
summary the pipeline stores under ``metrics_after["douse"]``."""

from __future__ import annotations

from test_site import make_entries, text_of

from rerefine.reports import site, site_sources, site_views


def test_entry_page_lists_added_and_removed_waters(tmp_path):
    entries = make_entries(4, seed=5, n_res=10)
    entries[0]["metrics"]["after"]["douse"] = {
        "status": "ok", "n_added": 2, "n_kept": 7, "n_removed": 1,
        "added": [{"chain": "W", "seq": 1, "height_sd": 6.25, "partner": "A/SER 12/OG", "distance": 2.71, "b_iso": 24.0},
                  {"chain": "W", "seq": 2, "height_sd": 4.5, "partner": "A/<b>ASP 3/OD1", "distance": 2.9}],
        "removed": [{"chain": "A", "seq": 301, "icode": "", "reason": "weak density (0.9 SD < 1.5)"}]}
    entries[1]["metrics"]["after"]["douse"] = {
        "status": "skipped: resolution 3.20 Å is worse than the 3.00 Å cut-off for ordered waters"}
    site.build_site(site_sources.DictSource(entries), tmp_path)
    pages = [tmp_path / "entry" / f"{site_views.page_slug(e['pdb_id'])}.html" for e in entries]
    t0, t1, t2 = (text_of(p) for p in pages[:3])
    assert "Ordered waters" in t0 and "2 added, 7 deposited waters kept, 1 removed" in t0
    assert "W/HOH 1" in t0 and "A/SER 12/OG" in t0 and "2.71" in t0
    assert "A/HOH 301" in t0 and "weak density" in t0
    assert "<b>ASP" not in pages[0].read_text() and "&lt;b&gt;ASP" in pages[0].read_text()
    assert "Ordered waters" in t1 and "worse than the 3.00 Å cut-off" in t1 and "W/HOH" not in t1
    assert "Ordered waters" not in t2
