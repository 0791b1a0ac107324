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

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vdvae_jax.distributions import Gaussian, kl_gaussian, observation_nll
from vdvae_jax.models.base import draw_step, network_input, step_noise
from vdvae_jax.models.srnn_mixdvae import decoder_from_h, encoder_for, prior_from_h
from vdvae_jax.nn.layers import lstm_project, lstm_step, mlp, zero_carry

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
      z, q, p, h_dec: latents, posterior, prior, decoder LSTM outputs; recon, kl, loss: per-frame terms.
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


def _lstm_input_step(params, config, state, x_in):
    p_h = params["rnn_h"]["forward"]
    b = mlp(params.get("mlp_x_h"), network_input(config, x_in), config.dense_x_h, config.activation)
    return lstm_step(p_h, state, lstm_project(p_h, b))


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
                      t0_var: float = 1e-5, beta: float = 1.0) -> MOTSourceUpdate:
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
    """
    c = config
    encode = encoder_for(c)
    z, q, _ = encode(params, x_init, noise)
    w, o = observation_weights(eta, obs, mask)
    lam_obs = jnp.sum(w[..., None] * phi_inv, axis=-2)          # (T, [B,] 4) sum_k eta_k Phi_k^-1
    eta_obs = jnp.sum(w[..., None] * phi_inv * o, axis=-2)      # sum_k eta_k Phi_k^-1 o_k
    batch = x_init.shape[1:-1]
    first = jnp.arange(x_init.shape[0]) == 0
    frame0 = jnp.broadcast_to(frame0, batch + (c.x_dim,))
    t0_logvar = math.log(t0_var)

    def step(carry, inputs):
        state, x_in = carry
        z_t, lam_t, eo_t, first_t = inputs
        state, h_t = _lstm_input_step(params, c, state, x_in)
        dec = decoder_from_h(params, c, z_t, h_t)
        mean = jnp.where(first_t, frame0, dec.mean)
        logvar = jnp.where(first_t, jnp.full_like(dec.logvar, t0_logvar), dec.logvar)
        prec_dec = 1.0 / jnp.exp(logvar)
        var = 1.0 / (lam_t + prec_dec)
        m = var * (eo_t + mean * prec_dec)
        return (state, m), (m, var, mean, logvar, h_t)

    carry0 = (zero_carry(batch, c.dim_rnn_h, frame0.dtype), frame0)
    _, (m, var, mean, logvar, h_dec) = jax.lax.scan(step, carry0, (z, lam_obs, eta_obs, first))
    dec = Gaussian(mean, logvar)
    p = prior_from_h(params, c, z, h_dec)
    steps = math.prod(x_init.shape[:-1])
    recon = observation_nll("gaussian", m, dec, reference=c.gaussian_reference_nll) / steps
    kl = kl_gaussian(q, p, mode=c.kl_mode, var_eps=c.kl_var_eps) / steps
    return MOTSourceUpdate(m, var, dec, z, q, p, h_dec, recon, kl, recon + beta * kl)


def scass_vem_initialization(params, config, mix_power, noise) -> jax.Array:
    """SC-ASS initial source power: the teacher-forced reconstruction of the mixture power.

    The encoder reads ``mix_power`` (T, [B,] F), draws :math:`\\tilde z` (``noise["z"]``), and the decoder
    reads :math:`[h^{inf}_t, \\tilde z_t]` with :math:`h^{inf}` built from the previous mixture frames;
    returns :math:`\\exp(\\text{decoder log-variance})`, (T, [B,] F).
    """
    z, _, h = encoder_for(config)(params, mix_power, noise)
    return jnp.exp(decoder_from_h(params, config, z, h).logvar)


def _complex_noise(noise, name, length, shape, kind):
    if kind not in COMPLEX_NOISE:
        raise ValueError(f"complex_noise must be one of {COMPLEX_NOISE}, got {kind!r}")
    return step_noise(noise, name, length), ("uniform" if kind == "uniform" else "normal")


def scass_source_update(params, config, s_power, eta, v_theta_x, mix, noise, *,
                        complex_noise: str = "uniform", first_input=None,
                        beta: float = 0.01) -> SCASSSourceUpdate:
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
    """
    c = config
    z, q, _ = encoder_for(c)(params, s_power, noise)
    length = s_power.shape[0]
    shape = s_power.shape[1:]
    u_re, kind = _complex_noise(noise, "u_re", length, shape, complex_noise)
    u_im, _ = _complex_noise(noise, "u_im", length, shape, complex_noise)
    eta = jnp.broadcast_to(eta, s_power.shape)
    x0 = s_power[0] if first_input is None else first_input

    def step(carry, inputs):
        state, x_in = carry
        z_t, eta_t, vx_t, mix_t, ure_t, uim_t = inputs
        state, h_t = _lstm_input_step(params, c, state, x_in)
        v_theta = jnp.exp(decoder_from_h(params, c, z_t, h_t).logvar)
        v_phi = 1.0 / (eta_t / vx_t + 1.0 / v_theta)
        mu = (v_phi * eta_t / vx_t) * mix_t
        scale = jnp.sqrt(v_phi / 2.0)
        re = jnp.real(mu) + scale * draw_step(ure_t, shape, kind)
        im = jnp.imag(mu) + scale * draw_step(uim_t, shape, kind)
        power = re * re + im * im
        return (state, jax.lax.stop_gradient(power)), (v_theta, v_phi, mu, jax.lax.complex(re, im), power, h_t)

    carry0 = (zero_carry(shape[:-1], c.dim_rnn_h, x0.dtype), x0)
    _, (v_theta, v_phi, mu, s, power, h_dec) = jax.lax.scan(
        step, carry0, (z, eta, v_theta_x, mix, u_re, u_im))
    p = prior_from_h(params, c, z, h_dec)
    steps = math.prod(s_power.shape[:-1])
    recon = observation_nll("is", power, Gaussian(jnp.zeros_like(v_theta), jnp.log(v_theta)),
                            is_eps=c.is_eps) / steps
    kl = kl_gaussian(q, p, mode=c.kl_mode, var_eps=c.kl_var_eps) / steps
    return SCASSSourceUpdate(v_theta, v_phi, mu, s, power, z, q, p, h_dec, recon, kl, recon + beta * kl)
