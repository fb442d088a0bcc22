"""Pack the Top8000 smooth Ramachandran landscapes into ``refine/data/top8000_rama.npz``.

Run once from the repository (needs the shared test data, ``RR_TEST_DATA``)::

    .venv/bin/python scripts/make_rama_landscapes.py

The source files are ``validation/top8000/ramachandran/{ala,gly,pro,prepro}.rama.combined.data``
(MolProbity / Richardson lab, Williams et al. 2018, Protein Sci 27:293; CC-BY 4.0): one line per
grid point ``value phi psi``, phi and psi from -179 to 179 deg in 2 deg steps, phi-major. The
package file keeps them as a float32 array ``(4, 180, 180)`` indexed ``[category, phi, psi]`` in
the order of :data:`rerefine.refine.ramachandran_restraint.CATEGORIES`; the packaged copy is
checked against the source files by ``tests/test_ramachandran_restraint.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("RR_TEST_DATA", REPO.parent / "shared" / "data")).resolve()
FILES = ("ala", "gly", "pro", "prepro")  # the combined landscapes: general, gly, pro, prepro
#: the Top8000 validation densities, in the order of ramachandran_restraint.CATEGORIES
DENSITY_FILES = ("rama8000-general-noGPIVpreP", "rama8000-gly-sym", "rama8000-transpro", "rama8000-cispro",
                 "rama8000-prepro-noGP", "rama8000-ileval-nopreP")


def read_combined(path: Path) -> np.ndarray:
    """(180, 180) grid ``[phi, psi]`` of one ``*.rama.combined.data`` file."""
    a = np.loadtxt(path)
    if a.shape != (180 * 180, 3):
        raise SystemExit(f"{path}: expected 32400 lines of 'value phi psi', got {a.shape}")
    i = np.rint((a[:, 1] + 179.0) / 2.0).astype(int)
    j = np.rint((a[:, 2] + 179.0) / 2.0).astype(int)
    grid = np.full((180, 180), np.nan)
    grid[i, j] = a[:, 0]
    if np.isnan(grid).any():
        raise SystemExit(f"{path}: grid points missing")
    return grid


def read_density(path: Path) -> np.ndarray:
    """(180, 180) grid ``[phi, psi]`` of one ``rama8000-*.data`` file (lines ``phi psi value`` after a
    ``#`` header; grid points the file leaves out are 0)."""
    a = np.loadtxt(path, comments="#")
    i = np.rint((a[:, 0] + 179.0) / 2.0).astype(int)
    j = np.rint((a[:, 1] + 179.0) / 2.0).astype(int)
    grid = np.zeros((180, 180))
    grid[i, j] = a[:, 2]
    return grid


def main() -> int:
    src = DATA / "validation" / "top8000" / "ramachandran"
    grids = np.stack([read_combined(src / f"{f}.rama.combined.data") for f in FILES]).astype(np.float32)
    out = REPO / "refine" / "data" / "top8000_rama.npz"
    dens = np.stack([read_density(src / f"{f}.data") for f in DENSITY_FILES]).astype(np.float32)
    np.savez_compressed(out, combined=grids, density=dens)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
