"""Tests for vdvae_jax.data.datasets with tiny synthetic WAV trees."""

import numpy as np
import pytest
import soundfile as sf

from vdvae_jax.data.audio import segment_waveform, trim_silence
from vdvae_jax.data.datasets import (
    batch_iterator,
    build_spectrogram_dataset,
    voicebank_splits,
    wav_folder,
    wsj0_splits,
)
from vdvae_jax.data.stft import StftConfig, power_spectrogram_reference


def _speechlike(n, sr=16000, seed=0):
    """A tone burst with silence around it (so trimming does something)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    x = np.sin(2 * np.pi * (150 + 50 * seed) * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    x = x + 0.01 * rng.standard_normal(n)
    q = min(sr // 4, n // 4)
    x[:q] = 1e-5 * rng.standard_normal(q)
    x[n - q :] = 1e-5 * rng.standard_normal(q)
    return (0.5 * x).astype(np.float32)


def _write(path, n=20000, sr=16000, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, _speechlike(n, sr, seed), sr, subtype="FLOAT")


def test_wav_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        wav_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no .wav"):
        wav_folder(tmp_path / "empty")
    for name in ("b/2.wav", "a/1.WAV", "c.wav"):
        _write(tmp_path / "d" / name, 100)
    (tmp_path / "d" / "notes.txt").write_text("x")
    assert [p.relative_to(tmp_path / "d").as_posix() for p in wav_folder(tmp_path / "d")] == [
        "a/1.WAV", "b/2.wav", "c.wav"]


def test_wsj0_splits(tmp_path):
    root = tmp_path / "wsj0"
    for sub, n in (("data/si_tr_s/011", 3), ("data/si_dt_05/050", 2), ("eval/si_et_05/440", 1)):
        for i in range(n):
            _write(root / sub / f"f{i}.wav", 100)
    s = wsj0_splits(root)
    assert [len(s[k]) for k in ("train", "val", "test")] == [3, 2, 1]
    assert all("si_tr_s" in str(p) for p in s["train"])
    with pytest.raises(FileNotFoundError, match="si_tr_s"):
        wsj0_splits(tmp_path / "wsj0" / "eval")


def test_voicebank_splits_and_resampling(tmp_path):
    root = tmp_path / "vb"
    for spk in ("p226", "p227", "p287", "p288"):
        _write(root / "clean_trainset_28spk_wav" / f"{spk}_001.wav", 72000, sr=48000)
    _write(root / "clean_testset_wav" / "p232_001.wav", 72000, sr=48000)
    s = voicebank_splits(root)
    names = {k: [p.stem for p in v] for k, v in s.items()}
    assert names == dict(train=["p227_001", "p288_001"], val=["p226_001", "p287_001"],
                         test=["p232_001"])
    data = build_spectrogram_dataset(s["train"], StftConfig(), seq_len=20)
    assert data.dtype == np.float32 and data.shape[1:] == (20, 513) and len(data) >= 2


def test_build_spectrogram_dataset_matches_recipe(tmp_path):
    cfg = StftConfig()
    waves = [_speechlike(40000, seed=i) for i in range(3)] + [_speechlike(9000, seed=4)]
    data = build_spectrogram_dataset(waves, cfg, seq_len=50, top_db=30)
    expected = []
    for w in waves[:3]:
        y, _ = trim_silence(w, 30)
        expected.append(power_spectrogram_reference(segment_waveform(y.astype(np.float64)), cfg))
    expected = np.concatenate(expected)
    assert data.shape == expected.shape and data.shape[1:] == (50, 513)
    np.testing.assert_array_equal(data, expected)
    paths = []
    for i, w in enumerate(waves):
        paths.append(tmp_path / f"{i}.wav")
        sf.write(paths[-1], w, 16000, subtype="FLOAT")
    np.testing.assert_array_equal(build_spectrogram_dataset(paths, cfg), data)
    with pytest.raises(ValueError, match="long enough"):
        build_spectrogram_dataset(waves[3:], cfg)


def test_batch_iterator():
    data = np.arange(10)[:, None] * np.ones((1, 3))
    b = list(batch_iterator(data, 3, seed=0, epoch=0))
    assert len(b) == 3 and all(x.shape == (3, 3) for x in b)
    assert len(np.unique(np.concatenate(b)[:, 0])) == 9
    again = list(batch_iterator(data, 3, seed=0, epoch=0))
    assert all(np.array_equal(x, y) for x, y in zip(b, again))
    other = list(batch_iterator(data, 3, seed=0, epoch=1))
    assert not all(np.array_equal(x, y) for x, y in zip(b, other))
    full = list(batch_iterator(data, 3, seed=0, epoch=0, drop_last=False))
    assert len(full) == 4 and sorted(np.concatenate(full)[:, 0]) == list(range(10))
    resumed = list(batch_iterator(data, 3, seed=0, epoch=0, start_batch=2))
    assert len(resumed) == 1 and np.array_equal(resumed[0], b[2])
