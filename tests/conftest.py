"""Shared fixtures. Real data come from RR_TEST_DATA (default ../shared/data beside the repository)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ci import missing
from realdata import DATA, PAIRS


@pytest.fixture(scope="session")
def test_data() -> Path:
    """The real-data folder; missing data fails on CI and skips elsewhere."""
    d = DATA
    if not (d / "maps_models").is_dir():
        missing(f"test data not found at {d} (set RR_TEST_DATA)")
    return d


@pytest.fixture(scope="session")
def pairs(test_data) -> dict:
    """Real map/model pairs: name -> (model path, map path, resolution Å)."""
    mm = test_data / "maps_models"
    return {k: (mm / m, mm / p, r) for k, (m, p, r) in PAIRS.items()}
