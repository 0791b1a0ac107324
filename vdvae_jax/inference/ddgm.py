"""Unsupervised speech enhancement with deep dynamical speech and noise models (DDGM, spec §5).

Observation model on STFT frames (time-major ``(T, [B,] F)``), no per-frame gain:

.. math::
    x_t = s_t + b_t, \\quad s_t | z \\sim \\mathcal N_c(0, v_{s,t}(z)), \\quad
    b_t \\sim \\mathcal N_c(0, v_{n,t}),

with :math:`v_s = \\exp(\\text{decoder}(z))` from a speech DVAE pretrained on clean speech and **frozen**,
:math:`v_n` from a noise network (:mod:`vdvae_jax.models.noise_models`: LV, NO, NOLV) and
:math:`z \\sim q_\\phi(z | x)` the speech encoder run on the noisy power :math:`P = |x|^2`. The loss
(negative ELBO per valid frame, single reparameterised sample, spec §5.3):

.. math::
    \\mathcal L(\\phi, \\theta_n) = \\frac{1}{N} \\sum_{t,f} d_{IS}\\big(P_{tf} \\,|\\, v_{s,tf} + v_{n,tf}\\big)
      + \\frac{\\beta}{N} \\sum_t \\mathrm{KL}\\big(q(z_t | \\cdot) \\| \\mathcal N(0, I)\\big),
    \\qquad d_{IS}(p | v) = \\frac pv - \\log\\frac pv - 1,

N the number of valid frames (over the batch). Enhancement is the Wiener filter
:math:`\\hat s_t = \\frac{v_{s,t}}{v_{s,t} + v_{n,t}} \\odot x_t` (one z sample, or the posterior mean).

Trainable parameters are the speech encoder layers (:data:`vdvae_jax.inference.se_vem.ENCODER_LAYERS`
of the prior's family) and the noise network; the rest of the speech model (decoder) is frozen. The
three configurations (spec §5.4):

* **U-NA** (:func:`make_adaptation` from :func:`fresh_trainable`): per utterance, from the pretrained
  encoder and a fresh noise network, ``n_iter`` full-utterance Adam steps, then the Wiener filter;
* **U-ND** (:func:`train_nd`): encoder + noise network trained on a noisy training set (no clean
  targets; minibatches of segments, Adam with cosine decay), then one forward pass per utterance;
  ``NDConfig(train_encoder=False)`` trains the noise network alone;
* **U-NDA** (:func:`make_adaptation` from the U-ND parameters): U-ND, then the U-NA loop per utterance.

:func:`make_adaptation` is an :class:`~vdvae_jax.inference.base.Algorithm`; :func:`adapt_batch` runs
it on a padded batch of utterances (``vmap`` over utterances, ``lax.scan`` over iterations, one jit).

Differences from the reference (named options or documented): the speech prior is any RVAE of our
zoo (the DDGM's RVAE-causal has an extra ``enc_mlp_g_z`` 256→128 tanh layer: ``dense_g_z=(128,)``
in :class:`~vdvae_jax.models.rvae.RVAEConfig` reproduces it); ``DDGMConfig.noise_init="floor"`` starts
the noise head's bias at the log of a per-frequency low quantile of P (reference: ``"random"``), with
``floor_debias`` turned into a noise-variance estimate; ``DDGMConfig.speech_gain="utterance"`` adds a
profiled per-utterance speech gain and ``DDGMConfig.noise_gain`` a profiled per-utterance noise level
per frequency bin or band (reference: neither); :func:`recentre_noise` moves a U-ND noise model to the
utterance's noise floor before U-NDA; ``NDConfig.train_encoder=False`` keeps the clean-speech encoder
in U-ND. Without these, at -5 dB the speech variance (at the clean training loudness) and a noise model
started 10 dB below the noise swap roles (speech removed).
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vdvae_jax.inference.base import Algorithm, run
from vdvae_jax.inference.se_vem import ENCODER_LAYERS, model_family

__all__ = [
    "DDGMConfig",
    "NDConfig",
    "DDGMData",
    "AdaptState",
    "AdaptInfo",
    "split_speech_params",
    "merge_speech_params",
    "noise_floor",
    "noise_variance",
    "floor_offset",
    "speech_gain",
    "profile_gains",
    "fresh_trainable",
    "recentre_noise",
    "forward",
    "loss_fn",
    "wiener_gain",
    "make_adaptation",
    "adapt_batch",
    "apply_batch",
    "train_nd",
]


@dataclasses.dataclass(frozen=True)
class DDGMConfig:
    """Per-utterance (U-NA / U-NDA) settings. Defaults: the reference's U-NA (Adam 5e-4, 300 steps).

    Attributes:
      n_iter: Adam steps per utterance (the reference evaluates at 100 and 200 of 300).
      lr: Adam learning rate.
      beta: KL weight :math:`\\beta_z` (1).
      noise_init: ``"random"`` (reference) or ``"floor"``: the fresh noise head's bias is
        :math:`\\log` of the ``floor_quantile`` quantile over valid frames of P, per frequency.
      floor_quantile: see ``noise_init``.
      floor_debias: divide the ``"floor"`` quantile by :math:`-\\log(1 - q)`: for Gaussian noise
        :math:`P_{tf} / v_{n,f} \\sim \\mathrm{Exp}(1)`, whose q-quantile is :math:`-\\log(1-q)`, so this makes
        the floor an estimate of the noise variance itself (q = 0.1: +9.8 dB) rather than of its low
        quantile (``False``: the plain quantile, the previous behaviour).
      wf_mode: Wiener filter from one posterior ``"sample"`` (reference) or the posterior ``"mean"``
        (z driven by zero noise).
      trainable: speech-parameter names tuned; ``None`` = the encoder layers of the prior's family.
      speech_gain: ``"none"`` (reference: :math:`V = v_s + v_n`) or ``"utterance"``: one scalar gain per
        utterance (per segment in U-ND), :math:`V = g\\, v_s + v_n`, profiled out at every evaluation
        of the loss and of the Wiener filter by ``gain_iters`` multiplicative IS updates from g = 1
        (the NMF-VEM gain rule of spec §4.3 with one gain for all frames, no gradient through g):
        :math:`g \\leftarrow g \\sqrt{\\sum_{t,f} P v_s V^{-2} / \\sum_{t,f} v_s V^{-1}}`.
        It absorbs the loudness mismatch between the frozen clean-speech decoder and the speech in a
        max-normalised low-SNR mixture, which otherwise makes :math:`v_s` cover the noise (role swap).
      noise_gain: ``"none"`` (reference) or ``"frequency"``: one gain per frequency bin and utterance
        (per segment in U-ND) on the noise variance, :math:`V = g\\, v_s + c_f\\, v_n`, profiled with g by
        the same multiplicative IS updates, :math:`c_f \\leftarrow c_f \\sqrt{\\sum_t P v_n V^{-2} /
        \\sum_t v_n V^{-1}}`. The noise network then models the noise's shape over time and frequency
        while its level per bin is fitted to each utterance in closed form: a U-ND network trained on other
        noise types no longer imposes their spectrum on a new one.
        ``"band"``: the same with the level smooth over frequency, :math:`c = A_f c'`, :math:`A_f` the
        ``noise_smooth_bins`` moving average of :func:`noise_variance` (the multiplicative update of
        :math:`c'` with :math:`A_f^\\top` applied to both sums), so the level cannot follow a voice either.
      gain_iters: alternating updates of ``speech_gain`` / ``noise_gain``.
      train_encoder: True (reference U-NA): Adam moves the speech encoder and the noise network; False:
        the noise network only (the encoder keeps its starting weights).
      noise_smooth_frames, noise_smooth_bins: odd widths of moving averages applied to the noise
        network's variance, over valid frames and over frequency bins, in the loss and in the Wiener
        filter: :math:`v_n = A_f\\, \\tilde v_n\\, A_t` (1 = off, the reference). The noise variance then
        cannot follow a voice (harmonic combs, syllables), as in the default NMF enhancer
        (:class:`vdvae_jax.enhance.EnhanceConfig`, 33 bins x 31 frames).
      gain_floor: :math:`\\beta` in [0, 1): the Wiener gain becomes :math:`\\beta + (1-\\beta) G`, so no bin
        is attenuated by more than :math:`-20\\log_{10}\\beta` dB (0 = off, the reference).
      adam_b1, adam_b2, adam_eps: Adam hyper-parameters.
    """

    n_iter: int = 300
    lr: float = 5e-4
    beta: float = 1.0
    noise_init: str = "random"
    floor_quantile: float = 0.1
    floor_debias: bool = False
    wf_mode: str = "sample"
    trainable: tuple[str, ...] | None = None
    speech_gain: str = "none"
    noise_gain: str = "none"
    gain_iters: int = 10
    train_encoder: bool = True
    noise_smooth_frames: int = 1
    noise_smooth_bins: int = 1
    gain_floor: float = 0.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8

    def __post_init__(self):
        if self.n_iter < 0:
            raise ValueError(f"n_iter must be >= 0, got {self.n_iter}")
        if self.lr <= 0 or self.beta < 0:
            raise ValueError(f"need lr > 0 and beta >= 0, got lr={self.lr}, beta={self.beta}")
        if self.noise_init not in ("random", "floor"):
            raise ValueError(f"noise_init must be 'random' or 'floor', got {self.noise_init!r}")
        if not 0.0 <= self.floor_quantile <= 1.0:
            raise ValueError(f"floor_quantile must be in [0, 1], got {self.floor_quantile}")
        if self.wf_mode not in ("sample", "mean"):
            raise ValueError(f"wf_mode must be 'sample' or 'mean', got {self.wf_mode!r}")
        if self.speech_gain not in ("none", "utterance"):
            raise ValueError(f"speech_gain must be 'none' or 'utterance', got {self.speech_gain!r}")
        if self.noise_gain not in ("none", "frequency", "band"):
            raise ValueError(f"noise_gain must be 'none', 'frequency' or 'band', got {self.noise_gain!r}")
        if self.gain_iters < 1:
            raise ValueError(f"gain_iters must be >= 1, got {self.gain_iters}")
        if self.trainable is not None and not isinstance(self.trainable, tuple):
            raise TypeError(f"trainable must be a tuple of names or None, got {self.trainable!r}")
        for name in ("noise_smooth_frames", "noise_smooth_bins"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1 or v % 2 == 0:
                raise ValueError(f"{name} must be an odd integer >= 1, got {v!r}")
        if not 0.0 <= self.gain_floor < 1.0:
            raise ValueError(f"gain_floor must be in [0, 1), got {self.gain_floor}")


@dataclasses.dataclass(frozen=True)
class NDConfig:
    """U-ND training (reference: batch 256, 300 epochs, Adam 5e-4 with cosine decay to 1e-8).

    Attributes:
      epochs, batch_size, lr, lr_final: Adam with a cosine decay from ``lr`` to ``lr_final`` over all steps.
      time_budget_s: stop after the epoch that exceeds this wall-clock budget (None: no limit).
      train_encoder: True (reference): the speech encoder is trained with the noise network. False: only
        the noise network is trained; the encoder keeps its clean-speech weights (without clean targets
        nothing stops a trained encoder from choosing latents whose speech variance covers the noise).
    """

    epochs: int = 300
    batch_size: int = 256
    lr: float = 5e-4
    lr_final: float = 1e-8
    time_budget_s: float | None = None
    train_encoder: bool = True

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError(f"need epochs, batch_size >= 1 and lr > 0: {self}")


class DDGMData(NamedTuple):
    """One utterance (or a batch with axes between time and frequency).

    Attributes:
      power: ``P = |X|^2``, time-major (T, [B,] F).
      mask: (T, [B]) valid frames (end padding), or None.
      frozen: the frozen speech parameters (decoder etc.); shared, not trained.
    """

    power: jax.Array
    mask: jax.Array | None
    frozen: Any


class AdaptState(NamedTuple):
    """``trainable = {"speech": encoder layers, "noise": noise-net params}``, Adam state, iteration."""

    trainable: Any
    opt_state: Any
    iteration: jax.Array


class AdaptInfo(NamedTuple):
    """Per-iteration diagnostics: loss (before the step), its IS and KL parts (per valid frame)."""

    loss: jax.Array
    recon: jax.Array
    kl: jax.Array


def _names(speech_model, config) -> tuple[str, ...]:
    return config.trainable if config.trainable is not None else ENCODER_LAYERS[model_family(speech_model.name)]


def split_speech_params(speech_model, params, config: DDGMConfig = DDGMConfig()):
    """``(encoder, frozen)``: the trainable top-level layers of ``params`` and the rest."""
    names = set(_names(speech_model, config))
    enc = {k: v for k, v in params.items() if k in names}
    if not enc:
        raise ValueError(f"none of the trainable layers {sorted(names)} is in the {speech_model.name} parameters")
    return enc, {k: v for k, v in params.items() if k not in names}


def merge_speech_params(encoder, frozen):
    return {**frozen, **encoder}


def _frame_mask(power, mask):
    return jnp.ones(power.shape[:-1], power.dtype) if mask is None else jnp.asarray(mask).astype(power.dtype)


def noise_floor(power, mask=None, quantile: float = 0.1):
    """Per-frequency ``quantile`` of ``power`` (T, F) over the valid frames (jit-safe), floored at 1e-10."""
    if power.ndim != 2:
        raise ValueError(f"noise_floor expects one utterance (T, F), got {power.shape}")
    m = _frame_mask(power, mask) > 0
    srt = jnp.sort(jnp.where(m[:, None], power, jnp.inf), axis=0)
    n = jnp.maximum(jnp.sum(m), 1)
    idx = jnp.floor(quantile * (n - 1)).astype(jnp.int32)
    return jnp.maximum(srt[idx], 1e-10)


def floor_offset(config: DDGMConfig) -> float:
    """Log offset added to the log noise floor: :math:`-\\log(-\\log(1 - q))` with ``floor_debias``, else 0."""
    q = config.floor_quantile
    if not config.floor_debias:
        return 0.0
    if not 0.0 < q < 1.0:
        raise ValueError(f"floor_debias needs 0 < floor_quantile < 1, got {q}")
    return -math.log(-math.log1p(-q))


def fresh_trainable(speech_model, noise_model, speech_params, key, config: DDGMConfig = DDGMConfig(),
                    power=None, mask=None):
    """U-NA starting point: the pretrained encoder layers and a fresh noise network.

    With ``config.noise_init == "floor"``, ``power`` (T, F) (and its ``mask``) set the head bias.
    """
    enc, _ = split_speech_params(speech_model, speech_params, config)
    bias = None
    if config.noise_init == "floor":
        if power is None:
            raise ValueError("noise_init='floor' needs the utterance power")
        bias = jnp.log(noise_floor(power, mask, config.floor_quantile)) + floor_offset(config)
    return {"speech": enc, "noise": noise_model.init(key, head_bias=bias)}


def recentre_noise(trainable, power, mask, train_floor, config: DDGMConfig = DDGMConfig()):
    """U-NDA start re-centred on the utterance: the noise head bias shifted per frequency by
    :math:`\\log \\text{floor}_{utt} - \\log \\text{floor}_{train}` (both the ``config.floor_quantile``
    quantile of P; ``train_floor`` (F,) the raw quantile over the U-ND training set), so that the U-ND
    noise model starts at this utterance's noise level instead of the training set's.
    ``power`` (T, F), ``mask`` (T,) or None; returns a new tree (the input is not modified).
    """
    shift = (jnp.log(noise_floor(power, mask, config.floor_quantile))
             - jnp.log(jnp.maximum(jnp.asarray(train_floor, power.dtype), 1e-10)))
    head = trainable["noise"]["head"]
    return {**trainable, "noise": {**trainable["noise"], "head": {**head, "bias": head["bias"] + shift}}}


def _speech_noise(z_key, config: DDGMConfig, power, z_dim):
    """Key or zeros (posterior-mean path) driving the speech encoder."""
    if config.wf_mode == "mean":
        return {"z": jnp.zeros(power.shape[:-1] + (z_dim,), power.dtype)}
    return z_key


def forward(speech_model, noise_model, trainable, data: DDGMData, noise):
    """``(v_s, log v_n, speech Outputs)`` for P (T, [B,] F); ``noise`` drives the encoder (key or dict)."""
    params = merge_speech_params(trainable["speech"], data.frozen)
    out = speech_model.forward(params, data.power, noise, mask=None if data.mask is None
                               else jnp.asarray(data.mask, bool))
    v_s = jnp.exp(out.x_out.logvar)
    log_vn = noise_model.apply(trainable["noise"], data.power, out.z, mask=None if data.mask is None
                               else jnp.asarray(data.mask, bool))
    return v_s, log_vn, out


def _moving_sum(x, axis: int, width: int):
    """Sum over a centred window of ``width`` along ``axis`` (zero outside the array)."""
    dims = [1] * x.ndim
    dims[axis] = width
    pad = [(0, 0)] * x.ndim
    pad[axis] = (width // 2, width // 2)
    return jax.lax.reduce_window(x, np.zeros((), x.dtype), jax.lax.add, dims, [1] * x.ndim, pad)


def noise_variance(config: DDGMConfig, log_vn, mask=None):
    """:math:`v_n` from the noise network's log-variance (T, [B,] F): ``exp``, then the moving averages of
    ``config.noise_smooth_frames`` (over valid frames only: padding neither contributes nor dilutes)
    and ``config.noise_smooth_bins`` (normalised at the band edges). Widths 1: plain ``exp``. These are the
    averages of :func:`vdvae_jax.enhance.smoothing_matrix`, computed as windowed sums (O(T F w), no T x T
    or F x F matrix; gradients flow through them)."""
    v = jnp.exp(log_vn)
    wt, wf = config.noise_smooth_frames, config.noise_smooth_bins
    if wt > 1:
        m = _frame_mask(v, mask)[..., None]
        v = _moving_sum(m * v, 0, wt) / jnp.maximum(_moving_sum(m, 0, wt), 1.0)
    if wf > 1:
        v = _moving_sum(v, v.ndim - 1, wf) / _moving_sum(jnp.ones(v.shape[-1:], v.dtype), 0, wf)
    return v


def profile_gains(config: DDGMConfig, power, v_s, v_n, mask=None):
    """Profiled gains ``(g, c)``: g (``power.shape[1:-1]``, one per utterance / segment) on the speech
    variance, c (``power.shape[1:]``, one per bin and utterance) on the noise variance, so that
    :math:`V = g\\, v_s + c\\, v_n`.

    Ones unless ``config.speech_gain == "utterance"`` / ``config.noise_gain != "none"``; otherwise
    ``config.gain_iters`` alternating multiplicative IS updates from ones (none increases the IS divergence):

    .. math::
        g \\leftarrow g \\sqrt{\\frac{\\sum_{t,f} m_t P v_s V^{-2}}{\\sum_{t,f} m_t v_s V^{-1}}}, \\qquad
        c_f \\leftarrow c_f \\sqrt{\\frac{\\sum_t m_t P v_n V^{-2}}{\\sum_t m_t v_n V^{-1}}}.

    No gradient flows through the gains (at the profiled optimum the gradient of the profiled loss is the
    partial gradient at fixed gains).
    """
    g = jnp.ones(power.shape[1:-1], power.dtype)
    c = jnp.ones(power.shape[1:], power.dtype)
    fit_g, fit_c = config.speech_gain == "utterance", config.noise_gain != "none"
    if not (fit_g or fit_c):
        return g, c
    P, v_s, v_n = (jax.lax.stop_gradient(a) for a in (power, v_s, v_n))
    m = _frame_mask(P, mask)[..., None]
    if config.noise_gain == "band" and config.noise_smooth_bins > 1:
        wf = config.noise_smooth_bins
        n_f = _moving_sum(jnp.ones(P.shape[-1:], P.dtype), 0, wf)
        band = lambda x: _moving_sum(x, x.ndim - 1, wf) / n_f       # noqa: E731  A_f x
        band_t = lambda x: _moving_sum(x / n_f, x.ndim - 1, wf)     # noqa: E731  A_f^T x (A_f not symmetric)
    else:
        band = band_t = lambda x: x                                  # noqa: E731

    def sums(num_var, V, axis):
        return jnp.sum(m * P * num_var / V**2, axis=axis), jnp.sum(m * num_var / V, axis=axis)

    def upd(gc, _):
        g, c = gc                          # c: the band parameters c' ("band"), else the gains
        noise = band(c) * v_n if fit_c else v_n
        if fit_g:
            num, den = sums(v_s, g[..., None] * v_s + noise, (0, -1))
            g = g * jnp.sqrt(num / jnp.maximum(den, 1e-30))
        if fit_c:
            num, den = sums(v_n, g[..., None] * v_s + noise, 0)
            c = c * jnp.sqrt(band_t(num) / jnp.maximum(band_t(den), 1e-30))
        return (g, c), None

    g, c = jax.lax.scan(upd, (g, c), None, length=config.gain_iters)[0]
    return g, band(c)


def speech_gain(config: DDGMConfig, power, v_s, v_n, mask=None):
    """The speech part g of :func:`profile_gains` (ones when ``config.speech_gain == "none"``)."""
    return profile_gains(config, power, v_s, v_n, mask)[0]


def _scaled_variances(config: DDGMConfig, power, v_s, log_vn, mask):
    """:math:`(g\\, v_s,\\ c\\, v_n)`: :func:`noise_variance` of the network's output, then the
    :func:`profile_gains` of both (the variances of the loss and of the Wiener filter)."""
    v_n = noise_variance(config, log_vn, mask)
    g, c = profile_gains(config, power, v_s, v_n, mask)
    return g[..., None] * v_s, c * v_n


def loss_fn(speech_model, noise_model, config: DDGMConfig, trainable, data: DDGMData, key):
    """The loss of the module docstring; returns ``(loss, (recon, kl))`` (both per valid frame)."""
    v_s, log_vn, out = forward(speech_model, noise_model, trainable, data, key)
    P = data.power
    m = _frame_mask(P, data.mask)
    v_s, v_n = _scaled_variances(config, P, v_s, log_vn, data.mask)
    V = v_s + v_n
    ratio = jnp.where(m[..., None] > 0, P / V, 1.0)
    n = jnp.maximum(jnp.sum(m), 1.0)
    recon = jnp.sum(m[..., None] * (ratio - jnp.log(ratio) - 1.0)) / n
    q = out.q
    kl_t = 0.5 * jnp.sum(q.mean**2 + jnp.exp(q.logvar) - q.logvar - 1.0, axis=-1)
    kl = jnp.sum(m * kl_t) / n
    return recon + config.beta * kl, (recon, kl)


def wiener_gain(speech_model, noise_model, config: DDGMConfig, trainable, data: DDGMData, key):
    """:math:`G = \\beta + (1 - \\beta)\\, g v_s / (g v_s + c\\, v_n)` (T, [B,] F), zero on masked frames,
    and the two variances (:math:`g v_s`, :math:`c\\, v_n`; :math:`v_n` = :func:`noise_variance`, g and c
    from :func:`profile_gains`), :math:`\\beta` = ``config.gain_floor`` (0 by default)."""
    noise = _speech_noise(key, config, data.power, speech_model.config.z_dim)
    v_s, log_vn, _ = forward(speech_model, noise_model, trainable, data, noise)
    v_s, v_n = _scaled_variances(config, data.power, v_s, log_vn, data.mask)
    G = v_s / (v_s + v_n)
    if config.gain_floor > 0:
        G = config.gain_floor + (1.0 - config.gain_floor) * G
    G = G * _frame_mask(data.power, data.mask)[..., None]
    return G, v_s, v_n


def _noise_only(grads):
    """Zero speech-encoder gradients: Adam then leaves the encoder exactly where it is."""
    return {**grads, "speech": jax.tree.map(jnp.zeros_like, grads["speech"])}


def _adam(config: DDGMConfig, lr):
    return optax.adam(lr, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)


def make_adaptation(speech_model, noise_model, config: DDGMConfig = DDGMConfig()) -> Algorithm:
    """Per-utterance optimisation of encoder + noise net (U-NA from :func:`fresh_trainable`, U-NDA from
    the U-ND parameters), decoder frozen.

    Returns:
      ``Algorithm(init, step)``: ``init(trainable) -> AdaptState`` (fresh Adam state);
      ``step(key, state, data: DDGMData) -> (AdaptState, AdaptInfo)``, one Adam step.
    """
    opt = _adam(config, config.lr)

    def init(trainable) -> AdaptState:
        trainable = jax.tree.map(jnp.asarray, trainable)
        return AdaptState(trainable, opt.init(trainable), jnp.zeros((), jnp.int32))

    def step(key, state: AdaptState, data: DDGMData):
        (loss, (recon, kl)), grads = jax.value_and_grad(
            lambda t: loss_fn(speech_model, noise_model, config, t, data, key), has_aux=True)(state.trainable)
        if not config.train_encoder:
            grads = _noise_only(grads)
        updates, opt_state = opt.update(grads, state.opt_state, state.trainable)
        return (AdaptState(optax.apply_updates(state.trainable, updates), opt_state, state.iteration + 1),
                AdaptInfo(loss, recon, kl))

    return Algorithm(init, step)


def _vmapped_utterances(fn):
    """vmap over the utterance axis 1 of time-major (T, B, F) power / (T, B) mask."""
    return jax.vmap(fn, in_axes=(0, 1, 1, 0), out_axes=(1, 0))


def adapt_batch(speech_model, noise_model, config: DDGMConfig, frozen, trainable, power, mask, key, *,
                shared_start: bool):
    """U-NA / U-NDA on a padded batch: each utterance gets its own copy of the parameters.

    Args:
      frozen: frozen speech params. trainable: the start; a single tree shared by all utterances
        (``shared_start=True``: U-NDA from U-ND, or U-NA with ``noise_init='random'`` and one init) or
        a tree with a leading utterance axis (``shared_start=False``).
      power: (T, B, F). mask: (T, B). key: typed key.

    Returns:
      ``(G (T, B, F), losses (B, n_iter))``; losses are per valid frame, before each step.
      Pure; wrap in ``jax.jit`` (static model/config/shared_start).
    """
    alg = make_adaptation(speech_model, noise_model, config)
    n_b = power.shape[1]
    keys = jax.random.split(key, n_b)

    def one(t0, P, m, k):
        data = DDGMData(P, m, frozen)
        k_run, k_wf = jax.random.split(k)
        state = alg.init(t0)
        if config.n_iter > 0:
            state, info = run(alg, k_run, state, data, config.n_iter)
            losses = info.loss
        else:
            losses = jnp.zeros((0,), P.dtype)
        G, _, _ = wiener_gain(speech_model, noise_model, config, state.trainable, data, k_wf)
        return G, losses

    if shared_start:
        trainable = jax.tree.map(lambda a: jnp.broadcast_to(a, (n_b,) + a.shape), trainable)
    return _vmapped_utterances(one)(trainable, power, mask, keys)


def apply_batch(speech_model, noise_model, config: DDGMConfig, frozen, trainable, power, mask, key):
    """U-ND test time: one forward pass of shared parameters on a batch (T, B, F); returns G (T, B, F)."""
    G, _, _ = wiener_gain(speech_model, noise_model, config, trainable, DDGMData(power, mask, frozen), key)
    return G


def train_nd(speech_model, noise_model, config: DDGMConfig, nd: NDConfig, frozen, trainable, segments,
             key, *, progress: bool = True, log=print):
    """U-ND: minimise the DDGM loss over a noisy training set (no clean targets).

    Args:
      frozen, trainable: frozen speech params and the starting trainable tree (e.g.
        :func:`fresh_trainable` with a floor estimated on the training set).
      segments: (N, T, F) noisy power segments (batch-major, as stored); batches are taken in a
        seeded permutation each epoch, the last incomplete batch dropped.
      key: typed key.

    Returns:
      ``(trainable, history)``; history: ``[{"epoch", "loss", "recon", "kl", "seconds"}]``.
      One jitted epoch = ``lax.scan`` over its batches.
    """
    segments = np.asarray(segments, np.float32)
    n = segments.shape[0]
    bs = min(nd.batch_size, n)
    n_batches = n // bs
    if n_batches < 1:
        raise ValueError(f"need at least one batch of segments, got {n}")
    total = nd.epochs * n_batches
    sched = optax.cosine_decay_schedule(nd.lr, total, alpha=nd.lr_final / nd.lr)
    opt = _adam(config, sched)
    opt_state = opt.init(trainable)

    @jax.jit
    def epoch(trainable, opt_state, batches, k):
        def body(carry, inputs):
            t, s = carry
            P, kb = inputs
            data = DDGMData(jnp.swapaxes(P, 0, 1), None, frozen)  # (T, B, F)
            (loss, aux), grads = jax.value_and_grad(
                lambda tt: loss_fn(speech_model, noise_model, config, tt, data, kb), has_aux=True)(t)
            if not nd.train_encoder:
                grads = _noise_only(grads)
            updates, s = opt.update(grads, s, t)
            return (optax.apply_updates(t, updates), s), (loss,) + aux

        keys = jax.random.split(k, batches.shape[0])
        (trainable, opt_state), (loss, recon, kl) = jax.lax.scan(body, (trainable, opt_state), (batches, keys))
        return trainable, opt_state, jnp.mean(loss), jnp.mean(recon), jnp.mean(kl)

    history = []
    t0 = time.perf_counter()
    rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2**31 - 1)))
    for e in range(nd.epochs):
        perm = rng.permutation(n)[: n_batches * bs]
        batches = jnp.asarray(segments[perm].reshape(n_batches, bs, *segments.shape[1:]))
        trainable, opt_state, loss, recon, kl = epoch(trainable, opt_state, batches, jax.random.fold_in(key, e))
        rec = {"epoch": e + 1, "loss": float(loss), "recon": float(recon), "kl": float(kl),
               "seconds": time.perf_counter() - t0}
        if not math.isfinite(rec["loss"]):
            raise FloatingPointError(f"U-ND training diverged at epoch {e + 1}: {rec}")
        history.append(rec)
        if progress:
            log(f"  U-ND epoch {e + 1}/{nd.epochs}: loss {rec['loss']:.3f} (IS {rec['recon']:.3f}, "
                f"KL {rec['kl']:.3f}) {rec['seconds']:.0f} s")
        if nd.time_budget_s is not None and rec["seconds"] > nd.time_budget_s:
            break
    return trainable, history
