"""Tests for vdvae_jax.data.stft (JAX STFT vs librosa, inverse, padding, reference data)."""

import importlib
import os
import pathlib

import jax
import numpy as np
import pytest

S = importlib.import_module("vdvae_jax.data.stft")  # the package re-exports a function `stft`


def _shared_dir() -> pathlib.Path:
    env = os.environ.get("VDVAE_SHARED")
    if env:
        return pathlib.Path(env)
    return pathlib.Path(__file__).resolve().parents[2].parent / "shared"  # <repo>/../shared


@pytest.fixture(scope="module")
def signal():
    return np.random.default_rng(0).standard_normal((2, 12544)).astype(np.float32)


def test_config_validation():
    with pytest.raises(ValueError, match="pad_mode"):
        S.StftConfig(pad_mode="zeros")
    with pytest.raises(ValueError, match="win_length"):
        S.StftConfig(win_length=2048)
    assert S.StftConfig().n_freq == 513 and S.StftConfig().n_frames(12544) == 50


def test_sine_window():
    w = S.sine_window(1024)
    np.testing.assert_allclose(w[0], np.sin(np.pi * 0.5 / 1024))
    # 75 % overlap: the squared window sums to 2.
    tot = sum(np.roll(w**2, k * 256) for k in range(4))
    np.testing.assert_allclose(tot, 2.0, atol=1e-12)


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_jax_matches_librosa(signal, pad_mode):
    cfg = S.StftConfig(pad_mode=pad_mode)
    X = np.asarray(S.stft(signal, cfg))
    ref = S.stft_librosa(signal, cfg)
    assert X.shape == ref.shape == (2, 50, 513) and X.dtype == np.complex64
    assert np.abs(X - ref).max() <= 1e-6 * np.abs(ref).max()
    scale = np.abs(ref).max() ** 2
    np.testing.assert_allclose(S.power(X), np.abs(ref) ** 2, rtol=1e-3, atol=1e-4 * scale)


@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_istft_inverts(signal, pad_mode):
    cfg = S.StftConfig(pad_mode=pad_mode)
    X = S.stft(signal, cfg)
    y = S.istft(X, cfg, length=signal.shape[-1])
    np.testing.assert_allclose(np.asarray(y), signal, atol=2e-5)
    assert S.istft(X, cfg).shape == (2, 49 * 256)  # librosa default length (T-1) hop
    assert S.istft(X, cfg, length=13000).shape == (2, 13000)
    ref = S.istft_librosa(np.asarray(X), cfg)
    np.testing.assert_allclose(np.asarray(S.istft(X, cfg)), ref, atol=2e-5)


def test_jit_and_vmap(signal):
    cfg = S.StftConfig()
    f = jax.jit(lambda x: S.power(S.stft(x, cfg)).sum())
    g = jax.vmap(lambda x: S.stft(x, cfg))(signal)
    np.testing.assert_allclose(np.asarray(g), np.asarray(S.stft(signal, cfg)), atol=1e-4)
    assert np.isfinite(float(f(signal[0])))
    assert np.isfinite(np.asarray(jax.grad(f)(signal[0]))).all()


def test_frame_count_and_padding_difference(signal):
    for T in (10, 50):
        x = signal[0, : (T - 1) * 256]
        assert S.stft(x, S.StftConfig()).shape == (T, 513)
    r = np.asarray(S.stft(signal, S.StftConfig(pad_mode="reflect")))
    c = np.asarray(S.stft(signal, S.StftConfig(pad_mode="constant")))
    differs = np.abs(r - c).max(axis=(0, 2)) > 1e-3
    assert np.nonzero(differs)[0].tolist() == [0, 1, 48, 49]


def test_reference_power_spectrograms():
    shared = _shared_dir()
    vec = shared / "reference/dvae_se/vb_vae/vectors.npz"
    audio = shared / "reference/inputs/audio.npz"
    if not (vec.is_file() and audio.is_file()):
        pytest.skip(f"reference vectors not found under {shared}")
    x_ref = np.load(vec)["x"]  # (T, B, F)
    speech = np.load(audio)["speech"]
    for b, start in enumerate((12544, 50176)):
        seg = speech[start : start + 12544].astype(np.float64)
        seg = seg / np.abs(seg).max()
        p = S.power_spectrogram_reference(seg, S.StftConfig(pad_mode="reflect"))
        np.testing.assert_allclose(p, x_ref[:, b], rtol=1e-5, atol=1e-6 * x_ref.max())
        pj = np.asarray(S.power(S.stft(seg.astype(np.float32))))
        np.testing.assert_allclose(pj, x_ref[:, b], rtol=2e-3, atol=1e-5 * x_ref.max())
