"""DSAE, the disentangled sequential autoencoder (Li & Mandt): a static latent ``v`` per sequence and
dynamic latents ``z_t``.

Generative model:

.. math::
    v \\sim \\mathcal N(0, I), \\qquad
    p(z_t | z_{1:t-1}) = \\mathcal N(\\mu_p(h^p_t), \\sigma_p^2(h^p_t)), \\;
    h^p_t = \\mathrm{LSTM}(z_{0:t-1}) \\; (z_0 = 0), \\qquad
    p(x_t | v, z_t) = p(x_t | \\phi([v, z_t])).

Inference (all :math:`z_t` sampled independently, in parallel):

.. math::
    q(v | x_{1:T}) = \\mathcal N\\big(\\mu_v([\\overrightarrow{g}_T, \\overleftarrow{g}_1]),
        \\sigma_v^2(\\cdot)\\big), \\quad g = \\mathrm{BiLSTM}(x), \\\\
    q(z_t | x_{1:T}, v) = \\mathcal N(\\mu_z(r_t), \\sigma_z^2(r_t)), \\quad
    r_t = \\mathrm{RNN}_{\\tanh}\\big(\\mathrm{BiLSTM}([x_t, v])\\big)_t.

Loss: :math:`\\mathrm{KL}_z` (against the LSTM prior at the sampled past) plus the static
:math:`\\mathrm{KL}(q(v) \\| \\mathcal N(0, I))`, both divided by :math:`T \\cdot B` as the reference
does; the static term travels in ``Outputs.extras["kl_static"]``. The static latent's noise is the
entry ``"v"`` (shape ``([B,] v_dim)``) of a noise dict, ``z``'s the entry ``"z"``.

Parameter names: ``mlp_x``, ``rnn_g_v`` (``forward``, ``backward``), ``mlp_gv_v``, ``inf_v_mean``/
``inf_v_logvar``, ``mlp_xv_gxv``, ``rnn_g_xv`` (``forward``, ``backward``), ``mlp_gxv_gz``, ``rnn_g_z/forward``
(vanilla tanh RNN), ``inf_z_mean``/``inf_z_logvar``, ``rnn_prior/forward``, ``prior_mean``/``prior_logvar``,
``mlp_vz_x``, ``gen_logvar`` (+ ``gen_mean``). 1,650,241 torch parameters at the speech configuration
(1,647,553 here: recurrent biases stored summed).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vdvae_jax.distributions import kl_gaussian, standard_normal_like
from vdvae_jax.models.base import DVAE, DVAEConfig, Outputs, network_input, noise_array
from vdvae_jax.models.heads import (decoder_head, gaussian_head, init_decoder_head, init_gaussian_head,
                                    init_mlp_block)
from vdvae_jax.nn.layers import RNNCell, lstm_init, lstm_scan, mlp, rnn_scan

__all__ = ["DSAEConfig", "make_dsae"]


@dataclasses.dataclass(frozen=True)
class DSAEConfig(DVAEConfig):
    """DSAE sizes (speech defaults of ``config/speech/dsae.ini``); ``v_dim`` is the static latent size."""

    v_dim: int = 16
    dense_x: tuple[int, ...] = ()
    dim_rnn_g_v: int = 128
    dense_gv_v: tuple[int, ...] = ()
    dense_xv_gxv: tuple[int, ...] = ()
    dim_rnn_g_xv: int = 128
    dense_gxv_gz: tuple[int, ...] = ()
    dim_rnn_g_z: int = 128
    dim_rnn_prior: int = 128
    dense_vz_x: tuple[int, ...] = (32, 64, 128, 256)

    def __post_init__(self):
        super().__post_init__()
        if self.v_dim < 1:
            raise ValueError(f"v_dim must be positive, got {self.v_dim}")


def make_dsae(config: DSAEConfig = DSAEConfig()) -> DVAE:
    c = config
    act = c.activation
    bi = ("forward", "backward")

    def init(key, x):
        k = iter(jax.random.split(key, 24))
        params = {}

        def block(name, widths, in_dim):
            return init_mlp_block(params, next(k), name, widths, in_dim, act)

        fx = block("mlp_x", c.dense_x, c.x_dim)
        params["rnn_g_v"] = {d: lstm_init(next(k), fx, c.dim_rnn_g_v) for d in bi}
        gv = block("mlp_gv_v", c.dense_gv_v, 2 * c.dim_rnn_g_v)
        params.update(init_gaussian_head(next(k), gv, c.v_dim, "inf_v"))
        gxv_in = block("mlp_xv_gxv", c.dense_xv_gxv, fx + c.v_dim)
        params["rnn_g_xv"] = {d: lstm_init(next(k), gxv_in, c.dim_rnn_g_xv) for d in bi}
        gz_in = block("mlp_gxv_gz", c.dense_gxv_gz, 2 * c.dim_rnn_g_xv)
        params["rnn_g_z"] = {"forward": RNNCell(c.dim_rnn_g_z).init(
            next(k), jnp.zeros((c.dim_rnn_g_z,)), jnp.zeros((gz_in,)))["params"]}
        params.update(init_gaussian_head(next(k), c.dim_rnn_g_z, c.z_dim, "inf_z"))
        params["rnn_prior"] = {"forward": lstm_init(next(k), c.z_dim, c.dim_rnn_prior)}
        params.update(init_gaussian_head(next(k), c.dim_rnn_prior, c.z_dim, "prior"))
        params.update(init_decoder_head(next(k), block("mlp_vz_x", c.dense_vz_x, c.v_dim + c.z_dim), c))
        return params

    def encode_v(params, x, noise=None, mask=None):
        """q(v | x) and a sample (the posterior mean when ``noise`` is None)."""
        a = mlp(params.get("mlp_x"), network_input(c, x), c.dense_x, act)
        fwd = lstm_scan(params["rnn_g_v"]["forward"], a, mask=mask)
        bwd = lstm_scan(params["rnn_g_v"]["backward"], a, reverse=True, mask=mask)
        if mask is None:
            last = fwd[-1]
        else:  # final forward state = output at the last valid frame
            idx = jnp.sum(mask, axis=0).astype(jnp.int32) - 1
            last = jnp.take_along_axis(fwd, idx[None, ..., None], axis=0)[0]
        g = jnp.concatenate([last, bwd[0]], axis=-1)  # final states of each direction
        qv = gaussian_head(params, mlp(params.get("mlp_gv_v"), g, c.dense_gv_v, act), "inf_v")
        v = qv.mean if noise is None else qv.sample(noise_array(noise, "v", qv.mean.shape))
        return v, qv, a

    def encode_z(params, a, v, noise, mask=None):
        vt = jnp.broadcast_to(v, a.shape[:-1] + v.shape[-1:])
        b = mlp(params.get("mlp_xv_gxv"), jnp.concatenate([a, vt], axis=-1), c.dense_xv_gxv, act)
        gxv = jnp.concatenate([lstm_scan(params["rnn_g_xv"][d], b, reverse=(d == "backward"), mask=mask)
                               for d in bi], -1)
        r = rnn_scan(params["rnn_g_z"]["forward"], mlp(params.get("mlp_gxv_gz"), gxv, c.dense_gxv_gz, act))
        q = gaussian_head(params, r, "inf_z")
        return q.sample(noise_array(noise, "z", q.mean.shape)), q

    def encode(params, x, noise):
        v, _, a = encode_v(params, x, noise)
        return encode_z(params, a, v, noise)

    def prior(params, z, x=None):
        z_prev = jnp.concatenate([jnp.zeros_like(z[:1]), z[:-1]], axis=0)
        return gaussian_head(params, lstm_scan(params["rnn_prior"]["forward"], z_prev), "prior")

    def decode_v(params, z, v):
        vt = jnp.broadcast_to(v, z.shape[:-1] + v.shape[-1:])
        h = mlp(params.get("mlp_vz_x"), jnp.concatenate([vt, z], axis=-1), c.dense_vz_x, act)
        return decoder_head(params, h, c)

    def decode(params, z, x, v=None):
        """p(x | v, z); ``v`` defaults to the posterior mean of q(v | x)."""
        if v is None:
            v = encode_v(params, x)[0]
        return decode_v(params, z, v)

    def forward(params, x, noise, *, mask=None):
        """Full pass; ``mask`` (T, [B]) marks valid frames of end-padded sequences."""
        v, qv, a = encode_v(params, x, noise, mask)
        z, q = encode_z(params, a, v, noise, mask)
        kl_v = kl_gaussian(qv, standard_normal_like(v), mode=c.kl_mode, var_eps=c.kl_var_eps)
        extras = {"v": v, "q_v": qv, "kl_static": kl_v}
        return Outputs(z, q, prior(params, z), decode_v(params, z, v), extras)

    return DVAE("dsae", c, init, forward, encode, decode, prior)
