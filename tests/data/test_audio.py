"""Tests for vdvae_jax.data.audio."""

import numpy as np
import pytest
import soundfile as sf

from vdvae_jax.data.audio import (
    AudioError,
    load_wav,
    normalise_peak,
    save_wav,
    segment_waveform,
    trim_silence,
    validate_waveform,
)


def _tone(n=16000, sr=16000, seed=0):
    t = np.arange(n) / sr
    noise = 1e-3 * np.random.default_rng(seed).standard_normal(n)
    return (0.5 * np.sin(2 * np.pi * 220 * t) + noise).astype(np.float32)


def test_save_load_roundtrip(tmp_path):
    x = _tone()
    p = save_wav(tmp_path / "a" / "x.wav", x)
    y = load_wav(p)
    assert y.dtype == np.float32 and np.array_equal(x, y)
    save_wav(tmp_path / "p16.wav", x, subtype="PCM_16")
    assert np.abs(load_wav(tmp_path / "p16.wav") - x).max() < 1e-4


def test_load_errors(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_wav(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(AudioError, match="junk.wav.*unreadable"):
        load_wav(tmp_path / "junk.wav")
    sf.write(tmp_path / "st.wav", np.stack([_tone(), _tone()], 1), 16000)
    with pytest.raises(AudioError, match="st.wav: 2 channels"):
        load_wav(tmp_path / "st.wav")
    sf.write(tmp_path / "r8.wav", _tone(8000, 8000), 8000)
    with pytest.raises(AudioError, match="r8.wav: sample rate 8000"):
        load_wav(tmp_path / "r8.wav")
    y = load_wav(tmp_path / "r8.wav", resample=True)
    assert y.shape == (16000,) and y.dtype == np.float32
    sf.write(tmp_path / "z.wav", np.zeros(1000, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="z.wav: silent"):
        load_wav(tmp_path / "z.wav")
    bad = _tone()
    bad[10] = np.nan
    sf.write(tmp_path / "nan.wav", bad, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="nan.wav: contains 1 NaN/Inf"):
        load_wav(tmp_path / "nan.wav")


def test_validate_waveform():
    x = _tone(100)
    assert validate_waveform(x, 16000, 16000) is not None
    with pytest.raises(AudioError, match="mono"):
        validate_waveform(np.zeros((2, 10)), 16000, 16000)
    with pytest.raises(AudioError, match="at least 200"):
        validate_waveform(x, 16000, 16000, min_samples=200)
    with pytest.raises(AudioError, match="sample rate 8000"):
        validate_waveform(x, 8000, 16000)
    assert issubclass(AudioError, ValueError)


def test_trim_silence():
    x = np.concatenate([np.zeros(8000), _tone(16000), np.zeros(8000)]).astype(np.float32)
    y, (beg, end) = trim_silence(x, top_db=30)
    assert isinstance(beg, int) and 6000 <= beg <= 8000 and 24000 <= end <= 26000
    np.testing.assert_array_equal(y, x[beg:end])


def test_segment_waveform():
    hop, T = 256, 50
    x = _tone(3 * 12544 + 5000)
    segs = segment_waveform(x, T, hop)
    n = (1 + x.size // hop) // T
    assert segs.shape == (n, (T - 1) * hop) == (3, 12544)
    np.testing.assert_allclose(np.abs(segs).max(axis=1), 1.0)
    np.testing.assert_allclose(segs[1] * np.abs(x[12544:25088]).max(), x[12544:25088], rtol=1e-6)
    assert segment_waveform(x[:12544], T, hop).shape == (1, 12544)  # exactly one segment
    with pytest.raises(AudioError, match="shorter than one segment"):
        segment_waveform(x[:12543], T, hop)
    with pytest.raises(AudioError, match="all-zero"):
        segment_waveform(np.zeros(12544), T, hop)


def test_normalise_peak():
    x = np.array([[0.5, -2.0], [0.1, 0.2]])
    np.testing.assert_allclose(normalise_peak(x, 0.9), [[0.225, -0.9], [0.45, 0.9]])
    np.testing.assert_allclose(np.abs(normalise_peak(x, 1.0, axis=None)).max(), 1.0)
