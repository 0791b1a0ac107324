"""VRNN (variational recurrent neural network, Chung et al.).

One deterministic recurrence shared by inference and generation; :math:`h_t` is the LSTM state
*before* consuming step t (:math:`h_1 = 0`):

.. math::
    h_{t+1} = \\mathrm{LSTM}\\big([\\varphi_x(x_t), \\varphi_z(z_t)], h_t\\big), \\qquad
    p(z_t | h_t) = \\mathcal N(\\mu_p(h_t), \\sigma_p^2(h_t)), \\qquad
    p(x_t | z_t, h_t) = p(x_t | [\\varphi_z(z_t), h_t]),

.. math::
    q(z_t | x_t, h_t) = \\mathcal N\\big(\\mu([\\varphi_x(x_t), h_t]), \\sigma^2([\\varphi_x(x_t), h_t])\\big),

so the posterior depends on :math:`x_{1:t}, z_{1:t-1}` and is sampled sequentially (one ``lax.scan``
whose step encodes, samples and advances the LSTM on the ground-truth :math:`x_t` and sampled
:math:`z_t`); decoder and prior are then evaluated in parallel from the stored :math:`h_t`.

Parameter names: ``feature_extractor_x``, ``feature_extractor_z``, ``mlp_hx_z``, ``inf_mean``/``inf_logvar``,
``mlp_hz_x``, ``gen_logvar`` (+ ``gen_mean``), ``rnn/forward``, ``mlp_h_z``, ``prior_mean``/``prior_logvar``
(``mlp_*`` blocks exist only when their widths are set; all empty at the speech configuration).
480,097 torch parameters at the speech configuration (479,585 here: LSTM biases stored summed).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vdvae_jax.models.base import DVAE, DVAEConfig, Outputs, draw_step, network_input, step_noise
from vdvae_jax.models.heads import (decoder_head, gaussian_head, init_decoder_head, init_gaussian_head,
                                    init_mlp_block)
from vdvae_jax.nn.layers import lstm_init, lstm_project, lstm_scan, lstm_step, mlp, zero_carry

__all__ = ["VRNNConfig", "make_vrnn"]


@dataclasses.dataclass(frozen=True)
class VRNNConfig(DVAEConfig):
    """VRNN sizes (speech defaults of ``config/speech/vrnn.ini``)."""

    dense_x: tuple[int, ...] = (256,)
    dense_z: tuple[int, ...] = (32, 64)
    dense_hx_z: tuple[int, ...] = ()
    dense_hz_x: tuple[int, ...] = ()
    dense_h_z: tuple[int, ...] = ()
    dim_rnn: int = 128


def make_vrnn(config: VRNNConfig = VRNNConfig()) -> DVAE:
    c = config
    act = c.activation

    def init(key, x):
        k = iter(jax.random.split(key, 16))
        params = {}

        def block(name, widths, in_dim):
            return init_mlp_block(params, next(k), name, widths, in_dim, act)

        fx = block("feature_extractor_x", c.dense_x, c.x_dim)
        fz = block("feature_extractor_z", c.dense_z, c.z_dim)
        params.update(init_gaussian_head(next(k), block("mlp_hx_z", c.dense_hx_z, fx + c.dim_rnn), c.z_dim, "inf"))
        params.update(init_decoder_head(next(k), block("mlp_hz_x", c.dense_hz_x, fz + c.dim_rnn), c))
        params["rnn"] = {"forward": lstm_init(next(k), fx + fz, c.dim_rnn)}
        params.update(init_gaussian_head(next(k), block("mlp_h_z", c.dense_h_z, c.dim_rnn), c.z_dim, "prior"))
        return params

    def phi_x(params, x):
        return mlp(params.get("feature_extractor_x"), network_input(c, x), c.dense_x, act)

    def phi_z(params, z):
        return mlp(params.get("feature_extractor_z"), z, c.dense_z, act)

    def encode_full(params, x, noise):
        p_rnn = params["rnn"]["forward"]
        fx = phi_x(params, x)
        batch = x.shape[1:-1]

        def step(state, inputs):
            fx_t, noise_t = inputs
            h_t = state[0]
            u = mlp(params.get("mlp_hx_z"), jnp.concatenate([fx_t, h_t], axis=-1), c.dense_hx_z, act)
            q_t = gaussian_head(params, u, "inf")
            z_t = q_t.sample(draw_step(noise_t, batch + (c.z_dim,)))
            state, _ = lstm_step(p_rnn, state, lstm_project(p_rnn, jnp.concatenate([fx_t, phi_z(params, z_t)], -1)))
            return state, (z_t, q_t, h_t)

        _, (z, q, h) = jax.lax.scan(step, zero_carry(batch, c.dim_rnn, fx.dtype), (fx, step_noise(noise, "z", x.shape[0])))
        return z, q, h

    def encode(params, x, noise):
        z, q, _ = encode_full(params, x, noise)
        return z, q

    def h_from(params, z, x):
        """h_t (state before step t) from the ground-truth x and the given z, in one scan."""
        inp = jnp.concatenate([phi_x(params, x), phi_z(params, z)], axis=-1)
        h_next = lstm_scan(params["rnn"]["forward"], inp[:-1])  # h_{t+1} after consuming step t
        return jnp.concatenate([jnp.zeros(z.shape[1:-1] + (c.dim_rnn,), h_next.dtype)[None], h_next], axis=0)

    def decode_from_h(params, z, h):
        u = mlp(params.get("mlp_hz_x"), jnp.concatenate([phi_z(params, z), h], axis=-1), c.dense_hz_x, act)
        return decoder_head(params, u, c)

    def prior_from_h(params, h):
        return gaussian_head(params, mlp(params.get("mlp_h_z"), h, c.dense_h_z, act), "prior")

    def decode(params, z, x):
        return decode_from_h(params, z, h_from(params, z, x))

    def prior(params, z, x):
        return prior_from_h(params, h_from(params, z, x))

    def forward(params, x, noise, *, mask=None):
        del mask  # causal model: end padding never reaches the valid frames
        z, q, h = encode_full(params, x, noise)
        return Outputs(z, q, prior_from_h(params, h), decode_from_h(params, z, h), {"h": h})

    return DVAE("vrnn", c, init, forward, encode, decode, prior)
