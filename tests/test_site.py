"""The static site: rendered HTML (structure, escaping, accessibility, links), incremental
builds, and the build from a real SQLite results database through the CLI.

Browser tests (headless Chromium) are in test_site_browser.py and reuse the synthetic
entries made here.
"""

from __future__ import annotations

import math
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from rerefine.reports import plots, site, site_charts, site_manifest, site_sources, site_views

XSS_TITLE = '<script>window.__xss = 1</script><img src=x onerror="window.__xss = 2"> & "quotes"'


# ----------------------------------------------------------------------------- synthetic data

def residue_rows(rng: random.Random, n: int, chains: str, cc0: float, q0: float, dcc: float) -> tuple[list, list]:
    """Per-residue rows before/after in the layout of ``store.store_result``."""
    before, after = [], []
    per = max(1, n // len(chains))
    for ch in chains:
        for k in range(1, per + 1):
            wave = 0.1 * math.sin(k / 9.0)
            common = {"chain": ch, "seq": k, "icode": "", "resname": "ALA"}
            before.append({**common, "cc": min(0.99, cc0 + wave + rng.gauss(0, 0.05)),
                           "q_score": q0 + wave + rng.gauss(0, 0.06), "b_iso": 40 + 20 * rng.random()})
            after.append({**common, "cc": min(0.99, cc0 + dcc + wave + rng.gauss(0, 0.05)),
                          "q_score": q0 + 0.02 + wave + rng.gauss(0, 0.06), "b_iso": 45 + 20 * rng.random()})
    return before, after


def make_entry(i: int, rng: random.Random, n_res: int = 120, chains: str = "AB", status: str | None = None) -> dict:
    """One synthetic entry dict as :func:`rerefine.reports.site_views.entry_view` takes it."""
    res = 1.8 + 3.0 * rng.random()
    cc0 = 0.55 + 0.3 * rng.random()
    dcc = rng.gauss(0.015, 0.02)
    q0 = 1.1192 - 0.1775 * res + rng.gauss(-0.05, 0.05)
    st = status or ("failed" if i % 17 == 5 else "done")
    before = {"cc_mask": cc0, "cc_box": cc0 - 0.1, "cc_peaks": cc0 - 0.15, "cc_volume": cc0 - 0.02,
              "q_score": q0, "atom_inclusion": 0.7 + 0.2 * rng.random(), "bond_rmsd": 0.008,
              "angle_rmsd": 1.2, "nonbonded_overlaps": 12}
    after = dict(before, cc_mask=cc0 + dcc, cc_box=cc0 - 0.1 + dcc, q_score=q0 + 0.01,
                 atom_inclusion=before["atom_inclusion"] + 0.01, bond_rmsd=0.006)
    d = {"pdb_id": f"{1 + i % 9}{i % 4096:03x}".upper() if i < 4096 else f"pdb_0000{i:04x}",
         "emdb_id": f"EMD-{10000 + i}", "title": f"Cryo-EM structure of synthetic complex {i}",
         "resolution": res, "release_date": f"20{20 + i % 6}-0{1 + i % 9}-1{i % 10}", "status": st,
         "version": "1.0", "parameters": {"weight": "auto", "cycles": 5}}
    if st == "done":
        rb, ra = residue_rows(rng, n_res, chains, cc0, q0, dcc)
        cols = site_views.residue_columns([{**{k: b[k] for k in ("chain", "seq", "icode", "resname")},
                                      "cc_before": b["cc"], "cc_after": a["cc"],
                                      "q_score_before": b["q_score"], "q_score_after": a["q_score"],
                                      "b_iso_before": b["b_iso"], "b_iso_after": a["b_iso"]} for b, a in zip(rb, ra)])
        d.update(verdict="improved" if dcc >= 0.01 else "worse" if dcc <= -0.01 else "unchanged",
                 metrics={"before": before, "after": after}, residues=cols,
                 sharpening={"b_iso_before": 80 + 40 * rng.random(), "b_iso_after": 20.0, "b_sharpen": -60.0})
    else:
        d["reason"] = f"{d['pdb_id']}: map file is not a valid MRC file (bad header)"
    return d


def make_entries(n: int, seed: int = 1, **kw) -> list[dict]:
    rng = random.Random(seed)
    out = [make_entry(i, rng, **kw) for i in range(n)]
    out[3]["title"] = XSS_TITLE
    return out


def history_engine(folder: Path, history: dict):
    """A SQLite results database holding ``{version: (entry dicts, parameters)}`` in that order
    (through ``store.store_result``), for the version pages: they come from
    ``queries.compare_versions`` like the real site's."""
    from rerefine.reports import db, store

    engine = db.make_engine(db.sqlite_url(folder / "history.sqlite"))
    db.upgrade(engine)
    for version, (entries, params) in history.items():
        for e in entries:
            m = e.get("metrics") or {}
            store.store_result(engine, entry={k: e[k] for k in ("pdb_id", "emdb_id", "title", "resolution",
                                                                 "release_date")},
                               pipeline_version=version, params=params, status=e["status"],
                               reason=e.get("reason"), metrics_before=m.get("before"), metrics_after=m.get("after"))
    return engine


# ----------------------------------------------------------------------------- HTML checks

class _Collect(HTMLParser):
    """Tags with attributes, plus text, of an HTML document."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.stack: list[str] = []
        self.script_text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.stack:
            while self.stack and self.stack.pop() != tag:
                pass

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "script":
            self.script_text.append(data)
        self.text.append(data)


def parse(path: Path) -> _Collect:
    p = _Collect()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def text_of(path: Path) -> str:
    """The visible text of a page, whitespace collapsed."""
    return re.sub(r"\s+", " ", " ".join(parse(path).text))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A site of 40 synthetic entries, two pipeline versions, one kept artefact."""
    out = tmp_path_factory.mktemp("site")
    files = tmp_path_factory.mktemp("files")
    entries = make_entries(40)
    model = files / "1000_refined.cif"
    model.write_text("data_1000\n")
    entries[0]["artefacts"] = [{"kind": "refined model", "path": str(model), "sha256": "ab" * 32},
                               {"kind": "difference map", "path": str(files / "gone.mrc")}]
    entries[1]["title"] = "Wide title " * 30
    # a radial amplitude profile (ln A falls linearly in s² with slope -B/4)
    s_vals = [0.02 * k for k in range(1, 15)]
    entries[0]["sharpening"]["radial"] = {"s": s_vals, "before": [math.exp(-25 * q * q) for q in s_vals],
                                          "after": [math.exp(-5 * q * q) for q in s_vals]}
    hist_a = make_entries(30, seed=5)
    engine = history_engine(tmp_path_factory.mktemp("db"), {"1.0": (hist_a, {"cycles": 3}),
                                                            "1.1": (entries, {"cycles": 5})})
    report = site.build_site(site_sources.DictSource(entries, engine=engine), out)
    engine.dispose()
    return out, entries, report


# ----------------------------------------------------------------------------- plots

def test_nice_ticks_are_round_and_cover_the_range():
    assert plots.nice_ticks(0.0, 1.0, 5) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    t = plots.nice_ticks(-0.037, 0.081, 4)
    assert t[0] >= -0.037 and t[-1] <= 0.081 and len(t) >= 3
    assert plots.nice_ticks(float("nan"), 1.0) == []


def test_line_chart_breaks_at_missing_values_and_escapes_text():
    svg = plots.line_panels("u", "A <b>title</b>", "desc & more", "x",
                            [plots.Panel("y", [plots.Series("s<1>", [1, 2, 3, 4, 5], [0.1, 0.2, None, 0.4, float("nan")])])])
    assert 'role="img"' in svg and 'aria-labelledby="u-t u-d"' in svg
    assert "<title id=\"u-t\">A &lt;b&gt;title&lt;/b&gt;</title>" in svg
    assert "desc &amp; more" in svg and "s&lt;1&gt;" in svg and "<b>" not in svg
    d = re.search(r'class="line s-after" d="([^"]+)"', svg).group(1)
    assert d.count("M") == 2  # two runs: (1, 2) and (4)
    assert len(re.findall(r"-?\d+", d)) == 7  # three points, x and y each, and the lone one's "h0"
    assert d.endswith("h0")  # a point standing alone is drawn as a dot


def test_scatter_draws_one_mark_per_finite_point():
    x = [0.1, 0.5, None, 0.9]
    y = [0.2, float("nan"), 0.3, 0.8]
    svg = plots.scatter("s", "t", "d", "x", "y", [plots.Series("pts", x, y, "after")])
    d = re.search(r'class="dots s-after" d="([^"]+)"', svg).group(1)
    assert d.count("h0") == 2


def test_box_plot_reports_counts_and_medians():
    svg = plots.box_by_group("b", "t", "d", "bins", "Δ", [("a", [1.0, 2.0, 3.0, None]), ("b", [])])
    assert "n=3" in svg and "n=0" in svg and "median 2" in svg


# ----------------------------------------------------------------------------- ids and science

def test_ids_are_validated_before_becoming_links():
    assert site_views.rcsb_url("7abc") == "https://www.rcsb.org/structure/7ABC"
    assert site_views.rcsb_url("pdb_00007abc") == "https://www.rcsb.org/structure/PDB_00007ABC"
    assert site_views.rcsb_url("javascript:alert(1)") is None
    assert site_views.rcsb_url("0abc") is None
    assert site_views.emdb_url("emd_1234") == "https://www.ebi.ac.uk/emdb/EMD-1234"
    assert site_views.emdb_url("EMD-12345") == "https://www.ebi.ac.uk/emdb/EMD-12345"
    assert site_views.emdb_url('EMD-1"><script>') is None
    assert site_views.page_slug("../../etc/passwd") == "etc_passwd"


def test_expected_q_follows_pintilie_2020():
    # Q_exp = -0.1775 d + 1.1192 (Pintilie et al. 2020): 0.764 at 2 Å, 0.587 at 3 Å.
    assert site_views.expected_q(2.0) == pytest.approx(0.7642, abs=1e-4)
    assert site_views.expected_q(3.0) == pytest.approx(0.5867, abs=1e-4)
    assert site_views.expected_q(None) is None and site_views.expected_q(-1) is None


# ----------------------------------------------------------------------------- rendered pages

def test_all_pages_are_built(built):
    out, entries, report = built
    assert (out / "index.html").is_file() and (out / "archive.html").is_file()
    assert (out / "versions.html").is_file() and (out / "version" / "1.1.html").is_file()
    assert (out / "static" / "site.css").is_file() and (out / "static" / "index.js").is_file()
    assert (out / "data" / "index.js").is_file()
    assert len(list((out / "entry").glob("*.html"))) == len(entries) == report.entries
    assert not list(out.rglob(".tmp-*"))  # atomic writes leave no temporaries


def test_archive_text_is_escaped_everywhere(built):
    out, entries, _ = built
    bad = entries[3]
    for f in out.rglob("*"):
        if f.suffix in (".html", ".js"):
            text = f.read_text(encoding="utf-8")
            assert "<script>window.__xss" not in text, f
            assert "onerror=\"window" not in text, f
    page = out / "entry" / f"{site_views.page_slug(bad['pdb_id'])}.html"
    html = page.read_text()
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in html
    doc = parse(page)
    assert XSS_TITLE in "".join(doc.text)  # shown literally, as text
    scripts = [a.get("src") for t, a in doc.tags if t == "script"]
    assert scripts == []  # entry pages run no script at all
    data = (out / "data" / "index.js").read_text()
    assert "\\u003cscript\\u003ewindow.__xss" in data


def test_entry_page_content_and_accessibility(built):
    out, entries, _ = built
    e = entries[0]
    doc = parse(out / "entry" / f"{site_views.page_slug(e['pdb_id'])}.html")
    text = " ".join(doc.text)
    tags = doc.tags
    hrefs = [a["href"] for t, a in tags if t == "a" and "href" in a]
    assert f"https://www.rcsb.org/structure/{e['pdb_id'].upper()}" in hrefs
    assert f"https://www.ebi.ac.uk/emdb/{e['emdb_id']}" in hrefs
    # before/after table of the fit metrics and geometry
    for label in ("CCmask", "CCbox", "CCpeaks", "CCvolume", "Q-score (mean)", "Atom inclusion", "RMSD bonds (Å)"):
        assert label in text
    assert f"{e['metrics']['before']['cc_mask']:.3f}" in text and f"{e['metrics']['after']['cc_mask']:.3f}" in text
    assert all(a.get("scope") in ("col", "row") for t, a in tags if t == "th")
    assert sum(t == "caption" for t, _ in tags) >= 2
    # plots: one per chain, the CC-vs-Q scatter and the radial amplitudes, each an accessible image
    svgs = [a for t, a in tags if t == "svg"]
    assert len(svgs) == 4
    assert "Radial amplitude profile of the map before and after sharpening" in text
    assert all(a.get("role") == "img" and a.get("aria-labelledby") for a in svgs)
    assert sum(t == "title" for t, _ in tags) >= 3 + 1  # page title + one per chart
    assert "expected Q at" in text and "Chain A" in text and "Chain B" in text
    assert f"{e['sharpening']['b_iso_before']:.1f} Å²" in text and "−60.0 Å²" in text
    # downloads: the kept file is linked relatively, the missing one listed as not kept
    assert "../files/" + site_views.page_slug(e["pdb_id"]) + "/1000_refined.cif" in hrefs
    assert (out / "files" / site_views.page_slug(e["pdb_id"]) / "1000_refined.cif").read_text() == "data_1000\n"
    assert "not kept on this site" in text
    assert "../version/1.0.html" in hrefs
    assert "weight" in text and "cycles" in text


def test_failed_entry_shows_its_reason(built):
    out, entries, _ = built
    e = next(x for x in entries if x["status"] == "failed")
    doc = parse(out / "entry" / f"{site_views.page_slug(e['pdb_id'])}.html")
    text = " ".join(doc.text)
    assert "Failed:" in text and "not a valid MRC file" in text
    assert not [a for t, a in doc.tags if t == "svg"]


def test_index_page_has_table_data_and_no_outside_requests(built):
    out, entries, _ = built
    doc = parse(out / "index.html")
    ths = [a for t, a in doc.tags if t == "th"]
    assert {a.get("data-key") for a in ths if a.get("scope") == "col"} >= {
        "pdb_id", "emdb_id", "title", "resolution", "release_date", "cc_mask_before", "cc_mask_after",
        "q_score_before", "q_score_after", "atom_inclusion_after", "d_bond_rmsd", "verdict", "status"}
    assert [a["src"] for t, a in doc.tags if t == "script"][1] == "static/index.js"
    links = [a["href"] for t, a in doc.tags if t == "a" and a.get("href", "").startswith("entry/")]
    assert len(links) == len(entries)  # first page (up to 100 rows) rendered without JavaScript
    # Every URL in the built site is either a relative path, the SVG namespace, or an
    # <a href> to the RCSB/EMDB entry pages: nothing is loaded from another host.
    allowed_link = re.compile(r'href="https://(www\.rcsb\.org/structure/|www\.ebi\.ac\.uk/emdb/EMD-)')
    # The vendored Mol* bundle (static/molstar/) names remote services for loaders our pages never
    # call; test_viewer_browser.py checks in Chromium that opening the 3D view requests nothing
    # from another host.
    for f in out.rglob("*"):
        if f.is_file() and f.suffix in (".html", ".js", ".css") and "molstar" not in f.parent.name:
            text = f.read_text(encoding="utf-8")
            text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
            text = allowed_link.sub("", text)
            assert not re.search(r"(https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}", text), f
            assert "@import" not in text and "url(http" not in text


def test_archive_and_version_pages(built):
    out, entries, _ = built
    arch = text_of(out / "archive.html")
    assert "CCmask versus mean Q-score across entries" in arch
    assert "CCmask versus atom inclusion across entries" in arch
    assert "Change in CCmask by resolution bin" in arch
    ver = text_of(out / "version" / "1.1.html")
    assert "Compared with" in ver and "1.0" in ver and "Worsened" in ver and "Improved" in ver
    assert "This is the first recorded version" in text_of(out / "version" / "1.0.html")


def test_method_impact_counts_follow_the_got_worse_rule(tmp_path):
    rng = random.Random(3)
    a = [make_entry(i, rng) for i in range(20)]
    b = [dict(e) for e in a]
    for e in b[:5]:  # 5 entries lose 0.05 CCmask after re-refinement under the new version
        e["metrics"] = {"before": e.get("metrics", {}).get("before", {}),
                        "after": dict(e.get("metrics", {}).get("after", {}) or {})}
        if e["metrics"]["after"]:
            e["metrics"]["after"]["cc_mask"] -= 0.05
    engine = history_engine(tmp_path, {"a": (a, {"v": "a"}), "b": (b, {"v": "b"})})
    s = site_sources.DictSource(b, engine=engine).version_summaries()
    engine.dispose()
    comp = s[1]["comp"]
    done_first5 = sum(1 for e in a[:5] if e["status"] == "done")
    assert len(comp["worsened"]) == done_first5
    assert comp["n_both"] == sum(1 for e in a if e["status"] == "done")
    assert not comp["improved"]


def test_residue_lines_break_at_gaps_in_the_numbering(tmp_path):
    """Residues 1-10, then a ligand numbered 201 in the same chain: the lines stop at residue 10 and
    the ligand is a dot of its own, not the end of a segment from residue 10."""
    rows = [{"chain": "A", "seq": k, "icode": "", "resname": "ALA", "cc_before": 0.7, "cc_after": 0.8,
             "q_score_before": 0.5, "q_score_after": 0.6} for k in list(range(1, 11)) + [201]]
    v = site_views.entry_view({"pdb_id": "1abc", "resolution": 3.0, "residues": site_views.residue_columns(rows)})
    (chart,) = site_charts.residue_charts(v)
    paths = re.findall(r'class="line s-after" d="([^"]+)"', chart["svg"])
    assert paths and all(d.count("M") == 2 and d.endswith("h0") for d in paths)


def test_entry_page_shows_the_placement_check(tmp_path):
    """The rigid-body placement check recorded with the deposited model's metrics: a table per
    chain, the advice only for a misplaced model, labels escaped, no section without a check."""
    entries = make_entries(4, seed=4, n_res=10)
    entries[0]["metrics"]["before"]["placement"] = {
        "by": "chain", "misplaced": True, "map_before": 5.2, "map_after": 5.5,
        "groups": [{"group": "A", "rotation_deg": 1.39, "shift": 0.38}, {"group": "<b>B", "rotation_deg": 1.42, "shift": 0.34}]}
    entries[1]["metrics"]["before"]["placement"] = {
        "by": "model", "misplaced": False, "groups": [{"group": "model", "rotation_deg": 0.03, "shift": 0.01}]}
    site.build_site(site_sources.DictSource(entries), tmp_path)
    page = [tmp_path / "entry" / f"{site_views.page_slug(e['pdb_id'])}.html" for e in entries]
    t0, t1, t2 = (text_of(p) for p in page[:3])
    assert "Placement in the map" in t0 and "1.39" in t0 and "0.34" in t0
    assert "rerefine refine --rigid-body chain" in t0
    assert "<b>B" not in page[0].read_text() and "&lt;b&gt;B" in page[0].read_text()
    assert "Placement in the map" in t1 and "sits where the map puts it" in t1 and "--rigid-body" not in t1
    assert "Placement in the map" not in t2


def test_parallel_build_writes_the_same_pages(tmp_path):
    entries = make_entries(70, seed=9, n_res=20)
    a = site.build_site(site_sources.DictSource(entries), tmp_path / "a", jobs=1)
    b = site.build_site(site_sources.DictSource(entries), tmp_path / "b", jobs=2)
    assert a.pages_written == b.pages_written == a.pages_total == b.pages_total
    for f in (tmp_path / "a").rglob("*.html"):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f
    import json

    ma, mb = (json.loads((tmp_path / d / site_manifest.MANIFEST).read_text()) for d in ("a", "b"))
    assert ma["pages"] == mb["pages"] and ma["markers"] == mb["markers"]
    assert site.build_site(site_sources.DictSource(entries), tmp_path / "b", jobs=2).pages_written == 0


def test_incremental_build_rewrites_only_changed_pages(tmp_path):
    entries = make_entries(12, seed=7)
    out = tmp_path / "site"
    r1 = site.build_site(site_sources.DictSource(entries), out)
    assert r1.pages_written == r1.pages_total
    keep = out / "entry" / f"{site_views.page_slug(entries[0]['pdb_id'])}.html"
    mtime = keep.stat().st_mtime_ns
    r2 = site.build_site(site_sources.DictSource(entries), out)
    assert r2.pages_written == 0 and r2.pages_total == r1.pages_total
    # one entry changes, one disappears
    changed = dict(entries[2], title="A new title")
    gone = entries[5]
    new = [changed if e is entries[2] else e for e in entries if e is not gone]
    r3 = site.build_site(site_sources.DictSource(new), out)
    assert f"entry/{site_views.page_slug(changed['pdb_id'])}.html" in r3.written
    assert not [w for w in r3.written if w.startswith("entry/") and w != f"entry/{site_views.page_slug(changed['pdb_id'])}.html"]
    assert "index.html" in r3.written and "data/index.js" in r3.written
    assert r3.pages_removed == 1 and not (out / "entry" / f"{site_views.page_slug(gone['pdb_id'])}.html").exists()
    assert keep.stat().st_mtime_ns == mtime
    assert "A new title" in (out / "entry" / f"{site_views.page_slug(changed['pdb_id'])}.html").read_text()
    r4 = site.build_site(site_sources.DictSource(new), out, full=True)
    assert r4.pages_written == r4.pages_total


# ----------------------------------------------------------------------------- from the database

def _store(engine, e: dict, version: str, params: dict, rng: random.Random, dcc: float | None = None):
    from rerefine.reports import store

    mb = (e.get("metrics") or {}).get("before")
    ma = dict((e.get("metrics") or {}).get("after") or {}) or None
    if ma is not None and dcc is not None:
        ma["cc_mask"] = mb["cc_mask"] + dcc
    rb = ra = None
    if e["status"] == "done":
        rb, ra = residue_rows(rng, 40, "A", mb["cc_mask"], mb["q_score"], 0.02)
    store.store_result(engine, entry={k: e[k] for k in ("pdb_id", "emdb_id", "title", "resolution", "release_date")},
                       pipeline_version=version, params=params, status=e["status"], reason=e.get("reason"),
                       metrics_before=mb, metrics_after=ma, per_residue_before=rb, per_residue_after=ra,
                       sharpening=e.get("sharpening"))


def test_site_build_from_the_database_through_the_cli(tmp_path, capsys):
    from rerefine.flows.cli import main
    from rerefine.reports import db

    url = f"sqlite:///{tmp_path / 'rr.sqlite'}"
    out = tmp_path / "site"
    assert main(["site", "build", "--out", str(out), "--url", url]) == 1  # no schema yet
    assert "rerefine db upgrade" in capsys.readouterr().err
    engine = db.make_engine(url)
    db.upgrade(engine)
    rng = random.Random(11)
    entries = make_entries(8, seed=11)
    entries[3]["title"] = XSS_TITLE
    for e in entries:
        _store(engine, e, "1.0", {"cycles": 3}, rng, dcc=0.03)
    for e in entries[:6]:
        _store(engine, e, "1.1", {"cycles": 5}, rng, dcc=-0.03 if e is entries[0] else 0.05)
    assert main(["site", "build", "--out", str(out), "--url", url]) == 0
    assert "8 entries" in capsys.readouterr().out
    pages = {p.name for p in (out / "entry").glob("*.html")}
    assert pages == {site_views.page_slug(e["pdb_id"]) + ".html" for e in entries}
    e0 = out / "entry" / f"{site_views.page_slug(entries[0]['pdb_id'])}.html"
    html = e0.read_text()
    assert "All runs of this entry" in html and "Chain A" in html
    assert "../version/1.1.html" in html
    ver = text_of(out / "version" / "1.1.html")
    assert "Worsened (1)" in ver and entries[0]["pdb_id"] in ver  # CCmask 0.03 below 1.0's
    assert "Compared with 1.0" in ver
    assert "&lt;script&gt;" in (out / "entry" / f"{site_views.page_slug(entries[3]['pdb_id'])}.html").read_text()

    # Nothing changed: nothing rewritten, and no entry detail even read.
    mtime = e0.stat().st_mtime_ns
    assert main(["site", "build", "--out", str(out), "--url", url, "--json", "-"]) == 0
    assert '"pages_written": 0' in capsys.readouterr().out
    # A new result for one entry: only that entry's page (plus the summaries) is rewritten.
    _store(engine, entries[7], "1.1", {"cycles": 5}, rng, dcc=0.04)
    r = site.build_site(site_sources.DatabaseSource(engine), out)
    entry_pages = [w for w in r.written if w.startswith("entry/")]
    assert entry_pages == [f"entry/{site_views.page_slug(entries[7]['pdb_id'])}.html"]
    assert e0.stat().st_mtime_ns == mtime
    # An entry-metadata-only change (not visible in the listing) is still picked up.
    from rerefine.reports import store

    store.store_result(engine, entry={"pdb_id": entries[1]["pdb_id"], "method": "single particle (updated)"},
                       pipeline_version="1.1", params={"cycles": 5}, status="done",
                       metrics_before=entries[1]["metrics"]["before"], metrics_after=entries[1]["metrics"]["after"])
    r = site.build_site(site_sources.DatabaseSource(engine), out)
    assert f"entry/{site_views.page_slug(entries[1]['pdb_id'])}.html" in r.written
    engine.dispose()


# ----------------------------------------------------------------------------- gates, validation, Rama plots

def test_entry_page_gates_validation_and_ramachandran(tmp_path):
    from rerefine.reports import verdict

    rng = random.Random(3)
    e = make_entry(0, rng, status="done")
    b, a = e["metrics"]["before"], e["metrics"]["after"]
    val = {"rama_favored_pct": 96.0, "rama_outliers": 1, "rotamer_outliers_pct": 1.0, "clashscore": 5.0,
           "cbeta_outliers": 0}
    b.update(val, contour_source="default: level enclosing 17 Å³ per non-H atom")
    a.update(val, rama_outliers=2, cc_mask_input_b=b["cc_mask"] + 0.02)
    rows_b = [{"chain": "A", "seq": k, "icode": "", "resname": "ALA", "phi": -60.0 + k, "psi": -45.0,
               "rama": "favored", "rotamer": None, "cbeta_dev": 0.05} for k in range(1, 6)]
    rows_b.append({"chain": "A", "seq": 6, "icode": "", "resname": "<X>", "phi": 60.0, "psi": -120.0,
                   "rama": "outlier", "rotamer": "favored", "cbeta_dev": 0.3})
    rows_a = [dict(r) for r in rows_b]
    rows_a[0].update(phi=70.0, psi=-100.0, rama="outlier")
    rows_a[5].update(rotamer="outlier", cbeta_dev=0.1)
    b["validation_residues"], a["validation_residues"] = rows_b, rows_a
    v = verdict.decide(b, a)
    assert (v.verdict, v.gate) == ("worse", "validation")
    e.update(verdict=v.verdict, verdict_gate=v.gate, verdict_reasons=v.reasons,
             verdict_gates=[{"name": g.name, "status": g.status, "detail": g.detail} for g in v.gates])
    out = tmp_path / "site"
    site.build_site(site_sources.DictSource([e]), out, copy_artefacts=False)
    page = out / "entry" / f"{site_views.page_slug(e['pdb_id'])}.html"
    html = page.read_text(encoding="utf-8")
    text = text_of(page)
    assert "decided by the validation gate" in text and "Ramachandran outliers 1 -> 2" in text
    assert "Validation (MolProbity-class) (decided)" in text
    assert "no EMDB recommended contour level" in text  # the fallback is said loudly
    assert "Williams et al. (2018)" in text and "CC-BY 4.0" in text  # Top8000 credited
    doc = parse(page)
    rama = [t for t in doc.tags if t[0] == "svg" and "rama" in t[1].get("class", "")]
    assert len(rama) == 2
    assert html.count('class="rama-out"') == 1 + 2  # one outlier before, two after
    assert "<X>" not in html and "&lt;X&gt;" in html  # residue names are escaped
    assert "Residues whose class changed in re-refinement (3)" in text  # Rama of 1, rotamer and C-beta of 6
    # the index carries the deciding gate
    assert "validation" in (out / "data" / "index.js").read_text()
    # labels nothing computes are gone: no Ramachandran/rotamer rows in the geometry table
    assert not {"clashscore", "rama_favored", "rama_outliers", "rotamer_outliers"} & set(site_views.GEOMETRY)


def test_ramachandran_regions_from_top8000():
    from rerefine.reports import entry_validation, ramaplot

    g = np.zeros((4, 3))
    g[1:3, 0] = 0.05
    g[0, 2] = 0.001
    assert ramaplot.region_runs(g, ramaplot.FAVOURED) == [(0, 1, 2)]
    assert ramaplot.region_runs(g, ramaplot.ALLOWED) == [(0, 1, 2), (2, 0, 1)]
    grid = entry_validation.general_rama_grid()
    assert grid.shape == (180, 180)
    cell = lambda phi, psi: grid[int((phi + 180) // 2), int((psi + 180) // 2)]  # noqa: E731
    # alpha helix and beta strand are favoured; (phi 0, psi 0) and (-60, -120) are outside even allowed
    assert cell(-63, -43) >= ramaplot.FAVOURED and cell(-120, 130) >= ramaplot.FAVOURED
    assert cell(0, 0) < ramaplot.ALLOWED and cell(-60, -120) < ramaplot.ALLOWED
