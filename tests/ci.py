"""What a test does when a system dependency is missing: fail under CI, skip elsewhere.

CI sets ``CI`` (any non-empty value); there a missing browser, PostgreSQL server or data folder
is a broken set-up, so the test fails with the same message a local run skips with.
"""

from __future__ import annotations

import os

import pytest


def missing(reason: str) -> None:
    """Fail the test when ``CI`` is set, else skip it; ``reason`` says what is missing and how to get it."""
    if os.environ.get("CI"):
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason)
