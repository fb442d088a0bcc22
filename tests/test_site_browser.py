"""The built site in a real browser: headless Chromium driven by Selenium.

The site is served by a static HTTP server on loopback (and opened from ``file://``);
the tests sort and filter the index (also with 20,000 rows), open an entry page, check
that the charts are drawn and styled, that phone-width pages do not overflow, that no
script from the archive runs, and that the browser requests nothing from any host but
the loopback server. Screenshots go to the test's tmp_path.
"""

from __future__ import annotations

import functools
import http.server
import json
import random
import shutil
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

from rerefine.reports import site, site_sources, site_views

from ci import missing  # noqa: E402
from test_site import XSS_TITLE, history_engine, make_entries  # noqa: E402  (tests/ is on sys.path under pytest)

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             "/usr/bin/chromium") if p and Path(p).exists()), None)
CHROMEDRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver")
                     if p and Path(p).exists()), None)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run"]


def _need_browser():
    if not CHROMIUM or not CHROMEDRIVER:
        missing("headless Chromium tests need the Debian packages chromium and chromium-driver "
                    "(apt-get install -y chromium chromium-driver; .ci/run installs them)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing("selenium is not installed (pip install -e '.[test]')")


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Two built sites under one loopback HTTP server: ``small/`` (60 entries) and ``big/``
    (the same pages with a 20,000-row index)."""
    root = tmp_path_factory.mktemp("www")
    entries = make_entries(60, seed=21)
    small = root / "small"
    engine = history_engine(tmp_path_factory.mktemp("db"), {"1.0": (entries, {"cycles": 5})})
    site.build_site(site_sources.DictSource(entries, engine=engine), small)
    engine.dispose()
    big = root / "big"
    shutil.copytree(small, big)
    rng = random.Random(4)
    rows = []
    for i in range(20000):
        r = site_views.index_row(site_views.entry_view({
            "pdb_id": f"pdb_{i:08d}", "emdb_id": f"EMD-{20000 + i}", "title": f"Big archive entry {i}",
            "resolution": round(1.5 + 3.5 * rng.random(), 2), "status": "failed" if i % 10 == 0 else "done",
            "metrics": {"before": {"cc_mask": rng.random()}, "after": {"cc_mask": rng.random()}}}))
        r["slug"] = site_views.page_slug(r["pdb_id"])
        rows.append(r)
    (big / "data" / "index.js").write_text(site.index_script(site.index_table(rows)))
    handler = functools.partial(_Quiet, directory=str(root))
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield {"root": root, "base": f"http://127.0.0.1:{srv.server_address[1]}", "entries": entries, "big_rows": rows}
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def driver():
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for f in FLAGS:
        opts.add_argument(f)
    profile = tempfile.mkdtemp(prefix="rr-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    opts.add_argument("--window-size=1280,900")
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(30)
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _requests(driver) -> list[str]:
    """URLs the browser requested since the last call (Chrome performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def _assert_local(urls: list[str], expect: str | None = None) -> None:
    """No request left the loopback host; ``expect`` (a URL ending) shows the log is not empty."""
    if expect:
        assert any(expect in u for u in urls), [u for u in urls if not u.startswith("chrome:")]
    for u in urls:
        p = urlparse(u)
        if p.scheme in ("chrome", "chrome-untrusted", "about", "devtools"):
            continue  # the browser's own pages (new tab), not a network request
        assert p.scheme in ("data", "file") or p.hostname == "127.0.0.1", f"request to another host: {u}"


def _column(driver, key: str) -> list[str]:
    return driver.execute_script("""
        var key = arguments[0], i = -1, ths = document.querySelectorAll('#entries thead th');
        for (var k = 0; k < ths.length; k++) { if (ths[k].dataset.key === key) { i = k; } }
        return Array.prototype.map.call(document.querySelectorAll('#entries tbody tr'),
                                        function (tr) { return tr.cells[i].textContent; });""", key)


def _click_header(driver, key: str) -> float:
    """Click a column header; returns the milliseconds the synchronous re-sort and render took."""
    return driver.execute_script(
        "var t0 = performance.now();"
        "document.querySelector('#entries thead th[data-key=\"' + arguments[0] + '\"] button').click();"
        "return performance.now() - t0;", key)


def _num(s: str) -> float:
    return float(s.replace("−", "-"))


def test_index_sorts_filters_and_pages(served, driver, tmp_path):
    from selenium.webdriver.common.by import By

    _requests(driver)
    driver.get(served["base"] + "/small/index.html")
    n = len(served["entries"])
    assert driver.find_element(By.ID, "count").text == f"Showing 1–{n} of {n} entries."
    assert len(driver.find_elements(By.CSS_SELECTOR, "#entries tbody tr")) == n
    # sort by CCmask after, ascending then descending; missing values (failed runs) last
    _click_header(driver, "cc_mask_after")
    th = driver.find_element(By.CSS_SELECTOR, '#entries th[data-key="cc_mask_after"]')
    assert th.get_attribute("aria-sort") == "ascending"
    vals = _column(driver, "cc_mask_after")
    known = [_num(v) for v in vals if v != "–"]
    assert known == sorted(known) and vals[-1] == "–" and vals.index("–") == len(known)
    _click_header(driver, "cc_mask_after")
    assert th.get_attribute("aria-sort") == "descending"
    known = [_num(v) for v in _column(driver, "cc_mask_after") if v != "–"]
    assert known == sorted(known, reverse=True)
    # text filter
    box = driver.find_element(By.ID, "f-text")
    box.send_keys("complex 1")
    driver.implicitly_wait(0)
    from selenium.webdriver.support.ui import WebDriverWait

    expect = sum(1 for e in served["entries"] if "complex 1" in e["title"].lower())
    WebDriverWait(driver, 5).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#entries tbody tr")) == expect)
    assert all("complex 1" in t.lower() for t in _column(driver, "title"))
    assert "matching entries" in driver.find_element(By.ID, "count").text
    box.clear()
    driver.execute_script("var b = document.getElementById('f-text'); b.value = ''; b.dispatchEvent(new Event('input'));")
    # status filter
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, "f-status")).select_by_visible_text("failed")
    n_failed = sum(1 for e in served["entries"] if e["status"] == "failed")
    WebDriverWait(driver, 5).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#entries tbody tr")) == n_failed)
    assert set(_column(driver, "status")) == {"failed"}
    # the state is kept in the URL fragment
    assert "status=failed" in driver.current_url
    driver.save_screenshot(str(tmp_path / "index-filtered.png"))
    _assert_local(_requests(driver), expect="/small/data/index.js")


def test_script_in_archive_text_is_inert(served, driver):
    from selenium.webdriver.common.by import By

    driver.get(served["base"] + "/small/index.html#q=" + "window.__xss")
    titles = _column(driver, "title")
    assert titles == [XSS_TITLE]  # shown as text
    assert driver.execute_script("return window.__xss") is None
    assert not driver.find_elements(By.CSS_SELECTOR, "#entries tbody img, #entries tbody script")
    bad = served["entries"][3]
    driver.get(served["base"] + f"/small/entry/{site_views.page_slug(bad['pdb_id'])}.html")
    assert XSS_TITLE in driver.find_element(By.TAG_NAME, "h1").text
    assert driver.execute_script("return window.__xss") is None


def test_entry_page_draws_its_charts(served, driver, tmp_path):
    from selenium.webdriver.common.by import By

    _requests(driver)
    e = served["entries"][0]
    driver.get(served["base"] + "/small/index.html")
    driver.find_element(By.LINK_TEXT, e["pdb_id"]).click()
    assert driver.current_url.endswith(f"/small/entry/{site_views.page_slug(e['pdb_id'])}.html")
    assert e["title"] in driver.find_element(By.TAG_NAME, "h1").text
    charts = driver.execute_script("""
        return Array.prototype.map.call(document.querySelectorAll('svg.chart'), function (svg) {
          var r = svg.getBoundingClientRect();
          var paths = svg.querySelectorAll('.data path');
          var drawn = Array.prototype.filter.call(paths, function (p) {
            var b = p.getBBox(); return b.width > 0 && b.height > 0; }).length;
          var line = svg.querySelector('.data path.s-after');
          return {w: r.width, h: r.height, paths: paths.length, drawn: drawn,
                  stroke: line ? getComputedStyle(line).stroke : null,
                  name: svg.getAttribute('aria-labelledby')};
        });""")
    assert len(charts) == 3  # chains A and B, CC-vs-Q scatter
    for c in charts:
        assert c["w"] > 300 and c["h"] > 200
        assert c["paths"] >= 2 and c["drawn"] == c["paths"]
        assert c["stroke"] == "rgb(0, 114, 178)"  # styled by the bundled stylesheet
    driver.save_screenshot(str(tmp_path / "entry-wide.png"))
    # phone width: nothing wider than the screen (wide tables scroll inside their box)
    driver.set_window_size(390, 844)
    try:
        overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        driver.get(served["base"] + "/small/index.html")
        assert driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth") <= 0
        driver.get(served["base"] + f"/small/entry/{site_views.page_slug(e['pdb_id'])}.html")
        driver.save_screenshot(str(tmp_path / "entry-phone.png"))
    finally:
        driver.set_window_size(1280, 900)
    _assert_local(_requests(driver), expect="/small/static/site.css")


def test_pages_work_from_file_urls(served, driver):
    from selenium.webdriver.common.by import By

    small = served["root"] / "small"
    driver.get((small / "index.html").as_uri())
    n = len(served["entries"])
    assert driver.find_element(By.ID, "count").text == f"Showing 1–{n} of {n} entries."
    e = served["entries"][1]
    driver.find_element(By.LINK_TEXT, e["pdb_id"]).click()
    assert driver.execute_script("return document.querySelectorAll('svg.chart').length") == 3
    assert driver.execute_script(
        "return getComputedStyle(document.querySelector('header.top')).backgroundColor") == "rgb(36, 41, 47)"
    for page in ("archive.html", "versions.html", "version/1.0.html"):
        driver.get((small / page).as_uri())
        assert driver.find_element(By.TAG_NAME, "h1").text
    _assert_local(_requests(driver))


def test_index_with_20000_rows(served, driver, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    rows = served["big_rows"]
    driver.get(served["base"] + "/big/index.html")
    assert driver.find_element(By.ID, "count").text == "Showing 1–100 of 20000 entries."
    assert len(driver.find_elements(By.CSS_SELECTOR, "#entries tbody tr")) == 100
    ms_sort = _click_header(driver, "resolution")
    res = [_num(v) for v in _column(driver, "resolution")]
    assert res == sorted(res) and res[0] == pytest.approx(min(r["resolution"] for r in rows), abs=0.005)
    driver.find_element(By.ID, "p-last").click()
    assert driver.find_element(By.ID, "p-info").text == "Page 200 of 200"
    Select(driver.find_element(By.ID, "f-status")).select_by_visible_text("failed")
    WebDriverWait(driver, 5).until(lambda d: "2000 matching" in d.find_element(By.ID, "count").text)
    ms_filter = driver.execute_script(
        "var t0 = performance.now(); var b = document.getElementById('f-res'); b.value = '2';"
        "b.dispatchEvent(new Event('input')); return performance.now() - t0;")
    expect = sum(1 for r in rows if r["status"] == "failed" and r["resolution"] <= 2)
    assert f"of {expect} matching" in driver.find_element(By.ID, "count").text
    driver.save_screenshot(str(tmp_path / "index-20000.png"))
    print(f"\n20,000-row index: sort {ms_sort:.0f} ms, filter {ms_filter:.0f} ms (headless Chromium)")
