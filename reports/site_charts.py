"""The site's charts (inline SVG through :mod:`rerefine.reports.plots`) made from view models: per
entry the per-residue fit by chain, per-residue CC against Q-score and the radial amplitude profile
of the sharpening; across the archive the CCmask scatters, the fit gain against the validation
change and the change by resolution bin; per pipeline version the change against the previous one.
"""

from __future__ import annotations

import math

import numpy as np

from rerefine.reports import plots
from rerefine.reports.numbers import finite_float
from rerefine.reports.queries import RESOLUTION_BINS, bin_label
from rerefine.reports.site_views import delta

def residue_charts(v: dict) -> list[dict]:
    """One stacked CC / Q / B figure per chain, in chain order of first appearance."""
    res = v["residues"]
    chain_col = res.get("chain") or []
    if not chain_col:
        return []
    chains: dict[str, list[int]] = {}
    for i, ch in enumerate(chain_col):
        chains.setdefault(str(ch), []).append(i)
    n_all = len(chain_col)
    empty = [None] * n_all

    def column(key):
        c = res.get(key)
        return c if c is not None and len(c) == n_all else empty

    seq = plots.as_floats(column("seq"))
    cols = {k: plots.as_floats(column(k)) for k in
            ("cc_before", "cc_after", "q_score_before", "q_score_after", "b_iso_before", "b_iso_after")}
    has_b = bool(np.isfinite(cols["b_iso_before"]).any() or np.isfinite(cols["b_iso_after"]).any())
    eq = v["expected_q"]
    q_line = ((eq, f"expected Q at {v['resolution']:.2f} Å", "expected"),) if eq is not None and v["resolution"] else ()
    out = []
    for n, (ch, idx) in enumerate(chains.items()):
        idx = np.asarray(idx)
        x = seq[idx]
        # a gap in the residue numbering (missing residues, a ligand numbered apart) breaks the
        # lines: a straight segment across it would suggest values that were never measured
        gaps = np.flatnonzero((np.diff(x) > 1) | (np.diff(x) < 0)) + 1
        x = np.insert(x, gaps, np.nan)

        def pick(key):
            return np.insert(cols[key][idx], gaps, np.nan)

        cc_b, cc_a = pick("cc_before"), pick("cc_after")
        panels = [
            plots.Panel("CC", [plots.Series("before", x, cc_b, "before"),
                               plots.Series("after", x, cc_a, "after")], y_max=1.0),
            plots.Panel("Q-score", [plots.Series("before", x, pick("q_score_before"), "before"),
                                    plots.Series("after", x, pick("q_score_after"), "after")],
                        y_max=1.0, hlines=q_line),
        ]
        if has_b:
            panels.append(plots.Panel("B (Å²)", [plots.Series("before", x, pick("b_iso_before"), "before"),
                                                   plots.Series("after", x, pick("b_iso_after"), "after")]))
        ccb = cc_b[np.isfinite(cc_b)]
        cca = cc_a[np.isfinite(cc_a)]
        desc = (f"Chain {ch}, {len(idx)} residues. Per-residue CC, Q-score"
                f"{' and B-factor' if has_b else ''} before (deposited, dashed) and after "
                f"re-refinement (solid) against residue number.")
        if ccb.size and cca.size:
            desc += f" Mean CC {ccb.mean():.3f} before, {cca.mean():.3f} after."
        svg = plots.line_panels(f"res{n}", f"Chain {ch}: per-residue fit" + (" and B-factors" if has_b else ""),
                                desc, "residue number", panels)
        out.append({"chain": ch, "n": len(idx), "svg": svg, "has_b": has_b})
    return out


def scatter_cc_q(v: dict) -> str | None:
    res = v["residues"]
    n = len(res.get("chain") or [])
    if not n:
        return None
    series = []
    for when in ("before", "after"):
        x = res.get("cc_" + when)
        y = res.get("q_score_" + when)
        if x is None or y is None:
            continue
        x, y = plots.as_floats(x), plots.as_floats(y)
        if x.size and x.size == y.size and (np.isfinite(x) & np.isfinite(y)).any():
            series.append(plots.Series(f"{when} ({'deposited' if when == 'before' else 're-refined'})", x, y, when))
    if not series:
        return None
    return plots.scatter("ccq", "Per-residue CC versus Q-score",
                         f"{n} residues; each point is one residue, x its real-space CC, "
                         "y its Q-score, before and after re-refinement. Residues far from the "
                         "trend are where the two metrics disagree.",
                         "per-residue CC", "per-residue Q-score", series, x_max=1.0, y_max=1.0)


def sharpening_chart(v: dict) -> str | None:
    radial = v["sharpening"].get("radial") or {}
    s = radial.get("s") or []
    if not s:
        return None
    series = []
    for when, label in (("before", "deposited map"), ("after", "sharpened map")):
        amp = radial.get(when) or []
        y = [math.log(a) if finite_float(a) is not None and a > 0 else None for a in amp]
        s2 = [finite_float(q) ** 2 if finite_float(q) is not None else None for q in s]
        series.append(plots.Series(label, s2, y, when))
    return plots.line_panels("sharp", "Radial amplitude profile of the map before and after sharpening",
                             "Natural logarithm of the spherically averaged Fourier amplitude against "
                             "s² (1/Å²), before and after sharpening; sharpening flattens the fall-off.",
                             "s² (1/Å²)", [plots.Panel("ln amplitude", series)], width=480, panel_height=220)

def archive_charts(rows: list[dict]) -> dict:
    """The archive page's figures from the index rows (:func:`rerefine.reports.site_views.index_row`):
    ``n_done``, the scatters ``sc_q`` and ``sc_ai`` (CCmask against mean Q-score and atom
    inclusion), ``val_sc`` (CCmask gain with the input B against the validation change, by
    verdict), the box plots ``box_cc`` and ``box_q`` (change by resolution bin, Å) and ``bins``
    (per bin: ``label, n, improved, unchanged, worse, median_dcc``)."""
    done = [r for r in rows if r["cc_mask_after"] is not None]

    def ser(label, xk, yk, cls):
        return plots.Series(label, [r[xk] for r in done], [r[yk] for r in done], cls)

    n = len(done)
    sc_q = plots.scatter(
        "arch-q", "CCmask versus mean Q-score across entries",
        f"{n} entries; each point is one entry, x its CCmask, y its mean Q-score, for the deposited "
        "model and after re-refinement. CCmask uses all model parameters and the resolution; "
        "Q-score does not.", "CCmask", "mean Q-score",
        [ser("deposited", "cc_mask_before", "q_score_before", "before"), ser("re-refined", "cc_mask_after", "q_score_after", "after")],
        width=480, height=400)
    sc_ai = plots.scatter(
        "arch-ai", "CCmask versus atom inclusion across entries",
        f"{n} entries; x CCmask, y fraction of atoms inside the map contour, deposited and re-refined.",
        "CCmask", "atom inclusion",
        [ser("deposited", "cc_mask_before", "atom_inclusion_before", "before"), ser("re-refined", "cc_mask_after", "atom_inclusion_after", "after")],
        width=480, height=400)
    val_sc = []
    for key, lab in (("d_rama_favored_pct", "Δ Ramachandran favoured (%)"), ("d_clashscore", "Δ clashscore")):
        pts = [r for r in done if r.get(key) is not None and r.get("d_cc_mask_input_b") is not None]
        series = [plots.Series(v, [r["d_cc_mask_input_b"] for r in pts if r["verdict"] == v],
                               [r[key] for r in pts if r["verdict"] == v], f"v-{v}")
                  for v in ("improved", "unchanged", "worse")]
        val_sc.append(plots.scatter(
            f"arch-val-{key}", f"CCmask gain against {lab[2:]} change",
            f"{len(pts)} entries with validation before and after; x: CCmask of the re-refined coordinates "
            f"with the input B-factors minus the deposited model's CCmask, y: {lab}; one point per entry, "
            "by verdict.", "Δ CCmask (coordinates, input B)", lab, series, width=480, height=400))
    groups_cc, groups_q = [], []
    bins = []
    for lo, hi in zip(RESOLUTION_BINS[:-1], RESOLUTION_BINS[1:]):
        sel = [r for r in done if r["resolution"] is not None and lo <= r["resolution"] < hi]
        lab = bin_label(lo, hi)
        dcc = [delta(r["cc_mask_before"], r["cc_mask_after"]) for r in sel]
        dq = [delta(r["q_score_before"], r["q_score_after"]) for r in sel]
        groups_cc.append((lab, dcc))
        groups_q.append((lab, dq))
        verdicts = {}
        for r in sel:
            verdicts[r["verdict"] or "none"] = verdicts.get(r["verdict"] or "none", 0) + 1
        vals = sorted(x for x in dcc if x is not None)
        bins.append({"label": lab, "n": len(sel), "improved": verdicts.get("improved", 0),
                     "unchanged": verdicts.get("unchanged", 0), "worse": verdicts.get("worse", 0),
                     "median_dcc": vals[len(vals) // 2] if vals else None})
    box_cc = plots.box_by_group("arch-dcc", "Change in CCmask by resolution bin",
                                "Box plots of CCmask after minus before re-refinement per resolution bin "
                                "(box: quartiles; line: median; whiskers: range).",
                                "map resolution", "ΔCCmask", groups_cc)
    box_q = plots.box_by_group("arch-dq", "Change in mean Q-score by resolution bin",
                               "Box plots of mean Q-score after minus before re-refinement per resolution bin.",
                               "map resolution", "ΔQ-score", groups_q)
    return {"n_done": n, "sc_q": sc_q, "sc_ai": sc_ai, "val_sc": val_sc, "box_cc": box_cc, "box_q": box_q,
            "bins": bins}


def version_chart(item: dict, comp: dict | None) -> str | None:
    """Box plots of the per-entry change in re-refined CCmask and mean Q-score between a pipeline
    version (``item["version"]``) and the previous one (``item["previous"]``), over the entries
    both processed (``comp`` of a version summary, see
    :meth:`rerefine.reports.site_sources.DatabaseSource.version_summaries`); None
    when there is no previous version or no entry in common."""
    if not comp or not comp["n_both"]:
        return None
    return plots.box_by_group(
        "ver-d", f"Change in re-refined CCmask and Q-score, {item['version']} vs {item['previous']}",
        f"Per-entry difference of the re-refined CCmask and mean Q-score between version "
        f"{item['version']} and version {item['previous']}, over the {comp['n_both']} entries both processed.",
        "metric", "version difference", [("ΔCCmask", comp["d_cc"]), ("ΔQ-score", comp["d_q"])],
        width=480, height=280)
