"""Shared test fixtures: paths to the shared reference material, small keys.

Every test process (the main one, or each ``pytest-xdist`` worker) gets its own fresh data cache
(``$VDVAE_JAX_CACHE``, inherited by the experiment subprocesses): tests never read what an earlier run or
the user left in ``~/.cache/vdvae_jax``, and two workers never build into the same folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import jax
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VDVAE_SHARED", REPO.parent / "shared"))
_CACHE: list[str] = []


def pytest_configure(config):
    from vdvae_jax.runtime import configure_cpu

    configure_cpu()   # test what the scripts run (before the first JAX computation)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    _CACHE.append(tempfile.mkdtemp(prefix=f"vdvae_jax_test_cache_{worker}_"))
    os.environ["VDVAE_JAX_CACHE"] = _CACHE[-1]


def pytest_unconfigure(config):
    for path in _CACHE:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def shared_dir():
    if not (SHARED / "reference").is_dir():
        pytest.skip(f"shared reference material not found at {SHARED}")
    return SHARED
