"""STORN (stochastic recurrent network, Bayer & Osendorfer).

Generative model: i.i.d. standard-normal latents and an autoregressive recurrent decoder fed the
ground-truth previous frame (:math:`x_0 = 0`):

.. math::
    z_t \\sim \\mathcal N(0, I), \\qquad
    h_t = \\mathrm{LSTM}\\big([\\psi_z(z_t), \\psi_x(x_{t-1})], h_{t-1}\\big), \\qquad
    p(x_t | x_{1:t-1}, z_{1:t}) = p(x_t | \\phi(h_t)).

Inference with a causal RNN, :math:`z_t` sampled independently per step (in parallel):

.. math::
    g_t = \\overrightarrow{\\mathrm{LSTM}}(\\phi_x(x_{1:t})), \\qquad
    q(z_t | x_{1:t}) = \\mathcal N(\\mu(\\chi(g_t)), \\sigma^2(\\chi(g_t))).

Parameter names: ``mlp_x_g``, ``rnn_g/forward``, ``mlp_g_z``, ``inf_mean``/``inf_logvar``,
``mlp_z_h``, ``mlp_xtm1_h``, ``rnn_h/forward``, ``mlp_h_x``, ``gen_logvar`` (+ ``gen_mean``).
870,113 torch parameters at the speech configuration (869,089 here: LSTM biases stored summed).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vdvae_jax.distributions import standard_normal_like
from vdvae_jax.models.base import DVAE, DVAEConfig, Outputs, network_input, noise_array
from vdvae_jax.models.heads import (decoder_head, gaussian_head, init_decoder_head, init_gaussian_head,
                                    init_mlp_block)
from vdvae_jax.nn.layers import lstm_init, lstm_scan, mlp

__all__ = ["STORNConfig", "make_storn"]


@dataclasses.dataclass(frozen=True)
class STORNConfig(DVAEConfig):
    """STORN sizes (speech defaults of ``config/speech/storn.ini``)."""

    dense_x_g: tuple[int, ...] = (256,)
    dim_rnn_g: int = 128
    dense_g_z: tuple[int, ...] = (64, 32)
    dense_z_h: tuple[int, ...] = (32, 64)
    dense_xtm1_h: tuple[int, ...] = (256,)
    dim_rnn_h: int = 128
    dense_h_x: tuple[int, ...] = (256,)


def make_storn(config: STORNConfig = STORNConfig()) -> DVAE:
    c = config
    act = c.activation

    def init(key, x):
        k = iter(jax.random.split(key, 16))
        params = {}

        def block(name, widths, in_dim):
            return init_mlp_block(params, next(k), name, widths, in_dim, act)

        g_in = block("mlp_x_g", c.dense_x_g, c.x_dim)
        params["rnn_g"] = {"forward": lstm_init(next(k), g_in, c.dim_rnn_g)}
        params.update(init_gaussian_head(next(k), block("mlp_g_z", c.dense_g_z, c.dim_rnn_g), c.z_dim, "inf"))
        h_in = block("mlp_z_h", c.dense_z_h, c.z_dim) + block("mlp_xtm1_h", c.dense_xtm1_h, c.x_dim)
        params["rnn_h"] = {"forward": lstm_init(next(k), h_in, c.dim_rnn_h)}
        params.update(init_decoder_head(next(k), block("mlp_h_x", c.dense_h_x, c.dim_rnn_h), c))
        return params

    def encode_full(params, x, noise):
        g = lstm_scan(params["rnn_g"]["forward"], mlp(params.get("mlp_x_g"), network_input(c, x), c.dense_x_g, act))
        q = gaussian_head(params, mlp(params.get("mlp_g_z"), g, c.dense_g_z, act), "inf")
        z = q.sample(noise_array(noise, "z", q.mean.shape))
        return z, q, g

    def encode(params, x, noise):
        z, q, _ = encode_full(params, x, noise)
        return z, q

    def decode_full(params, z, x):
        x_prev = jnp.concatenate([jnp.zeros_like(x[:1]), x[:-1]], axis=0)
        inp = jnp.concatenate([mlp(params.get("mlp_z_h"), z, c.dense_z_h, act),
                               mlp(params.get("mlp_xtm1_h"), network_input(c, x_prev), c.dense_xtm1_h, act)], axis=-1)
        h = lstm_scan(params["rnn_h"]["forward"], inp)
        return decoder_head(params, mlp(params.get("mlp_h_x"), h, c.dense_h_x, act), c), h

    def decode(params, z, x):
        """Decoder fed the ground-truth previous frames of ``x`` (teacher forcing)."""
        return decode_full(params, z, x)[0]

    def prior(params, z, x=None):
        return standard_normal_like(z)

    def forward(params, x, noise, *, mask=None):
        del mask  # causal model: end padding never reaches the valid frames
        z, q, g = encode_full(params, x, noise)
        x_out, h = decode_full(params, z, x)
        return Outputs(z, q, prior(params, z), x_out, {"rnn_g": g, "rnn_h": h})

    return DVAE("storn", c, init, forward, encode, decode, prior)
