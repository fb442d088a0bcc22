"""Shared fixtures. Real data come from RR_TEST_DATA (default ../shared/data beside the repository)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _test_data_dir() -> Path:
    return Path(os.environ.get("RR_TEST_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def test_data() -> Path:
    """The real-data folder; missing data fails on CI and skips elsewhere."""
    d = _test_data_dir()
    if not (d / "maps_models").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"test data not found at {d} (set RR_TEST_DATA)")
        pytest.skip(f"test data not found at {d} (set RR_TEST_DATA)")
    return d


# name -> (model, map, resolution in Å) for the real pairs in ../shared/data.
PAIRS = {
    "emd_3488_5me2": ("emd_3488_5me2/5me2.pdb", "emd_3488_5me2/emd_3488.mrc", 3.2),
    "emd_30342_zone_7cec_chainA": (
        "emd_30342_zone_7cec_chainA/390_7cec_A.cif",
        "emd_30342_zone_7cec_chainA/390_emd_30342_A_z4.mrc",
        3.9,
    ),
    "emd_20026_box_3ajo_refined": (
        "emd_20026_box_3ajo_refined/3ajo_fitted_refined.pdb",
        "emd_20026_box_3ajo_refined/emd20026_prot.mrc",
        1.75,
    ),
}


@pytest.fixture(scope="session")
def pairs(test_data) -> dict:
    """Real map/model pairs: name -> (model path, map path, resolution Å)."""
    mm = test_data / "maps_models"
    return {k: (mm / m, mm / p, r) for k, (m, p, r) in PAIRS.items()}
