"""Speech + flute separation: flute generator, mixtures, NMF baselines, IBM oracle, experiment smoke."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import REPO
from vdvae_jax.data.stft import StftConfig, istft, stft
from vdvae_jax.metrics import si_sdr
from vdvae_jax.separation import baselines as bl
from vdvae_jax.separation.flute import DIZI_RANGE, FluteConfig, flute_melody, flute_set, midi_to_hz
from vdvae_jax.separation.mixtures import MixtureConfig, make_mixtures, smr_db

SR = 16000


def _f0_estimate(x: np.ndarray) -> float:
    """Frequency of the strongest spectral peak (the fundamental of this flute model), Hann + zero pad."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=1 << 16))
    return float(np.argmax(spec) * SR / (1 << 16))


def test_flute_deterministic_and_in_dizi_range():
    a, mel = flute_melody(3, 5, duration=3.0)
    b, mel_b = flute_melody(3, 5, duration=3.0)
    c, _ = flute_melody(4, 5, duration=3.0)
    assert a.dtype == np.float32 and a.shape == (3 * SR,)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(mel.pitch, mel_b.pitch)
    assert not np.array_equal(a, c)
    assert np.isclose(np.max(np.abs(a)), 0.9, atol=1e-6)
    assert np.all((mel.pitch >= DIZI_RANGE[0]) & (mel.pitch <= DIZI_RANGE[1]))
    checked = 0
    for p, on, d in zip(mel.pitch, mel.onset, mel.duration):
        if d < 0.25 or on + d > 3.0:
            continue
        mid = int((on + 0.5 * d) * SR)
        f0 = _f0_estimate(a[mid - 800: mid + 800])
        assert 0.95 * midi_to_hz(DIZI_RANGE[0]) < f0 < 1.05 * midi_to_hz(DIZI_RANGE[1])
        assert abs(1200 * np.log2(f0 / midi_to_hz(p))) < 70, (p, f0)   # within vibrato, < a semitone
        checked += 1
    assert checked >= 2


def test_flute_set_cached(tmp_path):
    cfg = FluteConfig(duration=1.0, counts=(2, 1, 1), seed=1)
    first = flute_set(cfg, "val", cache_dir=tmp_path)
    assert first.shape == (1, SR)
    np.testing.assert_array_equal(flute_set(cfg, "val", cache_dir=tmp_path), first)
    assert len(list((tmp_path / "flute").rglob("val.npy"))) == 1
    with pytest.raises(ValueError, match="split"):
        flute_set(cfg, "babble", cache_dir=tmp_path)


@pytest.mark.parametrize("target", [-10.0, 0.0, 5.0])
def test_mixture_smr_matches_request(target):
    rng = np.random.default_rng(0)
    t = np.arange(3 * SR) / SR
    speech = [np.sin(2 * np.pi * 200 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.05 * rng.standard_normal(t.size)]
    flute = [0.3 * np.sin(2 * np.pi * 880 * t) + 0.01 * rng.standard_normal(t.size)]
    cfg = MixtureConfig(n_frames=30, smr_db=target)
    ms = make_mixtures(4, "test", cfg, seed=1, speech=speech, flute=flute)
    assert ms.mix.shape == (4, cfg.length) and ms.sources.shape == (4, 2, cfg.length)
    np.testing.assert_allclose(smr_db(ms.sources[:, 1], ms.sources[:, 0]), target, atol=1e-9)
    np.testing.assert_allclose(ms.smr_db, target, atol=1e-9)
    np.testing.assert_allclose(ms.mix, ms.sources.sum(axis=1))
    np.testing.assert_allclose(np.max(np.abs(ms.mix * ms.scale[:, None]), axis=-1), 1.0)
    np.testing.assert_allclose(np.max(np.abs(ms.sources[:, 1]), axis=-1), 1.0)   # speech peak 1


def test_nmf_objectives_decrease_monotonically():
    key = jax.random.key(0)
    k1, k2, k3 = jax.random.split(key, 3)
    W0 = jax.random.uniform(k1, (24, 3), minval=0.1)
    H0 = jax.random.uniform(k2, (3, 40), minval=0.1)
    P = (W0 @ H0 * jax.random.exponential(k3, (24, 40))).T      # (N, F) time-major, IS-NMF generative
    W, H, obj = bl.learn_dictionary(P, key, n_components=4, n_iter=30)
    assert bool(jnp.all(jnp.diff(obj) <= 1e-5 * jnp.abs(obj[1:])))
    np.testing.assert_allclose(jnp.sum(W, axis=0), 1.0, rtol=1e-5)
    for smooth in (None, 0.5, 10.0):
        H, obj = bl.fit_activations(P, W, n_iter=25, smooth=smooth)
        assert H.shape == (4, 40) and bool(jnp.all(H > 0)) and bool(jnp.all(jnp.isfinite(obj)))
        assert bool(jnp.all(jnp.diff(obj) <= 1e-5 * jnp.abs(obj[1:]))), (smooth, obj)


def test_wiener_masks_sum_to_one_and_reconstruct():
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    W = jax.random.uniform(k1, (33, 5))
    H = jax.random.uniform(k2, (5, 12))
    owner = jnp.array([0, 0, 1, 1, 1])
    m = bl.wiener_masks(W, H, owner, 2)
    assert m.shape == (2, 12, 33)
    np.testing.assert_allclose(jnp.sum(m, axis=0), 1.0, rtol=1e-6)
    mix = jax.random.normal(k3, (12, 33)) + 1j * jax.random.normal(k3, (12, 33))
    np.testing.assert_allclose(jnp.sum(bl.apply_masks(m, mix), axis=0), mix, rtol=1e-5, atol=1e-6)


def test_ibm_oracle_on_separable_toy():
    t = np.arange(20 * 256) / SR
    a = 0.5 * np.sin(2 * np.pi * 440 * t)
    b = 0.3 * np.sin(2 * np.pi * 3000 * t + 1.0) * (1 + 0.3 * np.sin(2 * np.pi * 2 * t))
    cfg = StftConfig()
    S = stft(jnp.asarray(np.stack([a, b]), jnp.float32), cfg)
    X = stft(jnp.asarray(a + b, jnp.float32), cfg)
    est = istft(bl.apply_masks(bl.ideal_binary_masks(S), X), cfg, length=t.size)
    sdr = np.asarray(si_sdr(jnp.asarray(np.stack([a, b])), est))
    assert np.all(sdr > 25.0), sdr
    # and supervised NMF with one exact atom per source separates it too
    P = jnp.abs(S) ** 2
    W = jnp.stack([jnp.mean(P[0], 0), jnp.mean(P[1], 0)], axis=1) + 1e-8
    dicts = bl.NMFDictionaries(W / jnp.sum(W, 0), jnp.array([0, 1]))
    est = istft(bl.nmf_separate(X, dicts, 2, 50), cfg, length=t.size)
    assert np.all(np.asarray(si_sdr(jnp.asarray(np.stack([a, b])), est)) > 15.0)


def test_experiment_smoke(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "mixdvae_scass.py"), "--smoke",
                           "--devices", "2", "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json

    res = json.loads((tmp_path / "results.json").read_text())
    methods = res["by_T"]["20"]["methods"]
    assert set(methods) == {"mixture", "ibm", "nmf", "nmf_smooth", "mixdvae"}
    assert methods["ibm"]["summary"]["speech"]["si_sdr"]["mean"] > methods["mixture"]["summary"]["speech"]["si_sdr"]["mean"]
    assert "| 20 | mixdvae |" in (tmp_path / "results.md").read_text()
