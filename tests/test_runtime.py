"""vdvae_jax.runtime: the XLA:CPU vector-width flag is added before JAX starts, never over the user's."""

from __future__ import annotations

import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from vdvae_jax import runtime


def test_users_flag_and_opt_out_are_respected(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_prefer_vector_width=256")
    assert runtime.prefer_wide_cpu_vectors() is False
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_prefer_vector_width=256"
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    monkeypatch.setenv("VDVAE_JAX_DEFAULT_XLA", "1")
    assert runtime.prefer_wide_cpu_vectors() is False
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"


def test_too_late_warns_and_changes_nothing(monkeypatch):
    jnp.ones(2).block_until_ready()   # the backend has started
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setattr(runtime, "cpu_has_avx512", lambda: True)
    with pytest.warns(UserWarning, match="after JAX started"):
        assert runtime.prefer_wide_cpu_vectors() is False
    assert os.environ["XLA_FLAGS"] == ""


def test_flag_set_before_the_backend_starts():
    code = ("import os, jax.numpy as jnp; from vdvae_jax import runtime\n"
            "on = runtime.prefer_wide_cpu_vectors(); jnp.ones(2).block_until_ready()\n"
            "print(on); print(runtime.cpu_has_avx512()); print(os.environ.get('XLA_FLAGS', ''))")
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "VDVAE_JAX_DEFAULT_XLA")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    on, avx512, flags = (out.stdout.splitlines() + [""])[:3]
    assert on == avx512   # requested exactly where the CPU has AVX-512
    assert (runtime.WIDE_VECTORS_FLAG in flags) == (on == "True")


def test_unrolled_threefry_draws_the_same_bits_without_a_loop():
    """unroll_cpu_threefry swaps the CPU lowering (no loop left) and the draws stay bit for bit."""
    import jax
    import numpy as np

    def draws(k):
        return jax.random.uniform(k, (7, 5)), jax.random.normal(jax.random.fold_in(k, 1), (3, 4))

    key = jax.random.key(3)
    try:
        assert runtime.unroll_cpu_threefry(False) is False
        jax.clear_caches()
        rolled_text = jax.jit(draws).lower(key).as_text()
        rolled = jax.jit(draws)(key)
        if runtime.unroll_cpu_threefry(True, min_size=1) is False:
            pytest.skip("VDVAE_JAX_DEFAULT_XLA=1 or this JAX lacks the pieces unroll_cpu_threefry swaps")
        jax.clear_caches()
        straight_text = jax.jit(draws).lower(key).as_text()
        straight = jax.jit(draws)(key)
    finally:
        runtime.unroll_cpu_threefry(True)
        jax.clear_caches()
    if jax.default_backend() == "cpu":
        assert "while" in rolled_text and "while" not in straight_text
    for a, b in zip(rolled, straight):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
