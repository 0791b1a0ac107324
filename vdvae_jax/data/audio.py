"""Waveform I/O, validation, silence trimming and segmentation (host-side numpy).

The segmentation follows the reference training loader (spec §2.4, Pitfall P10): segments of
``Ls = (T - 1) * hop`` samples give exactly ``T`` centred STFT frames, and a signal of ``L``
samples yields ``n = floor((1 + floor(L / hop)) / T)`` contiguous segments, each divided by its
own peak ``max |x|``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

__all__ = [
    "AudioError",
    "load_wav",
    "save_wav",
    "validate_waveform",
    "trim_silence",
    "segment_waveform",
    "normalise_peak",
]


class AudioError(ValueError):
    """Invalid audio data or file (wrong rate, multi-channel, non-finite, silent, too short)."""


def validate_waveform(
    x: np.ndarray,
    sr: int,
    expected_sr: int = 16000,
    min_samples: int | None = None,
    *,
    name: str = "waveform",
) -> np.ndarray:
    """Checks that ``x`` is a usable mono waveform and returns it as a numpy array.

    Args:
      x: samples, shape ``(L,)``.
      sr: its sample rate.
      expected_sr: the required sample rate.
      min_samples: optional minimum length.
      name: what to call the signal in error messages (e.g. a file path).

    Raises:
      AudioError: if ``x`` is not 1-D, has the wrong rate, contains NaN/Inf, is all zeros
        or is shorter than ``min_samples``.
    """
    x = np.asarray(x)
    if x.ndim != 1:
        raise AudioError(f"{name}: expected a mono 1-D waveform, got shape {x.shape}")
    if int(sr) != int(expected_sr):
        raise AudioError(f"{name}: sample rate {sr} Hz, expected {expected_sr} Hz")
    if not np.issubdtype(x.dtype, np.floating):
        raise AudioError(f"{name}: expected floating-point samples, got dtype {x.dtype}")
    if x.size == 0:
        raise AudioError(f"{name}: empty waveform")
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{name}: contains {int(np.sum(~np.isfinite(x)))} NaN/Inf samples")
    if not np.any(x):
        raise AudioError(f"{name}: silent (all samples are zero)")
    if min_samples is not None and x.shape[0] < min_samples:
        raise AudioError(f"{name}: {x.shape[0]} samples, need at least {min_samples}")
    return x


def load_wav(path: str | os.PathLike, sr: int = 16000, resample: bool = False) -> np.ndarray:
    """Reads a mono WAV file as float32 in ``[-1, 1]``.

    Args:
      path: file to read.
      sr: required sample rate.
      resample: if the file's rate differs from ``sr``, resample with ``librosa.resample``
        (soxr_hq, as the reference VoiceBank preprocessing) instead of raising.

    Returns:
      float32 array ``(L,)``.

    Raises:
      AudioError: missing/unreadable file, multi-channel audio, wrong sample rate (unless
        ``resample``), NaN/Inf samples or an all-zero file. The message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such file")
    try:
        x, file_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / TypeError
        raise AudioError(f"{path}: unreadable audio file ({e})") from e
    if x.shape[1] != 1:
        raise AudioError(f"{path}: {x.shape[1]} channels, expected mono")
    x = x[:, 0]
    if file_sr != sr and resample:
        import librosa

        validate_waveform(x, file_sr, file_sr, name=str(path))
        x = librosa.resample(x, orig_sr=file_sr, target_sr=sr).astype(np.float32)
        file_sr = sr
    return validate_waveform(x, file_sr, sr, name=str(path))


def save_wav(
    path: str | os.PathLike, x: np.ndarray, sr: int = 16000, subtype: str = "FLOAT"
) -> Path:
    """Writes a mono waveform (default 32-bit float, lossless); creates parent folders.

    Use ``subtype="PCM_16"`` for 16-bit files (samples are then clipped to ``[-1, 1)``).
    """
    path = Path(path)
    x = np.asarray(x)
    if x.ndim != 1:
        raise AudioError(f"{path}: expected a mono 1-D waveform, got shape {x.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, int(sr), subtype=subtype)
    return path


def trim_silence(x: np.ndarray, top_db: float = 30.0) -> tuple[np.ndarray, tuple[int, int]]:
    """Trims leading/trailing silence of the whole signal (``librosa.effects.trim``).

    Frames (2048 samples, hop 512) whose RMS is more than ``top_db`` below the loudest frame
    are silence.

    Returns:
      ``(x[beg:end], (beg, end))``.
    """
    import librosa

    x = np.asarray(x)
    y, idx = librosa.effects.trim(x, top_db=top_db)
    return y, (int(idx[0]), int(idx[1]))


def normalise_peak(x: np.ndarray, peak: float = 1.0, axis: int | None = -1) -> np.ndarray:
    """Scales ``x`` so that ``max |x| = peak`` along ``axis`` (``None``: whole array).

    Raises:
      AudioError: if a slice is all zeros (the peak would be 0).
    """
    x = np.asarray(x)
    m = np.max(np.abs(x), axis=axis, keepdims=True)
    if np.any(m == 0):
        raise AudioError("cannot peak-normalise an all-zero signal/segment")
    return x * (peak / m).astype(x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64)


def segment_waveform(x: np.ndarray, seq_len: int = 50, hop: int = 256) -> np.ndarray:
    """Cuts a (trimmed) waveform into peak-normalised segments of ``seq_len`` STFT frames.

    Segment ``i`` is ``x[i Ls : (i + 1) Ls]`` with ``Ls = (seq_len - 1) hop``, for
    ``i < n = floor((1 + floor(L / hop)) / seq_len)``; the remainder is dropped. Each segment
    is divided by its own ``max |x|``.

    Returns:
      ``(n, Ls)`` array, float dtype of ``x`` (float64 for integer input).

    Raises:
      AudioError: if ``x`` is not 1-D, gives no segment, or a segment is all zeros.
    """
    x = np.asarray(x)
    if x.ndim != 1:
        raise AudioError(f"expected a mono 1-D waveform, got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    seg_len = (seq_len - 1) * hop
    n = (1 + x.shape[0] // hop) // seq_len
    if n == 0:
        raise AudioError(
            f"waveform of {x.shape[0]} samples is shorter than one segment of "
            f"{seq_len} frames ({seg_len} samples at hop {hop})"
        )
    return normalise_peak(x[: n * seg_len].reshape(n, seg_len), 1.0, axis=-1)
