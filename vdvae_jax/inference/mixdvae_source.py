"""MixDVAE VEM: the per-source E-S/E-Z update (one call of the reference's VEM-time SRNN).

Given the assignment posteriors :math:`\\eta`, MixDVAE's sources are independent, so everything here is
written for **one source** and one time-major sequence (batch axes allowed between time and features, as
in :mod:`vdvae_jax.models.base`); ``jax.vmap`` over sources gives the multi-source step (MOT: shared
parameters; SC-ASS: parameters stacked over sources). All functions are pure and scan over time.

**E-Z.** The DVAE encoder runs on the current point estimate of the source (MOT: the previous posterior
means :math:`m^{(i-1)}`, read exactly as the pre-training model reads x; SC-ASS: the previous sampled
power) and draws one reparameterised :math:`\\tilde z` (noise ``noise["z"]``).

**E-S** (sequential in t, inside the decoder recursion; :math:`h^{dec}` is the decoder's LSTM chain):

* MOT (``mot_source_update``), with diagonal :math:`\\Phi_k` and decoder
  :math:`(\\hat\\mu_t, \\log\\hat\\sigma^2_t) = \\mathrm{dec}(h^{dec}_t, \\tilde z_t)`:

  .. math::
      h^{dec}_0 = \\mathrm{LSTM}(0, \\phi(o_0)),\\ \\hat\\mu_0 = o_0,\\ \\hat\\sigma^2_0 = 10^{-5}; \\qquad
      h^{dec}_t = \\mathrm{LSTM}(h^{dec}_{t-1}, \\phi(m_{t-1}))\\ (t \\ge 1),

  .. math::
      \\Sigma_t = \\Big(\\sum_k \\eta_{tk} \\Phi_k^{-1} + \\mathrm{diag}(\\hat\\sigma^2_t)^{-1}\\Big)^{-1},
      \\qquad m_t = \\Sigma_t \\Big(\\sum_k \\eta_{tk} \\Phi_k^{-1} o_{tk} + \\hat\\mu_t / \\hat\\sigma^2_t\\Big),

  elementwise because everything is diagonal. A missing observation (``mask`` False, or a NaN in
  ``obs``/``eta``) has weight 0 and never lets a NaN through; with every observation missing the step
  is a pure prediction :math:`m_t = \\hat\\mu_t`.

* SC-ASS (``scass_source_update``), per time-frequency bin with mixture :math:`x`,
  :math:`v_x = 0.03 |x|^2` and decoder variance :math:`v_{\\theta,t} = \\exp \\mathrm{dec}(h^{dec}_t, \\tilde z_t)`:

  .. math::
      v_{\\phi} = \\big(\\eta / v_x + 1 / v_\\theta\\big)^{-1}, \\qquad \\mu = v_\\phi \\, \\eta \\, x / v_x, \\qquad
      \\tilde s = \\mu + \\sqrt{v_\\phi / 2}\\,(u^{re} + i\\, u^{im}),

  with :math:`h^{dec}_0 = \\mathrm{LSTM}(0, \\phi(P_0))` (first frame of the encoder input) and
  :math:`h^{dec}_t = \\mathrm{LSTM}(h^{dec}_{t-1}, \\phi(|\\tilde s_{t-1}|^2))` (stop-gradient). The
  reference draws :math:`u` from U[0, 1) (``complex_noise="uniform"``, a bug that biases
  :math:`\\tilde s`); ``complex_noise="gaussian"`` draws N(0, 1), the intended circular complex sample.

The prior :math:`p(z_t | h^{dec}_t, \\tilde z_{t-1})` reads the decoder chain and enters only the loss.
Losses per frame (/(T*B)): MOT ``recon = sum(logvar_dec + (m - mean_dec)^2 / exp(logvar_dec))``,
SC-ASS ``recon = IS(|s|^2, v_theta)``; ``kl`` = KL_ref as configured; ``loss = recon + beta * kl``.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vdvae_jax.distributions import Gaussian, itakura_saito, kl_gaussian, observation_nll
from vdvae_jax.models.base import drawn_steps, network_input, noise_pair
from vdvae_jax.models.srnn import srnn_encode_from_h
from vdvae_jax.models.srnn_mixdvae import (decoder_from_h, encoder_for, h_input_gates, h_teacher_forced,
                                           prior_from_h)
from vdvae_jax.nn.layers import (concat_matmul, frame_inputs, lstm_step, mlp_parts, pad_columns, unrolled_matmul,
                                 zero_carry)

__all__ = [
    "MOTSourceUpdate",
    "SCASSSourceUpdate",
    "COMPLEX_NOISE",
    "mot_source_update",
    "observation_weights",
    "scass_source_update",
    "scass_vem_initialization",
]

COMPLEX_NOISE = ("uniform", "gaussian")
COMPLEX_NOISE_NAMES = ("u_re", "u_im")   # the noise dict's entries (and the key's sub-stream) of u


class MOTSourceUpdate(NamedTuple):
    """One MOT E-S/E-Z call for one source, time-major.

    Attributes:
      mean, var: posterior :math:`q(s_t) = \\mathcal N(m_t, \\mathrm{diag}\\,\\Sigma_t)`, (T, [B,] 4).
      dec: the DVAE decoder Gaussian (t = 0 pinned to ``frame0`` / ``log(t0_var)``).
      z, q, p: sampled latents, encoder posterior, prior on the decoder chain.
      h_dec: decoder LSTM outputs (T, [B,] H).
      recon, kl, loss: per-frame loss terms.
    """

    mean: jax.Array
    var: jax.Array
    dec: Gaussian
    z: jax.Array
    q: Gaussian
    p: Gaussian
    h_dec: jax.Array
    recon: jax.Array
    kl: jax.Array
    loss: jax.Array


class SCASSSourceUpdate(NamedTuple):
    """One SC-ASS E-S/E-Z call for one source, time-major (T, [B,] F) unless stated.

    Attributes:
      v_theta_s: DVAE source variance; v_phi, mu: posterior variance / complex mean of the source STFT;
      s, s_power: complex source sample and its power (the next encoder input);
      z, q, p, h_dec: latents, posterior, prior, decoder LSTM outputs; recon, kl, loss: per-frame terms;
      h_enc_next: (T, [B,] H) the encoder's h chain on ``s_power`` (the next E-Z's ``h_enc``), when asked
        for with ``next_h_enc=True``; else None.
    """

    v_theta_s: jax.Array
    v_phi: jax.Array
    mu: jax.Array
    s: jax.Array
    s_power: jax.Array
    z: jax.Array
    q: Gaussian
    p: Gaussian
    h_dec: jax.Array
    recon: jax.Array
    kl: jax.Array
    loss: jax.Array
    h_enc_next: jax.Array | None


def observation_weights(eta, obs, mask=None):
    """NaN-safe ``(weights, obs)``: weight 0 and observation 0 where ``mask`` is False or data is NaN.

    Args:
      eta: (T, [B,] K) assignment probabilities of the K observations to this source.
      obs: (T, [B,] K, D) observations.
      mask: optional (T, [B,] K) bool, True where an observation exists.
    """
    valid = jnp.isfinite(eta) & jnp.all(jnp.isfinite(obs), axis=-1)
    if mask is not None:
        valid = valid & mask
    return jnp.where(valid, eta, 0.0), jnp.where(valid[..., None], obs, 0.0)


def mot_source_update(params, config, x_init, eta, phi_inv, obs, frame0, noise, *, mask=None,
                      t0_var: float = 1e-5, beta: float = 1.0, unrolled: bool = True) -> MOTSourceUpdate:
    """MOT E-Z + E-S for one source (the reference's ``forward(x_init, Eta, Phi_inv, obs, frame0)``).

    Args:
      params, config: the MOT SRNN (:class:`~vdvae_jax.models.srnn_mixdvae.MOTSRNNConfig`).
      x_init: (T, [B,] 4) encoder input, the previous posterior means of this source.
      eta: (T, [B,] K) assignment probabilities to this source.
      phi_inv: (T, [B,] K, 4) diagonal of the inverse observation covariances :math:`\\Phi_k^{-1}`.
      obs: (T, [B,] K, 4) observations :math:`o_{tk}`.
      frame0: ([B,] 4) pinned start (the reference uses detection n of frame 0 for source n).
      noise: key or ``{"z": (T, [B,] 4)}``.
      mask: optional (T, [B,] K) bool (False = missing detection); NaNs in ``obs``/``eta`` are masked too.
      t0_var: decoder variance pinned at t = 0 (1e-5 in the reference).
      beta: KL weight of ``loss``.
      unrolled: tiny products as :func:`~vdvae_jax.nn.layers.unrolled_matmul` (fast forward passes);
        ``False``: plain dots (for gradients, e.g. fine-tuning: the unrolled graph compiles slowly).

    The encoder (teacher-forced LSTM on ``x_init``, causal z chain) and the decoder recursion of E-S are
    causal in t and read nothing of each other's future, so they run as **one** ``lax.scan``: the two
    LSTM chains (same weights) step together as a stacked pair, and the noise is drawn before it.
    """
    c = config
    w, o = observation_weights(eta, obs, mask)
    lam_obs = jnp.sum(w[..., None] * phi_inv, axis=-2)          # (T, [B,] 4) sum_k eta_k Phi_k^-1
    eta_obs = jnp.sum(w[..., None] * phi_inv * o, axis=-2)      # sum_k eta_k Phi_k^-1 o_k
    batch = x_init.shape[1:-1]
    length = x_init.shape[0]
    frame0 = jnp.broadcast_to(frame0, batch + (c.x_dim,)).astype(x_init.dtype)
    eps_z = drawn_steps(noise, "z", length, batch + (c.z_dim,))
    mm = unrolled_matmul if unrolled else concat_matmul
    m, var, mean, logvar, z, q, h_dec = _mot_chains(mm, params, c, x_init, lam_obs, eta_obs, frame0, eps_z,
                                                    math.log(t0_var))
    dec = Gaussian(mean, logvar)
    p = _mot_prior(mm, params, c, z, h_dec)
    steps = math.prod(x_init.shape[:-1])
    recon = observation_nll("gaussian", m, dec, reference=c.gaussian_reference_nll) / steps
    kl = kl_gaussian(q, p, mode=c.kl_mode, var_eps=c.kl_var_eps) / steps
    return MOTSourceUpdate(m, var, dec, z, q, p, h_dec, recon, kl, recon + beta * kl)


def _sigmoid(x):
    """:math:`\\sigma(x) = \\tfrac12(1 + \\tanh(x/2))`: one tanh, cheaper on XLA:CPU than the logistic op."""
    return 0.5 * jnp.tanh(0.5 * x) + 0.5


def _small_heads(mm, params, prefix_mean, prefix_logvar, parts):
    """Two dense heads (mean, log-variance) as one unrolled product of their concatenated kernels."""
    kernel = jnp.concatenate([params[prefix_mean]["kernel"], params[prefix_logvar]["kernel"]], axis=-1)
    bias = jnp.concatenate([params[prefix_mean]["bias"], params[prefix_logvar]["bias"]], axis=-1)
    # materialised once: otherwise XLA recomputes the product inside each consumer's fusion
    out = jax.lax.optimization_barrier(mm(parts, kernel) + bias)
    half = out.shape[-1] // 2
    return out[..., :half], out[..., half:]


def _mot_prior(mm, params, c, z, h_dec):
    """:func:`~vdvae_jax.models.srnn_mixdvae.prior_from_h` for the MOT SRNN with unrolled products."""
    z_prev = jnp.concatenate([jnp.zeros_like(z[:1]), z[:-1]], axis=0)
    u = mlp_parts(params.get("mlp_hz_z"), [h_dec, z_prev], c.dense_hz_z, c.activation, matmul=mm)
    return Gaussian(*_small_heads(mm, params, "prior_mean", "prior_logvar", u))


def _mot_chains(mm, params, c, x_init, lam_obs, eta_obs, frame0, eps_z, t0_logvar):
    """One scan over t of E-Z and E-S (see :func:`mot_source_update`); time-major outputs
    ``(m, var, dec_mean, dec_logvar, z, q, h_dec)``.

    Per step, with the encoder chain :math:`h^{enc}_t = \\mathrm{LSTM}(h^{enc}_{t-1}, \\phi(x_{t-1}))` and
    the decoder chain :math:`h^{dec}_t = \\mathrm{LSTM}(h^{dec}_{t-1}, \\phi(m_{t-1}))` (:math:`x_{-1} = 0`,
    :math:`m_{-1}` = ``frame0``): :math:`\\tilde z_t \\sim q(z_t | h^{enc}_t, x_t, \\tilde z_{t-1})`, then the
    decoder at :math:`(h^{dec}_t, \\tilde z_t)` and the closed-form E-S update.

    The MOT SRNN's matrices are tiny (4-16 rows): inside the step every product is an
    :func:`~vdvae_jax.nn.layers.unrolled_matmul`, so XLA fuses each layer with its activation.
    """
    p_h = params["rnn_h"]["forward"]
    H = c.dim_rnn_h

    def layers(name, widths, parts):
        return mlp_parts(params.get(name), parts, widths, c.activation, matmul=mm)

    heads = functools.partial(_small_heads, mm, params)

    def x_to_gates(x):                   # lstm_project(phi(x)) for one frame
        u = layers("mlp_x_h", c.dense_x_h, [network_input(c, x)])
        return mm(u, p_h["kernel_ih"]) + p_h["bias"]

    x_prev = jnp.concatenate([jnp.zeros_like(x_init[:1]), x_init[:-1]], axis=0)
    x_net = network_input(c, x_init)
    first = jnp.arange(x_init.shape[0]) == 0

    def step(carry, inputs):
        (h2, c2), z_prev, m_prev = carry        # h2, c2: (2, [B,] H) = [encoder chain, decoder chain]
        x_prev_t, x_t, lam_t, eo_t, first_t, eps_t = inputs
        (h2, c2), _ = lstm_step(p_h, (h2, c2), x_to_gates(jnp.stack([x_prev_t, m_prev])), matmul=mm,
                                sigmoid=_sigmoid)
        h_enc, h_dec = h2[0], h2[1]
        q_mean, q_logvar = heads("inf_mean", "inf_logvar", layers("mlp_gz_z", c.dense_gz_z, [h_enc, x_t, z_prev]))
        z_t = q_mean + eps_t * jnp.exp(0.5 * q_logvar)
        dec_mean, dec_logvar = heads("gen_mean", "gen_logvar", layers("mlp_hz_x", c.dense_hz_x, [h_dec, z_t]))
        mean = jnp.where(first_t, frame0, dec_mean)
        logvar = jnp.where(first_t, t0_logvar, dec_logvar)
        prec_dec = jnp.exp(-logvar)
        var = 1.0 / (lam_t + prec_dec)
        m = var * (eo_t + mean * prec_dec)
        return ((h2, c2), z_t, m), (m, var, mean, logvar, z_t, q_mean, q_logvar, h_dec)

    zeros = zero_carry((2,) + frame0.shape[:-1], H, frame0.dtype)
    carry0 = (zeros, jnp.zeros(frame0.shape[:-1] + (c.z_dim,), frame0.dtype), frame0)
    _, (m, var, mean, logvar, z, q_mean, q_logvar, h_dec) = jax.lax.scan(
        step, carry0, (x_prev, x_net, lam_obs, eta_obs, first, eps_z))
    return m, var, mean, logvar, z, Gaussian(q_mean, q_logvar), h_dec


def scass_vem_initialization(params, config, mix_power, noise) -> jax.Array:
    """SC-ASS initial source power: the teacher-forced reconstruction of the mixture power.

    The encoder reads ``mix_power`` (T, [B,] F), draws :math:`\\tilde z` (``noise["z"]``), and the decoder
    reads :math:`[h^{inf}_t, \\tilde z_t]` with :math:`h^{inf}` built from the previous mixture frames;
    returns :math:`\\exp(\\text{decoder log-variance})`, (T, [B,] F).
    """
    z, _, h = encoder_for(config)(params, mix_power, noise)
    return jnp.exp(decoder_from_h(params, config, z, h).logvar)


def _complex_noise(noise, length, shape, kind):
    """``(u_re, u_im)``, each (length, *shape), drawn before the scan in one Threefry pass
    (:func:`~vdvae_jax.models.base.noise_pair`; ``kind`` picks the law) or taken from the dict."""
    return noise_pair(noise, COMPLEX_NOISE_NAMES, (length,) + shape, complex_noise_law(kind))


def complex_noise_law(kind: str) -> str:
    """The law of u for ``complex_noise`` = ``kind``: ``"uniform"`` (reference) or ``"normal"``."""
    if kind not in COMPLEX_NOISE:
        raise ValueError(f"complex_noise must be one of {COMPLEX_NOISE}, got {kind!r}")
    return "uniform" if kind == "uniform" else "normal"


def scass_source_update(params, config, s_power, eta, v_theta_x, mix, noise, *,
                        complex_noise: str = "uniform", first_input=None, beta: float = 0.01,
                        h_enc=None, next_h_enc: bool = False, u=None) -> SCASSSourceUpdate:
    """SC-ASS E-Z + E-S for one source (the reference's ``forward(s_power, Eta, v_theta_x, mix_stft)``).

    Args:
      params, config: this source's SRNN (:class:`~vdvae_jax.models.srnn_mixdvae.SCASSSRNNConfig`).
      s_power: (T, [B,] F) encoder input: the previous sampled source power (``s_power_init`` at i = 0).
      eta: assignment probability of each bin to this source, broadcastable to (T, [B,] F).
      v_theta_x: (T, [B,] F) observation variance (``0.03 * |mix|^2``).
      mix: (T, [B,] F) complex mixture STFT.
      noise: key or ``{"z": (T, [B,] 16), "u_re": (T, [B,] F), "u_im": (T, [B,] F)}``.
      complex_noise: ``"uniform"`` (reference: u ~ U[0, 1)) or ``"gaussian"`` (u ~ N(0, 1)). With a key,
        the draws follow this option; given arrays are used as they are.
      first_input: ([B,] F) first decoder-LSTM input; default ``s_power[0]`` as in the reference.
      beta: KL weight of ``loss`` (0.01 in the SC-ASS configs).
      h_enc: (T, [B,] H) the encoder's h chain on ``s_power``, when the caller has it: the ``h_enc_next``
        of the previous update with the same weights. Default: computed from ``s_power``.
      next_h_enc: also step the next E-Z's h chain, on the new sample, inside the recursion (see below).
      u: ``(u_re, u_im)``, each (T, [B,] F), or the complex ``u_re + i u_im``: the noise when the caller
        draws it (e.g. :func:`~vdvae_jax.models.base.noise_pair_stacked` for all sources at once); default:
        from ``noise`` as ``complex_noise`` says.

    The recursion carries only what the next step reads and emits :math:`v_\\theta`, the sampled power
    and :math:`h^{dec}`; :math:`v_\\phi`, :math:`\\mu` and :math:`\\tilde s` are elementwise in those and
    are recomputed after the scan with the step's own formulas (same values).

    The next E-Z reads the new sample through its h chain, :math:`h_t = \\mathrm{LSTM}(h_{t-1},
    \\phi(P_{t-1}))` with :math:`P_{-1} = 0`: the decoder chain's own inputs for t >= 1. With
    ``next_h_enc`` that chain steps beside the decoder chain (same weights, its own recurrent product;
    input gates of 0 at t = 0) and is returned as ``h_enc_next``, so the next call, given it as
    ``h_enc``, runs no h chain of its own.
    """
    c = config
    if h_enc is None:
        h_enc = h_teacher_forced(params, c, s_power)                            # E-Z
    z, q, _ = srnn_encode_from_h(params, c, s_power, h_enc, noise)
    length = s_power.shape[0]
    shape = s_power.shape[1:]
    if u is None:
        u = _complex_noise(noise, length, shape, complex_noise)
    u = jax.lax.complex(*u) if isinstance(u, tuple) else u    # the scan reads its parts frame by frame
    gain_x = jnp.broadcast_to(eta, s_power.shape) / v_theta_x                 # eta / v_x
    mix_re, mix_im = jnp.real(mix), jnp.imag(mix)
    x0 = s_power[0] if first_input is None else first_input
    p_h = params["rnn_h"]["forward"]

    def posterior(v_theta, gain_x, mix_re, mix_im, u):
        """E-S in closed form and the sample: ``(v_phi, mu_re, mu_im, s_re, s_im)``."""
        v_phi = 1.0 / (gain_x + 1.0 / v_theta)
        w = v_phi * gain_x
        scale = jnp.sqrt(v_phi / 2.0)
        mu_re, mu_im = w * mix_re, w * mix_im
        return v_phi, mu_re, mu_im, mu_re + scale * jnp.real(u), mu_im + scale * jnp.imag(u)

    zero_gates = h_input_gates(params, c, jnp.zeros_like(x0))                  # the next chain's input at t = 0
    width = s_power.shape[-1]
    padded = {**params, "gen_logvar": pad_columns(params["gen_logvar"])}       # same values, faster product

    def step(carry, inputs):
        state, state_enc, x_in = carry
        first_t, z_t, *elementwise = inputs
        gates_t = h_input_gates(params, c, x_in)
        state, h_t = lstm_step(p_h, state, gates_t)
        if next_h_enc:   # two (B, H) products ran faster than one (2B, H) product of the stacked chains
            # (materialised: fused into the LSTM cell, the select slows it as a scanned frame would)
            gates_enc = frame_inputs(jnp.where(first_t, zero_gates, gates_t))
            state_enc, h_enc_t = lstm_step(p_h, state_enc, gates_enc)
        v_theta = jnp.exp(decoder_from_h(padded, c, z_t, h_t).logvar[..., :width])
        _, _, _, re, im = posterior(v_theta, *elementwise)
        power = re * re + im * im
        outputs = (v_theta, power, h_t) + ((h_enc_t,) if next_h_enc else ())
        return (state, state_enc, jax.lax.stop_gradient(power)), outputs

    zeros = zero_carry(shape[:-1], c.dim_rnn_h, x0.dtype)
    first = jnp.arange(length) == 0
    _, (v_theta, power, h_dec, *h_enc_next) = jax.lax.scan(
        step, (zeros, zeros if next_h_enc else None, x0), (first, z, gain_x, mix_re, mix_im, u))
    h_enc_next = h_enc_next[0] if next_h_enc else None
    v_phi, mu_re, mu_im, s_re, s_im = posterior(v_theta, gain_x, mix_re, mix_im, u)
    p = prior_from_h(params, c, z, h_dec)
    steps = math.prod(s_power.shape[:-1])
    recon = itakura_saito(power, v_theta, c.is_eps) / steps   # observation_nll("is") without its log/exp trip
    kl = kl_gaussian(q, p, mode=c.kl_mode, var_eps=c.kl_var_eps) / steps
    return SCASSSourceUpdate(v_theta, v_phi, jax.lax.complex(mu_re, mu_im), jax.lax.complex(s_re, s_im), power,
                             z, q, p, h_dec, recon, kl, recon + beta * kl, h_enc_next)
