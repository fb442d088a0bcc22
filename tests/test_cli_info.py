"""`rerefine info` end to end through the real CLI entry point (in-process and as a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rerefine.flows.cli import main


# /work/shared/data/README.md (section 1 and its "Sanity checks", gemmi 0.7.5): non-H atoms,
# residues, chains where stated, grid, voxel (Å), origin (Å, from the MRC ORIGIN words), map
# mean and sd (printed to 4 significant digits). None of the models holds hydrogens.
README = {
    "emd_3488_5me2": dict(n_atoms=4468, n_residues=570, chains=None, grid=[100, 100, 100], voxel=1.05,
                          origin=[0.0, 0.0, 0.0], mean=0.001523, sd=0.03715),
    "emd_30342_zone_7cec_chainA": dict(n_atoms=4308, n_residues=553, chains=["A"], grid=[89, 81, 63],
                                       voxel=1.113, origin=[145.825, 112.825, 120.517], mean=0.007053,
                                       sd=0.01716),
    "emd_20026_box_3ajo_refined": dict(n_atoms=1654, n_residues=413, chains=["A"], grid=[94, 104, 112],
                                       voxel=0.65, origin=[117.0, 65.65, 101.4], mean=0.0003227, sd=0.006548),
}


@pytest.mark.parametrize("name", sorted(README))
def test_info_json(pairs, name, tmp_path):
    model, mp, res = pairs[name]
    out = tmp_path / "info.json"
    assert main(["info", str(model), str(mp), "--json", str(out)]) == 0
    info = json.loads(out.read_text())
    ref = README[name]
    assert info["n_atoms"] == ref["n_atoms"] and info["n_hydrogens"] == 0
    assert info["n_residues"] == ref["n_residues"]
    if ref["chains"] is not None:
        assert info["chains"] == ref["chains"]
    assert info["grid"] == ref["grid"]
    assert info["voxel_size"] == pytest.approx([ref["voxel"]] * 3, abs=1e-6)
    assert info["origin"] == pytest.approx(ref["origin"], abs=1e-3)
    # 4 significant digits in the README: half a unit of the last digit
    assert info["map_mean"] == pytest.approx(ref["mean"], rel=5e-4)
    assert info["map_sd"] == pytest.approx(ref["sd"], rel=5e-4)
    assert info["fraction_inside"] == 1.0  # the README: in_box=1.000 for every pair
    if name == "emd_20026_box_3ajo_refined":
        assert info["resolution"] is None  # not stated in that file
    else:
        assert info["resolution"] == pytest.approx(res)


def test_info_errors_are_one_line(pairs, tmp_path):
    model, mp, _ = pairs["emd_3488_5me2"]
    trunc = tmp_path / "trunc.mrc"
    trunc.write_bytes(mp.read_bytes()[:200_000])
    empty = tmp_path / "empty.pdb"
    empty.write_text("END\n")
    far = tmp_path / "far.pdb"
    far.write_text(
        "ATOM      1  CA  ALA A   1    9000.000 9000.000 9000.000  1.00 20.00           C\nEND\n"
    )
    cases = [(model, trunc, "trunc.mrc"), (empty, mp, "no atoms"), (far, mp, "outside")]
    for m, p, expect in cases:
        r = subprocess.run([sys.executable, "-m", "rerefine.flows.cli", "info", str(m), str(p)],
                           capture_output=True, text=True)
        assert r.returncode == 1
        assert "Traceback" not in r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and expect in lines[0], r.stderr


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert "rerefine" in capsys.readouterr().out


def test_logged_rerefine_errors_lose_their_traceback_but_others_keep_it():
    """Prefect logs failed tasks with their traceback; for rerefine's own one-line errors the CLI's
    filter drops it (the cause is in the message), for anything else (a bug) it stays."""
    import io
    import logging

    from rerefine.flows.cli import OneLineRerefineErrors
    from rerefine.common.errors import ArchiveError

    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(OneLineRerefineErrors())
    logger = logging.getLogger("test.one_line_errors")
    logger.addHandler(handler)
    logger.propagate = False  # restored below: this test leaves logging as it found it
    try:
        for exc in (ArchiveError("5me2: map EMD-3488: not found (HTTP 404)"), ZeroDivisionError("bug")):
            try:
                raise exc
            except Exception:
                logger.error("Task run failed with exception: %r", exc, exc_info=True)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    text = out.getvalue()
    assert "not found (HTTP 404)" in text and "bug" in text
    assert text.count("Traceback (most recent call last)") == 1
    assert text.index("Traceback") > text.index("not found")  # the one kept belongs to the bug
