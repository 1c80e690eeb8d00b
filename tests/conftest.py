"""Fixtures shared by the test modules (helpers that are plain functions live in ``tests/helpers.py``)."""

from __future__ import annotations

import pytest

import orca


@pytest.fixture(params=["memory", "delta"])
def store(request: pytest.FixtureRequest, tmp_path) -> orca.Store:
    """A fresh store of each kind: in memory, and a Delta store in a temporary directory."""
    return orca.MemoryStore() if request.param == "memory" else orca.DeltaStore(tmp_path / "store")
