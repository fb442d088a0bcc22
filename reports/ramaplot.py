"""Ramachandran plot as inline SVG: Top8000 favoured/allowed regions, residues, outliers marked.

The regions come from the Top8000 general-case Ramachandran table (``rama8000-general-noGPIVpreP``;
Williams et al. 2018, Protein Sci. 27:293, CC-BY 4.0; the page that shows the plot credits it):
a 2° grid over (φ, ψ) of the fraction of high-quality residues at least as unusual, read by
:mod:`rerefine.refine.validation.tables`. *Favoured* is the region with value ≥ 2 %, *allowed*
≥ 0.05 % (MolProbity's general-case limits). The regions are drawn as filled 2° cells merged into
runs along φ (a few hundred rectangles), which shows the table exactly without contour tracing.

Points are every residue with both φ and ψ (all Ramachandran categories, so Gly, Pro and pre-Pro
points can sit outside the general regions and still be allowed in their own category); outliers
— as the validation classed them in their own category — are drawn as crosses, each with its
residue in a ``<title>``. Colours come from CSS classes (``rama-fav``, ``rama-allowed``,
``rama-pt``, ``rama-out``); all text is escaped.
"""

from __future__ import annotations

from html import escape

import numpy as np

FAVOURED, ALLOWED = 0.02, 0.0005  # fractions (2 %, 0.05 %), MolProbity's general-case limits
CREDIT = ("Ramachandran regions: Top8000 general case, Williams et al. (2018) Protein Sci. 27:293-315, "
          "CC-BY 4.0")


def region_runs(grid: np.ndarray, level: float) -> list[tuple[int, int, int]]:
    """Runs of cells with ``grid >= level``: (psi index, first phi index, length).

    ``grid[i, j]`` is the table value of the cell φ_i, ψ_j (2° cells from −180°).
    """
    runs = []
    above = np.asarray(grid) >= level
    for j in range(above.shape[1]):
        col = above[:, j].astype(np.int8)
        edges = np.flatnonzero(np.diff(np.concatenate(([0], col, [0]))))
        for a, b in zip(edges[::2], edges[1::2]):
            runs.append((j, int(a), int(b - a)))
    return runs


def _region_paths(grid: np.ndarray, size: float, x0: float, y0: float) -> list[str]:
    cell = size / grid.shape[0]
    out = []
    for level, cls in ((ALLOWED, "rama-allowed"), (FAVOURED, "rama-fav")):
        d = []
        for j, i, n in region_runs(grid, level):
            x = x0 + i * cell
            y = y0 + size - (j + 1) * cell
            d.append(f"M{x:.1f} {y:.1f}h{n * cell:.1f}v{cell:.1f}h{-n * cell:.1f}z")
        out.append(f'<path class="{cls}" d="{"".join(d)}"/>')
    return out


def rama_svg(uid: str, title: str, residues: list[dict], grid: np.ndarray, *, size: int = 300) -> str:
    """One Ramachandran plot.

    Parameters
    ----------
    uid : str
        Id prefix unique within the page.
    title : str
        Accessible name.
    residues : list of dict
        ``phi``, ``psi`` (degrees or None), ``rama`` (``favored``/``allowed``/``outlier``/None) and
        ``label`` (the residue, shown on the outliers).
    grid : ndarray (180, 180)
        Top8000 general-case table, ``grid[phi_bin, psi_bin]``.
    """
    left, top, bottom, right = 44, 10, 36, 10
    w, h = left + size + right, top + size + bottom
    pts = [(float(r["phi"]), float(r["psi"]), r.get("rama"), str(r.get("label") or ""))
           for r in residues if r.get("phi") is not None and r.get("psi") is not None]
    n_out = sum(1 for p in pts if p[2] == "outlier")
    desc = f"{len(pts)} residues with phi and psi, {n_out} Ramachandran outliers (crosses). {CREDIT}."
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart rama" viewBox="0 0 {w} {h}" role="img" '
           f'aria-labelledby="{uid}-t {uid}-d">',
           f'<title id="{uid}-t">{escape(title)}</title><desc id="{uid}-d">{escape(desc)}</desc>']
    out += _region_paths(np.asarray(grid, float), size, left, top)
    out.append(f'<rect class="frame" x="{left}" y="{top}" width="{size}" height="{size}"/>')

    def px(phi):
        return left + (phi + 180.0) / 360.0 * size

    def py(psi):
        return top + size - (psi + 180.0) / 360.0 * size

    for t in (-180, -90, 0, 90, 180):
        out.append(f'<text class="tick" x="{px(t):.1f}" y="{top + size + 13}" text-anchor="middle">{t}</text>')
        out.append(f'<text class="tick" x="{left - 4}" y="{py(t):.1f}" text-anchor="end" dy="0.32em">{t}</text>')
        if -180 < t < 180:
            out.append(f'<line class="grid" x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top}" y2="{top + size}"/>')
            out.append(f'<line class="grid" x1="{left}" x2="{left + size}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>')
    out.append(f'<text class="label" x="{left + size / 2:.1f}" y="{top + size + 29}" text-anchor="middle">φ (°)</text>')
    out.append(f'<text class="label" transform="translate({left - 30},{top + size / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">ψ (°)</text>')
    dots = "".join(f"M{px(a):.1f} {py(b):.1f}h0" for a, b, cls, _ in pts if cls != "outlier")
    if dots:
        out.append(f'<path class="rama-pt" d="{dots}"/>')
    for a, b, cls, label in pts:
        if cls == "outlier":
            x, y = px(a), py(b)
            out.append(f'<path class="rama-out" d="M{x - 4:.1f} {y - 4:.1f}l8 8m0 -8l-8 8">'
                       f'<title>{escape(label)}: φ {a:.0f}°, ψ {b:.0f}° (outlier)</title></path>')
    out.append("</svg>")
    return "".join(out)
