"""RVAE, the recurrent VAE of Leglaive et al., causal and non-causal.

Generative model (standard-normal prior, recurrent decoder):

.. math::
    z_t \\sim \\mathcal N(0, I), \\qquad
    p(x_t | z_{1:t}) \\text{ (causal, forward LSTM)} \\quad\\text{or}\\quad p(x_t | z_{1:T})
    \\text{ (non-causal, bidirectional LSTM)}.

Inference, sampled sequentially:

.. math::
    q(z_t | z_{1:t-1}, x_{t:T}) \\text{ (causal)} \\quad\\text{or}\\quad q(z_t | z_{1:t-1}, x_{1:T})
    \\text{ (non-causal)},

with :math:`g^x_t` an anti-causal LSTM over x (plus a causal one when non-causal), :math:`g^z_t` an LSTM
stepped on the sampled :math:`z_{t-1}` (:math:`z_0 = 0`) and Gaussian heads on
:math:`[g^x_t, g^z_t]`. Time directions follow the reference: the encoder feature is
``[anti-causal, causal]``, the non-causal decoder feature ``[causal, anti-causal]``.

Parameter names: ``rnn_g_x`` (``backward`` [+ ``forward``]), ``rnn_g_z/forward``, ``inf_mean``,
``inf_logvar``, ``rnn_h`` (``forward`` [+ ``backward``]), ``gen_logvar``; optional MLP blocks
``mlp_x_gx``, ``mlp_z_gz``, ``mlp_g_z``, ``mlp_z_h``, ``mlp_h_x`` exist only when their widths are set.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vdvae_jax.distributions import Gaussian, standard_normal_like
from vdvae_jax.models.base import DVAE, DVAEConfig, Outputs, draw_step, network_input, step_noise
from vdvae_jax.models.heads import decoder_head, gaussian_head, init_decoder_head, init_gaussian_head
from vdvae_jax.nn.layers import (MLP, _lstm_cell, _lstm_cell_bwd, _outer_over_frames, lstm_init, lstm_project,
                                 lstm_scan, lstm_scan_residuals, lstm_step, mlp, mlp_out_dim, zero_carry)

__all__ = ["RVAEConfig", "make_rvae"]


@dataclasses.dataclass(frozen=True)
class RVAEConfig(DVAEConfig):
    """RVAE sizes (speech defaults: every MLP block empty, LSTMs of 128).

    Attributes:
      causal: causal generative model (forward LSTM decoder, backward-only encoder RNN) if True,
        non-causal (bidirectional decoder and encoder RNNs) if False.
    """

    causal: bool = False
    dense_x_gx: tuple[int, ...] = ()
    dim_rnn_g_x: int = 128
    dense_z_gz: tuple[int, ...] = ()
    dim_rnn_g_z: int = 128
    dense_g_z: tuple[int, ...] = ()
    dense_z_h: tuple[int, ...] = ()
    dim_rnn_h: int = 128
    dense_h_x: tuple[int, ...] = ()


def _z_chain_forward(weights, g_x, eps, keep: bool):
    """The encoder's z chain: :math:`g^z_t = \\mathrm{LSTM}(z_{t-1}, g^z_{t-1})`,
    :math:`[\\mu_t, \\log\\sigma^2_t] = [g^x_t, g^z_t] [W_\\mu, W_\\sigma] + b`,
    :math:`z_t = \\mu_t + \\varepsilon_t \\sigma_t`, with :math:`z_0 = 0` and a zero LSTM state.
    Returns ``(z, mean, logvar, g_z)`` (T, ..., ·), plus the backward pass's residuals when ``keep``."""
    k_ih, k_hh, bias, w_mean, b_mean, w_logvar, b_logvar = weights
    batch, hidden = g_x.shape[1:-1], k_hh.shape[0]

    def step(carry, inputs):
        state, z_prev = carry
        g_x_t, eps_t = inputs
        new, acts = _lstm_cell(k_hh, state, z_prev @ k_ih + bias)
        h = jnp.concatenate([g_x_t, new[0]], axis=-1)
        mean, logvar = h @ w_mean + b_mean, h @ w_logvar + b_logvar
        std = jnp.exp(0.5 * logvar)
        z = mean + eps_t * std
        out = (z, mean, logvar, new[0])
        return (new, z), ((out, (z_prev, state, acts, std)) if keep else out)

    carry0 = (zero_carry(batch, hidden, g_x.dtype), jnp.zeros(batch + (k_ih.shape[0],), g_x.dtype))
    return jax.lax.scan(step, carry0, (g_x, eps))[1]


@jax.custom_vjp
def _z_chain(weights, g_x, eps):
    return _z_chain_forward(weights, g_x, eps, keep=False)


def _z_chain_fwd(weights, g_x, eps):
    out, res = _z_chain_forward(weights, g_x, eps, keep=True)
    return out, (weights, g_x, eps, out[3], res)


def _z_chain_bwd(res, cts):
    """Backward scan over the per-frame gradients only; every weight gradient is then one product over
    all frames (:math:`\\partial W = \\sum_t u_t^\\top \\partial a_t` for a layer
    :math:`a = u W + b`), as in :func:`vdvae_jax.nn.layers.lstm_scan`, instead of autodiff's per-frame
    updates of every weight's accumulator."""
    weights, g_x, eps, g_z, (z_prev, (h_prev, c_prev), acts, std) = res
    k_ih, k_hh, _, w_mean, _, w_logvar, _ = weights
    d_z_out, d_mean_out, d_logvar_out, d_gz_out = cts
    n_x = g_x.shape[-1]
    w_heads_h = jnp.concatenate([w_mean[n_x:], w_logvar[n_x:]], axis=-1).T   # (2Z, H)

    def step(carry, inputs):
        d_h_next, d_c_next, d_z_next = carry
        d_z, d_mean, d_logvar, d_gz, acts_t, cp, std_t, eps_t = inputs
        d_z = d_z + d_z_next
        d_mean = d_mean + d_z
        d_logvar = d_logvar + 0.5 * d_z * eps_t * std_t
        d_h = d_h_next + d_gz + jnp.concatenate([d_mean, d_logvar], axis=-1) @ w_heads_h
        d_gates, d_c = _lstm_cell_bwd(d_h, d_c_next, cp, acts_t)
        return (d_gates @ k_hh.T, d_c * acts_t[1], d_gates @ k_ih.T), (d_gates, d_mean, d_logvar)

    zero = jnp.zeros_like(h_prev[0])
    carry0 = (zero, zero, jnp.zeros_like(z_prev[0]))
    _, (d_gates, d_mean, d_logvar) = jax.lax.scan(
        step, carry0, (d_z_out, d_mean_out, d_logvar_out, d_gz_out, acts, c_prev, std, eps), reverse=True)
    frames = tuple(range(g_x.ndim - 1))
    h = jnp.concatenate([g_x, g_z], axis=-1)
    d_weights = (_outer_over_frames(z_prev, d_gates), _outer_over_frames(h_prev, d_gates),
                 jnp.sum(d_gates, axis=frames), _outer_over_frames(h, d_mean), jnp.sum(d_mean, axis=frames),
                 _outer_over_frames(h, d_logvar), jnp.sum(d_logvar, axis=frames))
    d_g_x = d_mean @ w_mean[:n_x].T + d_logvar @ w_logvar[:n_x].T
    d_eps = (d_mean - d_mean_out) * std
    return d_weights, d_g_x, d_eps


_z_chain.defvjp(_z_chain_fwd, _z_chain_bwd)


def make_rvae(config: RVAEConfig = RVAEConfig()) -> DVAE:
    c = config
    enc_dirs = ("backward",) if c.causal else ("backward", "forward")
    dec_dirs = ("forward",) if c.causal else ("forward", "backward")

    def init(key, x):
        k = iter(jax.random.split(key, 16))
        params = {}
        blocks = [("mlp_x_gx", c.dense_x_gx, c.x_dim), ("mlp_z_gz", c.dense_z_gz, c.z_dim),
                  ("mlp_z_h", c.dense_z_h, c.z_dim)]
        for name, widths, in_dim in blocks:
            if widths:
                params[name] = MLP(widths, c.activation).init(next(k), jnp.zeros((in_dim,)))["params"]
        gx_in = mlp_out_dim(c.x_dim, c.dense_x_gx)
        params["rnn_g_x"] = {d: lstm_init(next(k), gx_in, c.dim_rnn_g_x) for d in enc_dirs}
        params["rnn_g_z"] = {"forward": lstm_init(next(k), mlp_out_dim(c.z_dim, c.dense_z_gz),
                                                  c.dim_rnn_g_z)}
        g_dim = len(enc_dirs) * c.dim_rnn_g_x + c.dim_rnn_g_z
        if c.dense_g_z:
            params["mlp_g_z"] = MLP(c.dense_g_z, c.activation).init(next(k), jnp.zeros((g_dim,)))["params"]
        params.update(init_gaussian_head(next(k), mlp_out_dim(g_dim, c.dense_g_z), c.z_dim, "inf"))
        h_in = mlp_out_dim(c.z_dim, c.dense_z_h)
        params["rnn_h"] = {d: lstm_init(next(k), h_in, c.dim_rnn_h) for d in dec_dirs}
        h_dim = len(dec_dirs) * c.dim_rnn_h
        if c.dense_h_x:
            params["mlp_h_x"] = MLP(c.dense_h_x, c.activation).init(next(k), jnp.zeros((h_dim,)))["params"]
        params.update(init_decoder_head(next(k), mlp_out_dim(h_dim, c.dense_h_x), c))
        return params

    def x_input(params, x):
        return mlp(params.get("mlp_x_gx"), network_input(c, x), c.dense_x_gx, c.activation)

    def features(params, x, mask=None):
        """The LSTM passes over x (:math:`g^x`), kept for ``forward(..., features=...)``."""
        a = x_input(params, x)
        return {d: lstm_scan_residuals(params["rnn_g_x"][d], a, reverse=(d == "backward"), mask=mask)
                for d in enc_dirs}

    def encode_full(params, x, noise, mask=None, feats=None):
        a = x_input(params, x)
        g_x = jnp.concatenate([lstm_scan(params["rnn_g_x"][d], a, reverse=(d == "backward"), mask=mask,
                                         residuals=None if feats is None else feats[d])
                               for d in enc_dirs], axis=-1)
        p_gz = params["rnn_g_z"]["forward"]
        batch = x.shape[1:-1]
        if not (c.dense_z_gz or c.dense_g_z):   # the speech priors: hand-written backward pass
            keys_or_eps = step_noise(noise, "z", x.shape[0])
            eps = jax.vmap(lambda n: draw_step(n, batch + (c.z_dim,)))(keys_or_eps)
            weights = (p_gz["kernel_ih"], p_gz["kernel_hh"], p_gz["bias"], params["inf_mean"]["kernel"],
                       params["inf_mean"]["bias"], params["inf_logvar"]["kernel"], params["inf_logvar"]["bias"])
            z, mean, logvar, g_z = _z_chain(weights, g_x, eps.astype(g_x.dtype))
            return z, Gaussian(mean, logvar), {"rnn_g_x": g_x, "rnn_g_z": g_z}

        def step(carry, inputs):
            state, z_prev = carry
            g_x_t, noise_t = inputs
            b = mlp(params.get("mlp_z_gz"), z_prev, c.dense_z_gz, c.activation)
            state, g_z_t = lstm_step(p_gz, state, lstm_project(p_gz, b))
            h = mlp(params.get("mlp_g_z"), jnp.concatenate([g_x_t, g_z_t], axis=-1), c.dense_g_z, c.activation)
            q_t = gaussian_head(params, h, "inf")
            z_t = q_t.sample(draw_step(noise_t, batch + (c.z_dim,)))
            return (state, z_t), (z_t, q_t, g_z_t)

        carry0 = (zero_carry(batch, c.dim_rnn_g_z, x.dtype), jnp.zeros(batch + (c.z_dim,), x.dtype))
        _, (z, q, g_z) = jax.lax.scan(step, carry0, (g_x, step_noise(noise, "z", x.shape[0])))
        return z, q, {"rnn_g_x": g_x, "rnn_g_z": g_z}

    def encode(params, x, noise):
        z, q, _ = encode_full(params, x, noise)
        return z, q

    def decode_full(params, z, mask=None):
        b = mlp(params.get("mlp_z_h"), z, c.dense_z_h, c.activation)
        h = jnp.concatenate([lstm_scan(params["rnn_h"][d], b, reverse=(d == "backward"), mask=mask)
                             for d in dec_dirs], axis=-1)
        out = decoder_head(params, mlp(params.get("mlp_h_x"), h, c.dense_h_x, c.activation), c)
        return out, h

    def decode(params, z, x=None):
        return decode_full(params, z)[0]

    def prior(params, z, x=None):
        return standard_normal_like(z)

    def forward(params, x, noise, *, mask=None, features=None):
        """Full pass; ``mask`` (T, [B]) marks valid frames of end-padded sequences; ``features`` from
        ``features(params, x, mask)`` replays the encoder's passes over x."""
        z, q, extras = encode_full(params, x, noise, mask, features)
        x_out, h = decode_full(params, z, mask)
        return Outputs(z, q, prior(params, z), x_out, {**extras, "rnn_h": h})

    return DVAE("rvae_causal" if c.causal else "rvae", c, init, forward, encode, decode, prior, features)
