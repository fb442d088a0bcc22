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


@pytest.fixture(scope="module")
def monlib(test_data) -> Path:
    """The CCP4 monomer-library subset of the real data."""
    return test_data / "monomers"


def _read_pair(pairs, name: str):
    from rerefine.refine import mapio, modelio

    model, mp, res = pairs[name]
    return modelio.read_model(model), mapio.read_map(mp), res


@pytest.fixture(scope="module")
def p5me2(pairs):
    """5ME2 in EMD-3488: (gemmi.Structure, DensityMap, resolution Å), read once per test module."""
    return _read_pair(pairs, "emd_3488_5me2")


@pytest.fixture(scope="module")
def p3ajo(pairs):
    """The 3AJO-derived model in the EMD-20026 box: (gemmi.Structure, DensityMap, resolution Å), read
    once per test module."""
    return _read_pair(pairs, "emd_20026_box_3ajo_refined")
