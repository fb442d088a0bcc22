"""Small inline-SVG charts for the static site, built as strings in Python.

Why hand-built SVG rather than matplotlib or a JavaScript library: a full site build of
10,000 entries must finish in under two minutes, i.e. about 10 ms per entry page for query,
plots and template together. matplotlib needs 50-200 ms per figure; string-built SVG needs
well under a millisecond per chart. Inline SVG is also drawn without any script (it works
from ``file://``, in a text-only crawl and when printing), scales to the phone or wide
screen through ``viewBox``, and carries its own accessible name (``<title>``) and
description (``<desc>``) for screen readers. Colours come from CSS classes (``s-before``,
``s-after``, ...) so the stylesheet, not this module, decides the palette; before and after
also differ by dash pattern so the charts read without colour.

Every text that reaches the SVG goes through :func:`html.escape`; numbers are formatted
by this module. Missing values (``None`` or NaN) break lines and are left out of scatters.

Speed: data paths are drawn inside ``<g class="data" transform="scale(0.1)">`` so their
coordinates are integers in tenths of a pixel, formatted from numpy arrays in bulk (the
stylesheet scales stroke widths and dashes of ``.data`` by 10 accordingly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

import numpy as np

from rerefine.reports.numbers import finite_float

__all__ = [
    "nice_ticks",
    "line_panels",
    "scatter",
    "box_by_group",
    "Series",
    "Panel",
]


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values (steps of 1, 2 or 5 × 10^k) covering ``[lo, hi]``."""
    if not (_finite(lo) and _finite(hi)):
        return []
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        hi = lo + (abs(lo) * 0.1 or 1.0)
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    # The first round step not much finer than asked: 3-7 ticks for n = 4-5.
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= 0.7 * raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t += step
    return ticks


def _fmt(v: float, step: float | None = None) -> str:
    """Tick label: as many decimals as the tick step needs."""
    if step is None or step <= 0:
        return f"{v:g}"
    dec = max(0, -math.floor(math.log10(step) + 1e-9))
    if step * 10**dec % 1 > 1e-6:  # steps like 2.5
        dec += 1
    return f"{v:.{dec}f}"


def _px(v: float) -> str:
    """A coordinate in the SVG (pixels) as text: one decimal, none when it is zero."""
    # One decimal of a pixel is plenty and keeps big charts small.
    s = f"{v:.1f}"
    return s[:-2] if s.endswith(".0") else s


def as_floats(values) -> np.ndarray:
    """Float array; ``None`` becomes NaN."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        return values
    try:
        return np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        return np.asarray([math.nan if (x := finite_float(v, keep_infinite=True)) is None else x
                           for v in values], dtype=float)


def _extent(arrays, pad: float = 0.04, lo=None, hi=None) -> tuple[float, float]:
    """Padded [min, max] over the finite values of ``arrays`` (and ``lo``/``hi`` if given)."""
    mins, maxs = [], []
    for a in arrays:
        a = as_floats(a)
        fin = a[np.isfinite(a)]
        if fin.size:
            mins.append(float(fin.min()))
            maxs.append(float(fin.max()))
    have = bool(mins)
    a = min(mins) if have else 0.0
    b = max(maxs) if have else 1.0
    if lo is not None:
        a = min(a, lo) if have else lo
    if hi is not None:
        b = max(b, hi) if have else hi
    if a == b:
        a, b = a - 0.5, b + 0.5
    span = b - a
    return a - pad * span, b + pad * span


@dataclass
class Series:
    """One line (or point set) of a chart.

    ``cls`` picks the CSS class (``before``, ``after``, ``expected``, ...); ``label`` goes
    in the legend.
    """

    label: str
    x: list
    y: list
    cls: str = "after"


@dataclass
class Panel:
    """One stacked panel of :func:`line_panels`: a y axis and its series."""

    y_label: str
    series: list
    y_min: float | None = None
    y_max: float | None = None
    hlines: tuple = ()  # (value, label, cls)


class _Axes:
    def __init__(self, x0, y0, w, h, xlo, xhi, ylo, yhi):
        self.x0, self.y0, self.w, self.h = x0, y0, w, h
        self.xlo, self.xhi, self.ylo, self.yhi = xlo, xhi, ylo, yhi

    def px(self, x):
        return self.x0 + (x - self.xlo) / (self.xhi - self.xlo) * self.w

    def py(self, y):
        return self.y0 + self.h - (y - self.ylo) / (self.yhi - self.ylo) * self.h

    def frame(self, out, x_label, y_label, xticks=True, n_y=4, n_x=6, x_tick_labels=None):
        x0, y0, w, h = self.x0, self.y0, self.w, self.h
        out.append(f'<rect class="frame" x="{_px(x0)}" y="{_px(y0)}" width="{_px(w)}" height="{_px(h)}"/>')
        yt = nice_ticks(self.ylo, self.yhi, n_y)
        ystep = yt[1] - yt[0] if len(yt) > 1 else None
        for t in yt:
            if self.ylo <= t <= self.yhi:
                y = _px(self.py(t))
                out.append(f'<line class="grid" x1="{_px(x0)}" x2="{_px(x0 + w)}" y1="{y}" y2="{y}"/>')
                out.append(f'<text class="tick" x="{_px(x0 - 4)}" y="{y}" text-anchor="end" dy="0.32em">{_fmt(t, ystep)}</text>')
        if y_label:
            cy = _px(y0 + h / 2)
            out.append(f'<text class="label" transform="translate({_px(x0 - 38)},{cy}) rotate(-90)" text-anchor="middle">{escape(y_label)}</text>')
        if xticks:
            if x_tick_labels is not None:
                ticks = [(x, lab) for x, lab in x_tick_labels]
            else:
                xt = nice_ticks(self.xlo, self.xhi, n_x)
                xstep = xt[1] - xt[0] if len(xt) > 1 else None
                ticks = [(t, _fmt(t, xstep)) for t in xt]
            for t, lab in ticks:
                if self.xlo <= t <= self.xhi:
                    x = _px(self.px(t))
                    out.append(f'<line class="tickmark" x1="{x}" x2="{x}" y1="{_px(y0 + h)}" y2="{_px(y0 + h + 4)}"/>')
                    out.append(f'<text class="tick" x="{x}" y="{_px(y0 + h + 15)}" text-anchor="middle">{escape(str(lab))}</text>')
            if x_label:
                out.append(f'<text class="label" x="{_px(x0 + w / 2)}" y="{_px(y0 + h + 32)}" text-anchor="middle">{escape(x_label)}</text>')

    def _tenths(self, x, y):
        """Pixel coordinates in tenths (ints) of the points where both values are finite, and that mask."""
        x, y = as_floats(x), as_floats(y)
        ok = np.isfinite(x) & np.isfinite(y)
        sx = self.w / (self.xhi - self.xlo)
        sy = self.h / (self.yhi - self.ylo)
        with np.errstate(invalid="ignore"):
            px = np.rint(10 * (self.x0 + (x - self.xlo) * sx))
            py = np.rint(10 * (self.y0 + self.h - (y - self.ylo) * sy))
        return px, py, ok

    def polyline(self, x, y):
        """SVG path data in tenths of a pixel; a missing value starts a new sub-path, and a point
        standing alone is drawn as a dot (a zero-length segment with round caps)."""
        px, py, ok = self._tenths(x, y)
        if not ok.any():
            return ""
        # Runs of consecutive finite points: each becomes "M x y x y ..." (implicit line-to).
        edges = np.flatnonzero(np.diff(np.concatenate(([0], ok.astype(np.int8), [0]))))
        parts = []
        for start, stop in zip(edges[::2], edges[1::2]):
            xy = np.empty(2 * (stop - start), dtype=np.int64)
            xy[0::2] = px[start:stop]
            xy[1::2] = py[start:stop]
            parts.append("M" + " ".join(map(str, xy.tolist())) + ("h0" if stop - start == 1 else ""))
        return "".join(parts)

    def dots(self, x, y):
        """All points as one path of zero-length segments drawn with round caps.

        One ``<path>`` per series instead of one ``<circle>`` per point keeps a
        20,000-point scatter to a few hundred kB and fast to draw.
        """
        px, py, ok = self._tenths(x, y)
        return "".join([f"M{a} {b}h0" for a, b in zip(px[ok].astype(np.int64).tolist(), py[ok].astype(np.int64).tolist())])


def _open(out, uid, title, desc, width, height):
    out.append(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" '
        f'role="img" aria-labelledby="{uid}-t {uid}-d" preserveAspectRatio="xMidYMid meet">'
    )
    out.append(f'<title id="{uid}-t">{escape(title)}</title><desc id="{uid}-d">{escape(desc)}</desc>')


def _legend(out, items, x, y):
    """Legend row: items are (label, cls, kind) with kind 'line' or 'dot'."""
    for label, cls, kind in items:
        if kind == "dot":
            out.append(f'<path class="dots s-{cls}" d="M{_px(x + 8)} {_px(y)}h0"/>')
        else:
            out.append(f'<line class="s-{cls}" x1="{_px(x)}" x2="{_px(x + 16)}" y1="{_px(y)}" y2="{_px(y)}"/>')
        out.append(f'<text class="legend" x="{_px(x + 20)}" y="{_px(y)}" dy="0.32em">{escape(label)}</text>')
        x += 28 + 6.2 * len(label)


def line_panels(uid: str, title: str, desc: str, x_label: str, panels: list[Panel],
                width: int = 720, panel_height: int = 110, x_min=None, x_max=None) -> str:
    """Stacked line panels sharing one x axis (e.g. CC, Q and B along a chain).

    Parameters
    ----------
    uid : str
        Id prefix unique within the page (for ``aria-labelledby``).
    title, desc : str
        Accessible name and description of the figure.
    x_label : str
        Label under the shared x axis.
    panels : list of Panel
        Top to bottom.
    """
    left, right, top, gap, bottom = 56, 12, 26, 14, 40
    height = top + len(panels) * panel_height + (len(panels) - 1) * gap + bottom
    out: list[str] = []
    _open(out, uid, title, desc, width, height)
    xlo, xhi = _extent([s.x for p in panels for s in p.series], pad=0.01, lo=x_min, hi=x_max)
    legend = []
    seen = set()
    for i, p in enumerate(panels):
        ys = [s.y for s in p.series] + [[h[0] for h in p.hlines]]
        ylo, yhi = _extent(ys, lo=p.y_min, hi=p.y_max)
        ax = _Axes(left, top + i * (panel_height + gap), width - left - right, panel_height, xlo, xhi, ylo, yhi)
        ax.frame(out, x_label if i == len(panels) - 1 else "", p.y_label, xticks=(i == len(panels) - 1))
        for value, label, cls in p.hlines:
            if _finite(value):
                y = _px(ax.py(value))
                out.append(f'<line class="s-{cls}" x1="{_px(ax.x0)}" x2="{_px(ax.x0 + ax.w)}" y1="{y}" y2="{y}"/>')
                if (label, cls) not in seen:
                    seen.add((label, cls))
                    legend.append((label, cls, "line"))
        out.append('<g class="data" transform="scale(0.1)">')
        for s in p.series:
            d = ax.polyline(s.x, s.y)
            if d:
                out.append(f'<path class="line s-{s.cls}" d="{d}"/>')
            if (s.label, s.cls) not in seen:
                seen.add((s.label, s.cls))
                legend.append((s.label, s.cls, "line"))
        out.append("</g>")
    _legend(out, legend, left, 12)
    out.append("</svg>")
    return "".join(out)


def scatter(uid: str, title: str, desc: str, x_label: str, y_label: str, series: list[Series],
            width: int = 420, height: int = 360, x_min=None, x_max=None, y_min=None, y_max=None,
            diagonal: bool = False) -> str:
    """Scatter plot of one or more point sets; ``diagonal`` draws y = x."""
    left, right, top, bottom = 56, 12, 26, 40
    out: list[str] = []
    _open(out, uid, title, desc, width, height)
    xlo, xhi = _extent([s.x for s in series], lo=x_min, hi=x_max)
    ylo, yhi = _extent([s.y for s in series], lo=y_min, hi=y_max)
    ax = _Axes(left, top, width - left - right, height - top - bottom, xlo, xhi, ylo, yhi)
    ax.frame(out, x_label, y_label)
    if diagonal:
        a, b = max(xlo, ylo), min(xhi, yhi)
        if a < b:
            out.append(f'<line class="s-diagonal" x1="{_px(ax.px(a))}" y1="{_px(ax.py(a))}" x2="{_px(ax.px(b))}" y2="{_px(ax.py(b))}"/>')
    out.append('<g class="data" transform="scale(0.1)">')
    for s in series:
        d = ax.dots(s.x, s.y)
        if d:
            out.append(f'<path class="dots s-{s.cls}" d="{d}"/>')
    out.append("</g>")
    _legend(out, [(s.label, s.cls, "dot") for s in series], left, 12)
    out.append("</svg>")
    return "".join(out)


def _quantiles(vals: list[float]) -> tuple[float, float, float, float, float]:
    v = sorted(vals)
    n = len(v)

    def q(p):
        i = p * (n - 1)
        lo = math.floor(i)
        hi = min(lo + 1, n - 1)
        return v[lo] + (v[hi] - v[lo]) * (i - lo)

    return v[0], q(0.25), q(0.5), q(0.75), v[-1]


def box_by_group(uid: str, title: str, desc: str, x_label: str, y_label: str, groups: list[tuple[str, list]],
                 width: int = 720, height: int = 300, zero_line: bool = True) -> str:
    """Box plots (min, quartiles, median, max) of values per group, with the count under each box.

    ``groups`` is a list of ``(label, values)``; missing values are dropped.
    """
    left, right, top, bottom = 56, 12, 16, 52
    out: list[str] = []
    _open(out, uid, title, desc, width, height)
    clean = [(lab, [v for v in vals if _finite(v)]) for lab, vals in groups]
    allv = [v for _, vals in clean for v in vals]
    ylo, yhi = _extent([allv + ([0.0] if zero_line else [])])
    n = max(len(clean), 1)
    ax = _Axes(left, top, width - left - right, height - top - bottom, 0, n, ylo, yhi)
    ax.frame(out, "", y_label, xticks=False)
    if zero_line and ylo < 0 < yhi:
        y = _px(ax.py(0))
        out.append(f'<line class="zero" x1="{_px(ax.x0)}" x2="{_px(ax.x0 + ax.w)}" y1="{y}" y2="{y}"/>')
    bw = ax.w / n * 0.5
    for i, (lab, vals) in enumerate(clean):
        cx = ax.px(i + 0.5)
        out.append(f'<text class="tick" x="{_px(cx)}" y="{_px(ax.y0 + ax.h + 15)}" text-anchor="middle">{escape(lab)}</text>')
        out.append(f'<text class="tick small" x="{_px(cx)}" y="{_px(ax.y0 + ax.h + 28)}" text-anchor="middle">n={len(vals)}</text>')
        if not vals:
            continue
        mn, q1, med, q3, mx = _quantiles(vals)
        out.append(f'<line class="whisker" x1="{_px(cx)}" x2="{_px(cx)}" y1="{_px(ax.py(mn))}" y2="{_px(ax.py(mx))}"/>')
        top_y = ax.py(q3)
        out.append(f'<rect class="box" x="{_px(cx - bw / 2)}" y="{_px(top_y)}" width="{_px(bw)}" height="{_px(max(ax.py(q1) - top_y, 0.5))}">'
                   f'<title>{escape(lab)}: median {med:.3g}, quartiles {q1:.3g} to {q3:.3g}, n={len(vals)}</title></rect>')
        y = _px(ax.py(med))
        out.append(f'<line class="median" x1="{_px(cx - bw / 2)}" x2="{_px(cx + bw / 2)}" y1="{y}" y2="{y}"/>')
    out.append(f'<text class="label" x="{_px(ax.x0 + ax.w / 2)}" y="{_px(height - 6)}" text-anchor="middle">{escape(x_label)}</text>')
    out.append("</svg>")
    return "".join(out)
