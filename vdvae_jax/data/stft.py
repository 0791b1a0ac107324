"""Short-time Fourier transform with the DVAE conventions (sine window, centred frames).

All spectrograms are time-major: ``(..., T, F)`` with ``T = 1 + len // hop`` frames and
``F = n_fft // 2 + 1`` one-sided bins. Scaling follows librosa (no normalisation):

.. math::  X[t, f] = \\sum_{n=0}^{N-1} w[n]\\, \\tilde x[t\\,h + n]\\, e^{-2\\pi i f n / N},

where :math:`\\tilde x` is the signal padded by ``n_fft // 2`` samples on both sides.

Two padding conventions exist in the reference code (Pitfall P9): training data used
``torch.stft(pad_mode='reflect')`` and evaluation/enhancement used ``librosa.stft`` whose
default is zero (``'constant'``) padding. Only the first and last two frames differ.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "StftConfig",
    "sine_window",
    "stft",
    "istft",
    "power",
    "stft_librosa",
    "istft_librosa",
    "power_spectrogram_reference",
]

_PAD_MODES = ("reflect", "constant")


@dataclasses.dataclass(frozen=True)
class StftConfig:
    """STFT parameters (defaults: 16 kHz, 64 ms sine window, 75 % overlap).

    Attributes:
      sr: sample rate in Hz.
      n_fft: FFT size N (``F = N // 2 + 1`` bins).
      hop: hop size in samples.
      win_length: window length (``<= n_fft``; zero-padded to ``n_fft`` centred, as librosa).
      pad_mode: ``"reflect"`` (reference training data, ``torch.stft``) or ``"constant"``
        (zeros; librosa >= 0.9 default, reference evaluation and enhancement code).
    """

    sr: int = 16000
    n_fft: int = 1024
    hop: int = 256
    win_length: int = 1024
    pad_mode: str = "reflect"

    def __post_init__(self):
        if self.pad_mode not in _PAD_MODES:
            raise ValueError(f"pad_mode must be one of {_PAD_MODES}, got {self.pad_mode!r}")
        for name in ("sr", "n_fft", "hop", "win_length"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"StftConfig.{name} must be positive, got {getattr(self, name)}")
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length ({self.win_length}) must be <= n_fft ({self.n_fft})")

    @property
    def n_freq(self) -> int:
        """Number of one-sided frequency bins ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    def n_frames(self, length: int) -> int:
        """Number of centred frames for a signal of ``length`` samples: ``1 + length // hop``."""
        return 1 + length // self.hop


def sine_window(n: int) -> np.ndarray:
    """Sine window ``w[k] = sin(pi (k + 1/2) / n)`` for ``k = 0..n-1`` (float64).

    At 75 % overlap :math:`\\sum_m w^2[k - m h] = 2` is constant, so the inverse is exact.
    """
    return np.sin(np.pi * (np.arange(n) + 0.5) / n)


def _padded_window(cfg: StftConfig) -> np.ndarray:
    """Sine window of ``win_length`` centred in ``n_fft`` samples (librosa ``pad_center``)."""
    w = np.zeros(cfg.n_fft)
    lpad = (cfg.n_fft - cfg.win_length) // 2
    w[lpad : lpad + cfg.win_length] = sine_window(cfg.win_length)
    return w


def _check_signal_length(length: int, cfg: StftConfig) -> None:
    if cfg.pad_mode == "reflect" and length <= cfg.n_fft // 2:
        raise ValueError(
            f"reflect padding needs more than n_fft//2 = {cfg.n_fft // 2} samples, got {length}"
        )


@functools.partial(jax.jit, static_argnames=("cfg",))
def stft(x: jax.Array, cfg: StftConfig = StftConfig()) -> jax.Array:
    """Centred STFT, librosa scaling, time-major output.

    Args:
      x: real signal(s) ``(..., L)``; leading dimensions are batch dimensions.
      cfg: STFT parameters (static under jit).

    Returns:
      complex64 ``(..., T, F)`` with ``T = 1 + L // hop`` and ``F = n_fft // 2 + 1``.
    """
    x = jnp.asarray(x, jnp.float32)
    length = x.shape[-1]
    _check_signal_length(length, cfg)
    pad = cfg.n_fft // 2
    widths = [(0, 0)] * (x.ndim - 1) + [(pad, pad)]
    xp = jnp.pad(x, widths, mode=cfg.pad_mode)
    n_frames = cfg.n_frames(length)
    idx = np.arange(n_frames)[:, None] * cfg.hop + np.arange(cfg.n_fft)[None, :]
    frames = xp[..., idx] * jnp.asarray(_padded_window(cfg), jnp.float32)  # (..., T, N)
    return jnp.fft.rfft(frames, n=cfg.n_fft, axis=-1).astype(jnp.complex64)


@functools.partial(jax.jit, static_argnames=("cfg", "length"))
def istft(X: jax.Array, cfg: StftConfig = StftConfig(), length: int | None = None) -> jax.Array:
    """Inverse of :func:`stft` by weighted overlap-add (as ``librosa.istft``).

    .. math::  \\hat x[n] = \\frac{\\sum_t w[n - t h]\\, \\mathrm{irfft}(X_t)[n - t h]}
               {\\sum_t w^2[n - t h]},

    then the ``n_fft // 2`` padding is removed.

    Args:
      X: complex ``(..., T, F)`` spectrogram.
      cfg: STFT parameters (static).
      length: output length; default ``(T - 1) * hop`` (librosa's default). Longer outputs are
        zero-padded.

    Returns:
      float32 ``(..., length)``.
    """
    X = jnp.asarray(X)
    n_frames = X.shape[-2]
    if X.shape[-1] != cfg.n_freq:
        raise ValueError(f"expected {cfg.n_freq} frequency bins (last axis), got {X.shape[-1]}")
    win = _padded_window(cfg)
    frames = jnp.fft.irfft(X, n=cfg.n_fft, axis=-1).astype(jnp.float32)
    frames = frames * jnp.asarray(win, jnp.float32)
    full_len = cfg.n_fft + cfg.hop * (n_frames - 1)
    idx = (np.arange(n_frames)[:, None] * cfg.hop + np.arange(cfg.n_fft)[None, :]).reshape(-1)
    batch = frames.shape[:-2]
    y = jnp.zeros(batch + (full_len,), jnp.float32)
    y = y.at[..., idx].add(frames.reshape(batch + (-1,)))
    # Squared-window sum (host constant); divide only where it is non-negligible, as librosa.
    wss = np.zeros(full_len)
    np.add.at(wss, idx, np.tile(win**2, n_frames))
    ok = wss > np.finfo(np.float32).tiny
    y = jnp.where(ok, y / np.where(ok, wss, 1.0).astype(np.float32), y)
    start = cfg.n_fft // 2
    if length is None:
        return y[..., start : full_len - start]
    avail = full_len - start
    y = y[..., start : start + min(length, avail)]
    if length > avail:
        y = jnp.pad(y, [(0, 0)] * len(batch) + [(0, length - avail)])
    return y


def power(X: jax.Array) -> jax.Array:
    """Power spectrogram ``|X|^2 = Re(X)^2 + Im(X)^2``."""
    return jnp.real(X) ** 2 + jnp.imag(X) ** 2


def stft_librosa(x: np.ndarray, cfg: StftConfig = StftConfig()) -> np.ndarray:
    """Host (numpy) STFT through ``librosa.stft`` with the sine window; ``(..., T, F)``.

    The output dtype follows the input (float64 in → complex128 out).
    """
    import librosa

    x = np.asarray(x)
    _check_signal_length(x.shape[-1], cfg)
    X = librosa.stft(
        x,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop,
        win_length=cfg.win_length,
        window=sine_window(cfg.win_length),
        center=True,
        pad_mode=cfg.pad_mode,
    )
    return np.swapaxes(X, -1, -2)


def istft_librosa(
    X: np.ndarray, cfg: StftConfig = StftConfig(), length: int | None = None
) -> np.ndarray:
    """Host inverse STFT through ``librosa.istft``; ``X`` is ``(..., T, F)``."""
    import librosa

    return librosa.istft(
        np.swapaxes(np.asarray(X), -1, -2),
        hop_length=cfg.hop,
        win_length=cfg.win_length,
        n_fft=cfg.n_fft,
        window=sine_window(cfg.win_length),
        center=True,
        length=length,
    )


def power_spectrogram_reference(segment: np.ndarray, cfg: StftConfig = StftConfig()) -> np.ndarray:
    """Reference training-data recipe: float64 STFT, then ``|X|^2`` cast to float32.

    The caller is responsible for the per-segment peak normalisation
    (see :func:`vdvae_jax.data.audio.segment_waveform`); use ``cfg.pad_mode="reflect"`` to
    match ``torch.stft`` in the reference data loader.

    Args:
      segment: waveform(s) ``(..., L)``.
      cfg: STFT parameters.

    Returns:
      float32 ``(..., T, F)``.
    """
    X = stft_librosa(np.asarray(segment, np.float64), cfg)
    return (X.real**2 + X.imag**2).astype(np.float32)
