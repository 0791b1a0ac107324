"""DKF, the deep Kalman filter / deep Markov model with "DKS" (backward-RNN) inference.

Generative model (gated transition prior, frame-wise decoder), with :math:`z_0 = 0`:

.. math::
    a_t = \\sigma(W_2\\,\\mathrm{relu}(W_1 z_{t-1})), \\quad
    \\tilde h_t = W_2'\\,\\mathrm{relu}(W_1' z_{t-1}), \\\\
    p(z_t | z_{t-1}) = \\mathcal N\\big((1 - a_t) \\odot (W_\\mu z_{t-1} + b_\\mu) + a_t \\odot \\tilde h_t,\\;
        \\mathrm{softplus}(W_\\sigma \\mathrm{relu}(\\tilde h_t) + b_\\sigma)\\big), \\qquad p(x_t | z_t).

Inference, sampled sequentially (each sampled :math:`z_t` is fed back):

.. math::
    g_t = \\overleftarrow{\\mathrm{LSTM}}(\\phi(x_{t:T})), \\quad
    \\tilde g_t = \\tfrac12\\big(\\psi(z_{t-1}) + g_t\\big), \\quad
    q(z_t | z_{t-1}, x_{t:T}) = \\mathcal N(\\mu(\\tilde g_t), \\sigma^2(\\tilde g_t)).

With ``bidir_gx=True`` the encoder RNN is bidirectional, :math:`q(z_t | z_{t-1}, x_{1:T})`, and the
combiner averages three terms :math:`(\\psi(z_{t-1}) + g^{\\leftarrow}_t + g^{\\rightarrow}_t) / 3`.

Parameter names (those of the published checkpoints): ``mlp_x_gx`` (``linear{n}``), ``rnn_gx``
(``backward`` [+ ``forward``]; the reference runs it on the time-flipped input, so the torch ``_l0``
weights map to ``backward``), ``mlp_ztm1_g`` (``linear{n}`` then ``linear_last`` to the RNN width, tanh
after each), ``mlp_g_z``, ``inf_mean``/``inf_logvar``, ``mlp_gate`` (``linear1``, ``linear2``),
``mlp_z_prop`` (``linear1``, ``linear2``), ``prior_mean``, ``prior_logvar`` (``{"1": dense}``, the
torch ``Sequential(ReLU, Linear, Softplus)``), ``mlp_z_x``, ``gen_logvar`` (+ ``gen_mean``).
516,641 torch parameters at the speech configuration (516,129 here: LSTM biases are stored summed).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vdvae_jax.distributions import Gaussian
from vdvae_jax.models.base import DVAE, DVAEConfig, Outputs, draw_step, network_input, step_noise
from vdvae_jax.models.heads import decoder_head, gaussian_head, init_decoder_head, init_dense, init_gaussian_head
from vdvae_jax.nn.layers import ACTIVATIONS, MLP, dense, lstm_init, lstm_scan, mlp, mlp_out_dim

__all__ = ["DKFConfig", "make_dkf"]


@dataclasses.dataclass(frozen=True)
class DKFConfig(DVAEConfig):
    """DKF sizes (speech defaults of ``config/speech/dkf.ini``)."""

    dense_x_gx: tuple[int, ...] = (256,)
    dim_rnn_gx: int = 128
    bidir_gx: bool = False
    dense_ztm1_g: tuple[int, ...] = (32,)
    dense_g_z: tuple[int, ...] = (32,)
    dense_z_x: tuple[int, ...] = (32, 64, 128, 256)


def _shift(z):
    """``[0, z_1, ..., z_{T-1}]`` along time."""
    return jnp.concatenate([jnp.zeros_like(z[:1]), z[:-1]], axis=0)


def make_dkf(config: DKFConfig = DKFConfig()) -> DVAE:
    c = config
    act = ACTIVATIONS[c.activation]
    dirs = ("backward", "forward") if c.bidir_gx else ("backward",)

    def init(key, x):
        k = iter(jax.random.split(key, 24))
        params = {}
        if c.dense_x_gx:
            params["mlp_x_gx"] = MLP(c.dense_x_gx, c.activation).init(next(k), jnp.zeros((c.x_dim,)))["params"]
        gx_in = mlp_out_dim(c.x_dim, c.dense_x_gx)
        params["rnn_gx"] = {d: lstm_init(next(k), gx_in, c.dim_rnn_gx) for d in dirs}
        ztm1 = {}
        if c.dense_ztm1_g:
            ztm1 = dict(MLP(c.dense_ztm1_g, c.activation).init(next(k), jnp.zeros((c.z_dim,)))["params"])
        ztm1["linear_last"] = init_dense(next(k), mlp_out_dim(c.z_dim, c.dense_ztm1_g), c.dim_rnn_gx)
        params["mlp_ztm1_g"] = ztm1
        if c.dense_g_z:
            params["mlp_g_z"] = MLP(c.dense_g_z, c.activation).init(next(k), jnp.zeros((c.dim_rnn_gx,)))["params"]
        params.update(init_gaussian_head(next(k), mlp_out_dim(c.dim_rnn_gx, c.dense_g_z), c.z_dim, "inf"))
        zz = lambda: init_dense(next(k), c.z_dim, c.z_dim)  # noqa: E731
        params["mlp_gate"] = {"linear1": zz(), "linear2": zz()}
        params["mlp_z_prop"] = {"linear1": zz(), "linear2": zz()}
        params["prior_mean"] = zz()
        params["prior_logvar"] = {"1": zz()}
        if c.dense_z_x:
            params["mlp_z_x"] = MLP(c.dense_z_x, c.activation).init(next(k), jnp.zeros((c.z_dim,)))["params"]
        params.update(init_decoder_head(next(k), mlp_out_dim(c.z_dim, c.dense_z_x), c))
        return params

    def ztm1_g(params, z_prev):
        p = params["mlp_ztm1_g"]
        h = mlp(p, z_prev, c.dense_ztm1_g, c.activation)
        return act(dense(p["linear_last"], h))

    def encode_full(params, x, noise, mask=None):
        a = mlp(params.get("mlp_x_gx"), network_input(c, x), c.dense_x_gx, c.activation)
        g = {d: lstm_scan(params["rnn_gx"][d], a, reverse=(d == "backward"), mask=mask) for d in dirs}
        g_sum = sum(g.values())
        batch = x.shape[1:-1]

        def step(z_prev, inputs):
            g_t, noise_t = inputs
            g_tilde = (ztm1_g(params, z_prev) + g_t) / (len(dirs) + 1)
            q_t = gaussian_head(params, mlp(params.get("mlp_g_z"), g_tilde, c.dense_g_z, c.activation), "inf")
            z_t = q_t.sample(draw_step(noise_t, batch + (c.z_dim,)))
            return z_t, (z_t, q_t)

        z0 = jnp.zeros(batch + (c.z_dim,), x.dtype)
        _, (z, q) = jax.lax.scan(step, z0, (g_sum, step_noise(noise, "z", x.shape[0])))
        # torch order of a bidirectional output over the flipped input: [l0 (backward), l0_reverse]
        rnn_out = jnp.concatenate([g[d] for d in dirs], axis=-1)
        return z, q, {"rnn_gx": rnn_out}

    def encode(params, x, noise):
        z, q, _ = encode_full(params, x, noise)
        return z, q

    def transition(params, z_prev):
        gate = jax.nn.sigmoid(dense(params["mlp_gate"]["linear2"],
                                    jax.nn.relu(dense(params["mlp_gate"]["linear1"], z_prev))))
        prop = dense(params["mlp_z_prop"]["linear2"],
                     jax.nn.relu(dense(params["mlp_z_prop"]["linear1"], z_prev)))
        mean = (1.0 - gate) * dense(params["prior_mean"], z_prev) + gate * prop
        var = jax.nn.softplus(dense(params["prior_logvar"]["1"], jax.nn.relu(prop)))
        return Gaussian(mean, jnp.log(var))

    def prior(params, z, x=None):
        """Gated transition evaluated at the sampled past ``[0, z_1..z_{T-1}]``."""
        return transition(params, _shift(z))

    def decode(params, z, x=None):
        return decoder_head(params, mlp(params.get("mlp_z_x"), z, c.dense_z_x, c.activation), c)

    def forward(params, x, noise, *, mask=None):
        """Full pass; ``mask`` (T, [B]) marks valid frames of end-padded sequences."""
        z, q, extras = encode_full(params, x, noise, mask)
        return Outputs(z, q, prior(params, z), decode(params, z), extras)

    return DVAE("dkf", c, init, forward, encode, decode, prior)
