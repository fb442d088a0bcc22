"""`rerefine info` end to end through the real CLI entry point (in-process and as a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rerefine.flows.cli import main


@pytest.mark.parametrize("name", ["emd_3488_5me2", "emd_30342_zone_7cec_chainA", "emd_20026_box_3ajo_refined"])
def test_info_json(pairs, name, tmp_path):
    model, mp, res = pairs[name]
    out = tmp_path / "info.json"
    assert main(["info", str(model), str(mp), "--json", str(out)]) == 0
    info = json.loads(out.read_text())
    for key in ("n_atoms", "n_residues", "chains", "grid", "voxel_size", "origin", "resolution", "fraction_inside"):
        assert key in info
    assert info["fraction_inside"] >= 0.99
    assert info["n_atoms"] > 1000
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
