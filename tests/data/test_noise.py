"""Tests for vdvae_jax.data.noise."""

import numpy as np
import pytest

from vdvae_jax.data.audio import AudioError
from vdvae_jax.data.corpus import build_default_corpus
from vdvae_jax.data.noise import (
    NOISE_TYPES,
    amplitude_modulated,
    babble,
    brown,
    make_noise,
    mix_at_snr,
    pink,
    white,
)

N = 32768


def _slope(x):
    """Log-log slope of the averaged periodogram between 50 Hz and 4 kHz."""
    seg = x[: len(x) // 1024 * 1024].reshape(-1, 1024)
    p = np.mean(np.abs(np.fft.rfft(seg * np.hanning(1024), axis=1)) ** 2, axis=0)
    f = np.fft.rfftfreq(1024, 1 / 16000)
    m = (f > 50) & (f < 4000)
    return np.polyfit(np.log(f[m]), np.log(p[m]), 1)[0]


@pytest.mark.parametrize("fn,slope", [(white, 0.0), (pink, -1.0), (brown, -2.0)])
def test_coloured(fn, slope):
    x = fn(N, np.random.default_rng(0))
    assert x.dtype == np.float32 and x.shape == (N,)
    np.testing.assert_allclose(np.sqrt(np.mean(x.astype(np.float64) ** 2)), 1.0, rtol=1e-5)
    assert abs(_slope(fn(4 * N, 1)) - slope) < 0.25
    np.testing.assert_array_equal(fn(N, 3), fn(N, np.random.default_rng(3)))
    assert not np.array_equal(fn(N, 3), fn(N, 4))


def test_amplitude_modulated():
    x = amplitude_modulated(4 * 16000, 0, rate_hz=2.0, depth=0.9)
    env = np.sqrt(np.mean(x.reshape(-1, 800).astype(np.float64) ** 2, axis=1))
    assert env.max() / env.min() > 3  # slow, deep modulation
    np.testing.assert_array_equal(x, amplitude_modulated(4 * 16000, 0, rate_hz=2.0, depth=0.9))
    with pytest.raises(ValueError, match="depth"):
        amplitude_modulated(100, 0, depth=1.5)


@pytest.mark.parametrize("snr", [-5.0, 0.0, 7.5, 20.0])
def test_mix_at_snr(snr):
    rng = np.random.default_rng(1)
    s, n = rng.standard_normal(16000), 3 * rng.standard_normal(20000)
    mix, scaled = mix_at_snr(s, n, snr)
    assert mix.dtype == scaled.dtype == np.float32 and mix.shape == (16000,)
    got = 10 * np.log10(np.sum(s**2) / np.sum(scaled.astype(np.float64) ** 2))
    assert abs(got - snr) < 1e-4
    np.testing.assert_allclose(mix, s + scaled, atol=1e-6)
    with pytest.raises(AudioError, match="shorter"):
        mix_at_snr(s, n[:100], snr)
    with pytest.raises(AudioError, match="all zeros"):
        mix_at_snr(np.zeros(10), n, snr)


def test_babble_and_registry(tmp_path):
    corpus = build_default_corpus(1, cache_dir=tmp_path, n_train=1, n_val=0, n_test=0,
                                  n_babble=2, utts_per_speaker=2, progress=False, num_workers=1)
    x = babble(corpus, 3, 40000, seed=0)
    assert x.dtype == np.float32 and x.shape == (40000,) and np.isfinite(x).all()
    np.testing.assert_array_equal(x, babble(corpus, 3, 40000, seed=0))
    assert not np.array_equal(x, babble(corpus, 3, 40000, seed=1))
    assert set(NOISE_TYPES) >= {"white", "pink", "brown", "amplitude_modulated", "babble"}
    for kind in NOISE_TYPES:
        y = make_noise(kind, 1000, 0, corpus=corpus)
        assert y.shape == (1000,) and y.dtype == np.float32
    with pytest.raises(ValueError, match="unknown noise"):
        make_noise("rain", 10, 0)
    with pytest.raises(ValueError, match="needs a corpus"):
        make_noise("babble", 10, 0)
