"""Analysis-resynthesis of whole utterances through a DVAE, batched in length buckets.

The reference protocol (DVAE ``eval_wsj.py`` / SE ``eval_speech.py``): trim the utterance
(``top_db=30``), normalise it by its peak, take the STFT :math:`X` (sine window, n_fft 1024, hop 256,
centred, librosa's zero padding), run the model on the whole power spectrogram :math:`|X|^2` with a
stochastic :math:`z`, and resynthesise with the predicted standard deviation and the original phase,

.. math::
    \\hat S_{ft} = \\sqrt{e^{y_{ft}}} \\, e^{j \\angle X_{ft}}, \\qquad \\hat s = \\mathrm{iSTFT}(\\hat S).

Utterances of different lengths are end-padded to a few bucket lengths and masked (the anti-causal
scans skip padded frames), so a test set needs one compilation per bucket, not per utterance.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vdvae_jax.data.audio import normalise_peak, trim_silence
from vdvae_jax.data.stft import StftConfig, istft_librosa, stft_librosa
from vdvae_jax.models.base import DVAE

__all__ = ["prepare_utterance", "bucket_length", "make_decoder_fn", "resynthesize"]


def prepare_utterance(wave: np.ndarray, top_db: float = 30.0) -> np.ndarray:
    """Trim silence on the whole utterance and normalise its peak to 1 (reference protocol)."""
    trimmed, _ = trim_silence(np.asarray(wave, np.float32), top_db=top_db)
    return normalise_peak(trimmed)


def bucket_length(n_frames: int, bucket: int) -> int:
    """Smallest multiple of ``bucket`` that holds ``n_frames``."""
    return -(-n_frames // bucket) * bucket


def make_decoder_fn(model: DVAE, **mode) -> Callable:
    """Jitted ``(params, x (T,B,F), key, mask (T,B)) -> decoder log-variance (T,B,F)``."""

    @jax.jit
    def decode(params, x, key, mask):
        return model.forward(params, x, key, mask=mask, **mode).x_out.logvar

    return decode


def resynthesize(model: DVAE, params, waves: Sequence[np.ndarray], key, *,
                 stft_cfg: StftConfig = StftConfig(pad_mode="constant"), bucket: int = 64,
                 batch: int = 8, decoder_fn: Callable | None = None, **mode) -> list[np.ndarray]:
    """Resynthesise each (already prepared) waveform through the model; returns waveforms.

    Args:
      model, params: the DVAE and its parameters.
      waves: prepared utterances (see :func:`prepare_utterance`).
      key: PRNG key; each padded batch uses ``fold_in(key, index of its first utterance)``.
      stft_cfg: STFT settings (default: librosa zero padding, as the reference evaluation).
      bucket, batch: frames are padded to multiples of ``bucket``, batches to ``batch`` sequences.
      decoder_fn: reuse a function from :func:`make_decoder_fn` across calls (avoids recompiling).
      **mode: model mode arguments (e.g. ``use_pred=1.0`` for SRNN generation mode).
    """
    decoder_fn = decoder_fn or make_decoder_fn(model, **mode)
    specs = [stft_librosa(np.asarray(w, np.float32), stft_cfg) for w in waves]  # (T, F) complex
    out: list[np.ndarray | None] = [None] * len(waves)
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(specs):
        groups.setdefault(bucket_length(s.shape[0], bucket), []).append(i)
    for length, members in sorted(groups.items()):
        for start in range(0, len(members), batch):
            idx = members[start:start + batch]
            x = np.zeros((length, batch, specs[idx[0]].shape[1]), np.float32)
            mask = np.zeros((length, batch), bool)
            for b, i in enumerate(idx):
                n = specs[i].shape[0]
                x[:n, b] = np.abs(specs[i]) ** 2
                mask[:n, b] = True
            batch_key = jax.random.fold_in(key, idx[0])
            y = np.asarray(decoder_fn(params, jnp.asarray(x), batch_key, jnp.asarray(mask)))
            for b, i in enumerate(idx):
                n = specs[i].shape[0]
                est = np.sqrt(np.exp(y[:n, b])) * np.exp(1j * np.angle(specs[i]))
                out[i] = istft_librosa(est, stft_cfg, length=len(waves[i]))
    return out
