"""The entry page's 3D view (issue 20, part 1) in headless Chromium, from ``file://`` and from a
loopback HTTP server.

Real data: residues 5-44 of the 3AJO-derived model in the 1.75 Å EMD-20026 box (a part, so that
software WebGL on a shared machine draws it in seconds) as deposited and after douse (so the two
models differ by their waters), the map, and the difference map of the model. The view
must load only on request, draw something (a screenshot of the viewer area with more than
:data:`MIN_DRAWN` of its pixels not background), request nothing from another host, and focus a
residue from the list. Without the vendored Mol* files it says so instead.
"""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
import time
from pathlib import Path

import pytest

from rerefine.refine import diffmap, douse, mapio, modelio
from rerefine.reports import site, site_sources, viewer

from test_site_browser import _assert_local, _requests, driver  # noqa: F401  (shared fixture)

pytestmark = pytest.mark.browser

#: Fraction of the viewer's pixels that must differ from its white background. Measured: 0.12
#: for this entry from file:// and from http; an empty viewer shows only its toolbar (under 0.02).
MIN_DRAWN = 0.05
#: Seconds to wait for Mol* (software WebGL on a shared 2-core machine took up to 70 s).
LOAD_TIMEOUT = 400


def _need_molstar():
    from importlib import resources

    src = Path(str(resources.files("rerefine.site"))) / "static" / "molstar" / "molstar.js"
    if not src.is_file():
        pytest.skip("the Mol* viewer is not vendored (make setup runs scripts/vendor_molstar.sh)")


@pytest.fixture(scope="module")
def viewer_site(tmp_path_factory, pairs):
    _need_molstar()
    root = tmp_path_factory.mktemp("viewer-www")
    model, mp, res = pairs["emd_20026_box_3ajo_refined"]
    full, dmap = modelio.read_model(model), mapio.read_map(mp)
    doused_full = douse.douse(full, dmap, res).structure
    st, doused = (_part(x, 5, 44) for x in (full, doused_full))
    diff, _ = diffmap.difference_map(doused, dmap, res)
    level = viewer.matched_level(dmap, float(dmap.data.mean() + 2 * dmap.data.std()), dmap)
    rows = [{"chain": "A", "seq": 50, "label": "A/LEU 50", "why": "test"}]
    data = viewer.write_viewer_data(root / "src" / "loc_3ajo_viewer.js", st, doused, dmap, diff, level,
                                    residues=rows, title="3AJO")
    entry = {"pdb_id": "LOC3AJO", "status": "done", "resolution": res,
             "metrics": {"before": {"cc_mask": 0.8}, "after": {"cc_mask": 0.8}},
             "artefacts": [{"kind": "viewer_data", "path": str(data), "size": data.stat().st_size}]}
    other = {"pdb_id": "LOC0001", "status": "done", "resolution": 3.0,
             "metrics": {"before": {"cc_mask": 0.8}, "after": {"cc_mask": 0.8}}, "artefacts": []}
    out = root / "site"
    site.build_site(site_sources.DictSource([entry, other]), out)
    bare = root / "bare"
    shutil.copytree(out, bare)
    shutil.rmtree(bare / "static" / "molstar")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield {"root": root, "site": out, "bare": bare, "base": f"http://127.0.0.1:{srv.server_address[1]}"}
    srv.shutdown()
    srv.server_close()


def _part(st, first: int, last: int):
    """Residues ``first``-``last`` of the polymer and the waters within 4 Å of them."""
    import numpy as np
    from scipy.spatial import cKDTree

    out = st.clone()
    for ch in out[0]:
        for i in range(len(ch) - 1, -1, -1):
            if not ch[i].is_water() and not first <= ch[i].seqid.num <= last:
                del ch[i]
    tree = cKDTree(np.array([a.pos.tolist() for ch in out[0] for r in ch if not r.is_water() for a in r]))
    for ch in out[0]:
        for i in range(len(ch) - 1, -1, -1):
            if ch[i].is_water() and tree.query(ch[i][0].pos.tolist())[0] > 4.0:
                del ch[i]
    out.remove_empty_chains()
    return out


def _retry(call, tries: int = 5):
    """``call()``, asked again when the busy renderer answers the driver too late."""
    from selenium.common.exceptions import TimeoutException

    for k in range(tries):
        try:
            return call()
        except TimeoutException:
            if k == tries - 1:
                raise


def _wait_state(drv, timeout=LOAD_TIMEOUT) -> str:
    t0 = time.time()
    state = None
    from selenium.common.exceptions import TimeoutException

    while time.time() - t0 < timeout:
        try:
            state = drv.execute_script(
                "return document.getElementById('viewer-section').getAttribute('data-viewer-state')")
        except TimeoutException:
            # the page's thread is busy in Mol* (software WebGL on a loaded machine): ask again
            continue
        if state in ("ready", "error"):
            return state
        time.sleep(0.5)
    return state or "timeout"


def _png_pixels(png: bytes):
    """RGB(A) pixels of an 8-bit, non-interlaced PNG (what Chromium's screenshots are) as an
    array (height, width, channels): a small decoder, so the test needs no imaging library."""
    import struct
    import zlib

    import numpy as np

    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w = 8, b"", None
    while pos < len(png):
        n, kind = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _c, _f, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and ctype in (2, 6) and interlace == 0, (depth, ctype, interlace)
            ch = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * ch)
    out = np.zeros((h, w * ch), np.int32)
    prev = np.zeros(w * ch, np.int32)
    for y in range(h):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) & 255
        else:  # Sub, Average, Paeth depend on the pixel to the left: one pixel at a time
            cur = np.zeros_like(line)
            for x in range(w * ch):
                a = cur[x - ch] if x >= ch else 0
                b = prev[x]
                c = prev[x - ch] if x >= ch else 0
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (line[x] + pred) & 255
        out[y] = cur
        prev = cur
    return out.reshape(h, w, ch)


def _drawn_fraction(png: bytes) -> float:
    """Fraction of the pixels that are not near-white (the viewer's background)."""
    px = _png_pixels(png)[..., :3]
    return float((px < 235).any(axis=2).mean())


def _open_and_check(drv, url: str, tmp_path: Path, name: str) -> None:
    _requests(drv)
    drv.get(url)
    before = _requests(drv)
    assert not any("molstar.js" in u or "_viewer.js" in u for u in before), "viewer data loaded before opening"
    drv.find_element("id", "viewer-open").click()
    state = _wait_state(drv)
    status = drv.find_element("id", "viewer-status").text
    assert state == "ready", (state, status)
    time.sleep(2)  # let the first frames render
    app = drv.find_element("id", "viewer-app")
    drv.execute_script("arguments[0].scrollIntoView()", app)
    png = _retry(lambda: app.screenshot_as_png)
    (tmp_path / f"{name}.png").write_bytes(png)
    drawn = _drawn_fraction(png)
    assert drawn > MIN_DRAWN, drawn
    urls = _requests(drv)
    _assert_local(urls, expect="molstar.js")
    assert any("loc3ajo_viewer.js" in u or "loc_3ajo_viewer.js" in u for u in urls)
    drv.find_element("css selector", "#viewer-residues button").click()
    assert drv.execute_script("return document.getElementById('viewer-section').getAttribute('data-focused')") == "A/LEU 50"


def test_viewer_from_file_url(driver, viewer_site, tmp_path):  # noqa: F811
    page = viewer_site["site"] / "entry" / "loc3ajo.html"
    _open_and_check(driver, page.as_uri(), tmp_path, "viewer-file")


def test_viewer_over_http(driver, viewer_site, tmp_path):  # noqa: F811
    _open_and_check(driver, f"{viewer_site['base']}/site/entry/loc3ajo.html", tmp_path, "viewer-http")


def test_no_viewer_without_data_and_a_clear_message_without_molstar(driver, viewer_site):  # noqa: F811
    driver.get((viewer_site["site"] / "entry" / "loc0001.html").as_uri())
    assert not driver.find_elements("id", "viewer-section")
    driver.get((viewer_site["bare"] / "entry" / "loc3ajo.html").as_uri())
    driver.find_element("id", "viewer-open").click()
    assert _wait_state(driver, 30) == "error"
    assert "not installed" in driver.find_element("id", "viewer-status").text
