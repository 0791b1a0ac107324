"""Shared test fixtures: paths to the shared reference material, small keys."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VDVAE_SHARED", REPO.parent / "shared"))


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def shared_dir():
    if not (SHARED / "reference").is_dir():
        pytest.skip(f"shared reference material not found at {SHARED}")
    return SHARED
