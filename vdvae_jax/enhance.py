"""Speech enhancement of a waveform with a DVAE speech prior (SE-VEM with NMF noise).

``enhance(noisy, sr, prior)`` validates the waveform, normalises it by its peak (the reference
pre-processing), takes the sine-window STFT, runs the SE-VEM of :mod:`vdvae_jax.inference.se_vem`
(one jitted ``lax.scan`` over the iterations, frames end-padded to a bucket length and masked so that
utterances of similar lengths share one compilation), applies the Wiener filter and returns the
enhanced waveform at the input's scale.

``prior`` is a ``(model, params)`` pair or a path: a published DVAE_SE folder (``config.ini`` + ``.pt``),
a ``.pt`` file beside its ``config.ini``, or a ``model.npz`` written by ``experiments/train_dvae.py``.
Only the NMF noise model exists so far; the deep noise models (``lv``, ``no``, ``nolv``) are not built.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vdvae_jax.data.audio import validate_waveform
from vdvae_jax.data.stft import StftConfig, istft_librosa, stft_librosa
from vdvae_jax.inference.base import run
from vdvae_jax.inference.se_vem import (ENHANCE_DEFAULTS, VB_SETTINGS, WSJ_SETTINGS, SEVEMConfig,
                                        SEVEMData, make_se_vem, wiener_filter)

__all__ = ["METHODS", "PRESETS", "load_prior", "enhance"]

METHODS = ("nmf",)
PRESETS = {"vb": VB_SETTINGS, "wsj": WSJ_SETTINGS, "enhance-defaults": ENHANCE_DEFAULTS}
STFT = StftConfig(pad_mode="constant")


def load_prior(prior):
    """``(model, params)`` from a pair or a path (see the module docstring)."""
    if isinstance(prior, tuple):
        return prior
    from vdvae_jax.models.io import load_model
    from vdvae_jax.models.published import load_published_model

    path = Path(prior)
    if not path.exists():
        raise FileNotFoundError(f"prior {path} not found")
    if path.suffix == ".npz":
        return load_model(path)
    return load_published_model(path)


@functools.lru_cache(maxsize=16)
def _runner(model, config: SEVEMConfig):
    """Jitted ``(params, X (N,F) complex, mask (N,), key) -> (S_hat, B_hat)``; one trace per length."""
    alg = make_se_vem(model, config)

    @jax.jit
    def go(params, X, mask, key):
        data = SEVEMData.from_stft(X, mask)
        k_init, k_run, k_wf = jax.random.split(key, 3)
        state = alg.init(k_init, params, data)
        state, _ = run(alg, k_run, state, data, config.n_iter)
        out = wiener_filter(model, config, k_wf, state, data, X)
        return out.speech, out.noise

    return go


def enhance(noisy: np.ndarray, sr: int, prior, *, method: str = "nmf",
            config: SEVEMConfig = VB_SETTINGS, key=None, bucket: int = 64,
            return_noise: bool = False):
    """Enhance one noisy waveform.

    Args:
      noisy: 1-D waveform.
      sr: its sample rate (must be 16 kHz, the priors' rate).
      prior: ``(model, params)`` or a path (see :func:`load_prior`).
      method: noise model; only ``"nmf"`` exists so far.
      config: SE-VEM settings (``PRESETS``: the reference's VoiceBank / WSJ0 settings, or the
        defaults of its ``enhance()`` function).
      key: typed PRNG key (default ``jax.random.key(0)``).
      bucket: frames are padded to a multiple of this (fewer compilations).
      return_noise: also return the noise estimate.

    Returns:
      The enhanced waveform (same length and scale as ``noisy``), or ``(speech, noise)``.
    """
    if method not in METHODS:
        raise NotImplementedError(f"method {method!r} is not available; implemented: {METHODS} "
                                  "(the deep noise models lv/no/nolv are not built yet)")
    x = validate_waveform(np.asarray(noisy), sr, expected_sr=STFT.sr, min_samples=STFT.n_fft,
                          name="noisy waveform")
    model, params = load_prior(prior)
    if model.config.x_dim != STFT.n_fft // 2 + 1:
        raise ValueError(f"prior {model.name} models {model.config.x_dim} bins, the STFT gives "
                         f"{STFT.n_fft // 2 + 1}")
    peak = float(np.max(np.abs(x)))
    X = stft_librosa(x / peak, STFT)  # (N, F)
    n = X.shape[0]
    n_pad = -(-n // bucket) * bucket
    X_pad = np.zeros((n_pad, X.shape[1]), np.complex64)
    X_pad[:n] = X
    mask = np.arange(n_pad) < n
    key = jax.random.key(0) if key is None else key
    speech, noise = _runner(model, dataclasses.replace(config, record=False))(
        params, jnp.asarray(X_pad), jnp.asarray(mask), key)
    out = [istft_librosa(np.asarray(s)[:n], STFT, length=len(x)) * peak for s in (speech, noise)]
    return (out[0], out[1]) if return_noise else out[0]
