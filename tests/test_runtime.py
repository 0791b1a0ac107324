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
