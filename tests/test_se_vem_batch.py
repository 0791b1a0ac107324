"""Batched SE-VEM: equal to the per-utterance algorithm, one trace per bucket shape, waveform driver."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdvae_jax.inference import se_vem, se_vem_batch
from vdvae_jax.inference.se_vem import SEVEMConfig
from vdvae_jax.models import build

CFG = SEVEMConfig(n_iter=4, nmf_rank=3, lr=1e-2, n_samples_wf=2)


@functools.lru_cache(maxsize=None)  # one model object per name: compiled programs are reused
def _small(name):
    if name == "vae":
        model = build("vae", x_dim=12, z_dim=3, dense_x_z=(8,))
    else:
        model = build("rvae", x_dim=12, z_dim=3, dim_rnn_g_x=6, dim_rnn_g_z=5, dim_rnn_h=6)
    return model, model.init(jax.random.key(0), jnp.zeros((4, 12)))


def _batch(lengths, n_pad, f=12, seed=1):
    """Complex STFT-like arrays of the given lengths, zero-padded to n_pad, and their masks."""
    rng = np.random.default_rng(seed)
    X = np.zeros((len(lengths), n_pad, f), np.complex64)
    for u, n in enumerate(lengths):
        X[u, :n] = (rng.standard_normal((n, f)) + 1j * rng.standard_normal((n, f))) * 2
    mask = np.arange(n_pad)[None] < np.asarray(lengths)[:, None]
    return jnp.asarray(X), jnp.asarray(mask)


@functools.lru_cache(maxsize=None)
def _reference(name):
    """The jitted per-utterance algorithm ``(X (N,F), key, mask (N,)) -> WienerOutput``."""
    model, params = _small(name)
    return jax.jit(lambda X, k, m: se_vem.enhance(model, params, X, k, CFG, m)[0])


@pytest.mark.parametrize("name,chunk", [("vae", 2), ("rvae", None)])
def test_batch_equals_per_utterance(name, chunk):
    """chunk None: all utterances vmapped; 2 of 3: lax.map over one chunk + a remainder (chunk 1,
    the CPU default, runs in test_enhance_waveforms_matches_single_enhance)."""
    model, params = _small(name)
    X, mask = _batch([9, 16, 5], 16)
    keys = jax.random.split(jax.random.key(3), 3)
    S, B = se_vem_batch.enhance_stft_batch(model, params, X, mask, keys, CFG, chunk=chunk)
    assert S.shape == X.shape and B.shape == X.shape
    runner = se_vem_batch._runner(model, CFG, chunk)
    n_compiled = runner._cache_size()
    X2, mask2 = _batch([16, 2, 11], 16, seed=2)  # same bucket shape: no new compilation
    se_vem_batch.enhance_stft_batch(model, params, X2, mask2, keys, CFG, chunk=chunk)
    assert runner._cache_size() == n_compiled
    one = _reference(name)
    for u in range(3):
        ref = one(X[u], keys[u], mask[u])
        scale = float(jnp.max(jnp.abs(ref.speech)))
        np.testing.assert_allclose(S[u], ref.speech, rtol=1e-4, atol=1e-4 * scale)
        np.testing.assert_allclose(B[u], ref.noise, rtol=1e-4, atol=1e-4 * scale)
        assert np.all(np.asarray(S[u])[~np.asarray(mask[u])] == 0)


def test_same_bucket_shape_does_not_retrace():
    model, params = _small("vae")
    batched = se_vem_batch.batch_fn(model, CFG)
    fn = jax.jit(chex.assert_max_traces(lambda *args: batched(*args), n=1))
    for seed in (1, 2):
        X, mask = _batch([7, 8], 8, seed=seed)
        jax.block_until_ready(fn(params, X, mask, jax.random.split(jax.random.key(seed), 2)))


def test_bad_inputs():
    model, params = _small("vae")
    X, mask = _batch([4, 4], 4)
    keys = jax.random.split(jax.random.key(0), 2)
    with pytest.raises(ValueError, match="mask"):
        se_vem_batch.enhance_stft_batch(model, params, X, mask[:, :3], keys, CFG)
    with pytest.raises(TypeError, match="typed"):
        se_vem_batch.enhance_stft_batch(model, params, X, mask, jax.random.PRNGKey(0), CFG)
    with pytest.raises(TypeError, match="SEVEMConfig"):
        se_vem_batch.enhance_stft_batch(model, params, X, mask, keys, {"n_iter": 2})
    with pytest.raises(ValueError, match="chunk"):
        se_vem_batch.enhance_stft_batch(model, params, X, mask, keys, CFG, chunk=0)
    with pytest.raises(ValueError, match="bins"):
        se_vem_batch.enhance_stft_batch(model, params, X[..., :5], mask, keys, CFG)


def test_enhance_waveforms_matches_single_enhance():
    from vdvae_jax.enhance import enhance

    model = build("vae", z_dim=2, dense_x_z=(8,))
    prior = (model, model.init(jax.random.key(0), jnp.ones((2, 513))))
    cfg = SEVEMConfig(n_iter=3, nmf_rank=3, lr=1e-2)
    rng = np.random.default_rng(0)
    lengths = [4000, 3500, 3900]  # 16, 14, 16 frames: one bucket, batches of U = 2 then U = 1
    waves = [(0.3 * rng.standard_normal(n)).astype(np.float32) for n in lengths]
    key = jax.random.key(7)
    out = se_vem_batch.enhance_waveforms(waves, 16000, prior, cfg, key, bucket=16, batch_size=2,
                                         progress=False)
    keys = jax.random.split(key, len(waves))
    for i, w in enumerate(waves):
        assert out[i].shape == w.shape
        ref = enhance(w, 16000, prior, config=cfg, key=keys[i], bucket=16)
        np.testing.assert_allclose(out[i], ref, rtol=1e-4, atol=1e-4 * np.max(np.abs(ref)))
