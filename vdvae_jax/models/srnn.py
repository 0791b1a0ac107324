"""SRNN (stochastic recurrent neural network), teacher-forced and with scheduled sampling.

Generative model, with a deterministic forward LSTM :math:`h_t` over the previous frames:

.. math::
    h_t = \\mathrm{LSTM}(\\phi(x_{t-1}), h_{t-1}), \\quad
    p(z_t | h_t, z_{t-1}) = \\mathcal N(\\mu_p, \\sigma_p^2), \\quad p(x_t | h_t, z_t).

Inference :math:`q(z_t | z_{t-1}, g_t)` with :math:`g_t` an anti-causal LSTM over
:math:`[h_t, x_t]`, hence :math:`q(z_t | z_{t-1}, x_{1:T})`, sampled sequentially (:math:`z_0 = 0`,
:math:`x_0 = 0`).

Decoder modes (``forward(params, x, noise, use_pred=...)``):

* ``scheduled_sampling=False`` (plain SRNN): decoder and prior read the teacher-forced
  :math:`h_t` computed from the ground-truth :math:`x_{t-1}`.
* ``scheduled_sampling=True`` (the reference's SRNN_ss, used by speech enhancement): a second chain
  :math:`h^{gen}_t = \\mathrm{LSTM}(\\phi(\\hat x_{t-1}))` is driven by the model's own predictions
  (:math:`\\hat x_t = e^{y_t}` for power spectra, detached; a sample of the decoder Gaussian for real
  observations). At each step a coin :math:`u_t \\sim U[0,1)` picks :math:`h^{gen}_t` for the decoder when
  :math:`u_t <` ``use_pred`` (0 = teacher forcing, 1 = generation mode; the reference's
  :math:`\\le` differs only on a zero-probability event). The prior reads
  :math:`h^{gen}` as the reference does (``prior_on="gen"``) or the same :math:`h` as the decoder
  (``prior_on="decoder"``).

Parameters: ``mlp_x_h``, ``rnn_h/forward``, ``mlp_hx_g``, ``rnn_g/backward``, ``mlp_gz_z``,
``inf_mean/logvar``, ``mlp_hz_z``, ``prior_mean/logvar``, ``mlp_hz_x``, ``gen_logvar`` (+``gen_mean``).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vdvae_jax.models.base import (DVAE, DVAEConfig, Outputs, draw_step, network_input, noise_array,
                                   step_noise)
from vdvae_jax.models.heads import decoder_head, gaussian_head, init_decoder_head, init_gaussian_head
from vdvae_jax.nn.layers import (MLP, lstm_init, lstm_project, lstm_scan, lstm_step, mlp, mlp_out_dim,
                                 zero_carry)

__all__ = ["SRNNConfig", "make_srnn", "srnn_encode_from_h", "init_srnn_block", "init_h_chain",
           "init_prior_and_decoder"]


@dataclasses.dataclass(frozen=True)
class SRNNConfig(DVAEConfig):
    """SRNN sizes (speech defaults) and decoder mode options."""

    dense_x_h: tuple[int, ...] = (256,)
    dim_rnn_h: int = 128
    dense_hx_g: tuple[int, ...] = (256,)
    dim_rnn_g: int = 128
    dense_gz_z: tuple[int, ...] = (64, 32)
    dense_hz_z: tuple[int, ...] = (64, 32)
    dense_hz_x: tuple[int, ...] = (256,)
    scheduled_sampling: bool = False
    prior_on: str = "gen"

    def __post_init__(self):
        super().__post_init__()
        if self.prior_on not in ("gen", "decoder"):
            raise ValueError(f"prior_on must be 'gen' or 'decoder', got {self.prior_on!r}")


def init_srnn_block(params: dict, keys, name: str, widths, in_dim: int, activation: str) -> int:
    """Add MLP ``name`` when ``widths`` is set, drawing a key from the iterator ``keys`` only then
    (unlike ``heads.init_mlp_block``, so a seed's initialisation does not depend on empty blocks);
    returns the block's output size."""
    if widths:
        params[name] = MLP(widths, activation).init(next(keys), jnp.zeros((in_dim,)))["params"]
    return mlp_out_dim(in_dim, widths)


def init_h_chain(params: dict, keys, c) -> None:
    """``mlp_x_h`` and the forward LSTM ``rnn_h`` of the deterministic chain h_t (shared by the SRNN
    variants)."""
    h_in = init_srnn_block(params, keys, "mlp_x_h", c.dense_x_h, c.x_dim, c.activation)
    params["rnn_h"] = {"forward": lstm_init(next(keys), h_in, c.dim_rnn_h)}


def init_prior_and_decoder(params: dict, keys, c) -> None:
    """``mlp_hz_z`` + prior heads and ``mlp_hz_x`` + decoder head, both on ``[h_t, z]`` (shared by the
    SRNN variants)."""
    hz = c.dim_rnn_h + c.z_dim
    prior_in = init_srnn_block(params, keys, "mlp_hz_z", c.dense_hz_z, hz, c.activation)
    params.update(init_gaussian_head(next(keys), prior_in, c.z_dim, "prior"))
    decoder_in = init_srnn_block(params, keys, "mlp_hz_x", c.dense_hz_x, hz, c.activation)
    params.update(init_decoder_head(next(keys), decoder_in, c))


def srnn_encode_from_h(params, config, x: jax.Array, h: jax.Array, noise, mask=None):
    """The SRNN encoder given the deterministic chain ``h`` (T, [B,] H): the anti-causal
    :math:`g_t = \\mathrm{LSTM}^{\\leftarrow}(\\mathrm{MLP}([h_t, \\phi(x_t)]))` and the sequential
    :math:`z_t \\sim q(z_t | g_t, z_{t-1})` (:math:`z_{-1} = 0`, noise ``noise["z"]``); returns ``(z, q, g)``."""
    c, act = config, config.activation
    a = mlp(params.get("mlp_hx_g"), jnp.concatenate([h, network_input(c, x)], axis=-1), c.dense_hx_g, act)
    g = lstm_scan(params["rnn_g"]["backward"], a, reverse=True, mask=mask)

    def step(z_prev, inputs):
        g_t, noise_t = inputs
        u = mlp(params.get("mlp_gz_z"), jnp.concatenate([g_t, z_prev], axis=-1), c.dense_gz_z, act)
        q_t = gaussian_head(params, u, "inf")
        z_t = q_t.sample(draw_step(noise_t, x.shape[1:-1] + (c.z_dim,)))
        return z_t, (z_t, q_t)

    z0 = jnp.zeros(x.shape[1:-1] + (c.z_dim,), h.dtype)
    _, (z, q) = jax.lax.scan(step, z0, (g, step_noise(noise, "z", x.shape[0])))
    return z, q, g


def make_srnn(config: SRNNConfig = SRNNConfig()) -> DVAE:
    c = config
    act = c.activation

    def init(key, x):
        k = iter(jax.random.split(key, 16))
        params = {}
        init_h_chain(params, k, c)
        g_in = init_srnn_block(params, k, "mlp_hx_g", c.dense_hx_g, c.dim_rnn_h + c.x_dim, act)
        params["rnn_g"] = {"backward": lstm_init(next(k), g_in, c.dim_rnn_g)}
        q_in = init_srnn_block(params, k, "mlp_gz_z", c.dense_gz_z, c.dim_rnn_g + c.z_dim, act)
        params.update(init_gaussian_head(next(k), q_in, c.z_dim, "inf"))
        init_prior_and_decoder(params, k, c)
        return params

    def h_teacher_forced(params, x):
        """h_t from the ground-truth previous frames x_{t-1} (x_0 = 0)."""
        x_prev = jnp.concatenate([jnp.zeros_like(x[:1]), x[:-1]], axis=0)
        return lstm_scan(params["rnn_h"]["forward"],
                         mlp(params.get("mlp_x_h"), network_input(c, x_prev), c.dense_x_h, act))

    def encode_from_h(params, x, h, noise, mask=None):
        return srnn_encode_from_h(params, c, x, h, noise, mask)

    def encode(params, x, noise):
        z, q, _ = encode_from_h(params, x, h_teacher_forced(params, x), noise)
        return z, q

    def prior_from_h(params, z, h):
        z_prev = jnp.concatenate([jnp.zeros_like(z[:1]), z[:-1]], axis=0)
        u = mlp(params.get("mlp_hz_z"), jnp.concatenate([h, z_prev], axis=-1), c.dense_hz_z, act)
        return gaussian_head(params, u, "prior")

    def decode_from_h(params, z, h):
        return decoder_head(params, mlp(params.get("mlp_hz_x"), jnp.concatenate([h, z], axis=-1),
                                        c.dense_hz_x, act), c)

    def generation_chain(params, z, h_tf, coin, use_pred, noise):
        """Scan of the prediction-driven chain h_gen; returns (decoder Gaussian, h_gen, h_used)."""
        p_h = params["rnn_h"]["forward"]
        batch = z.shape[1:-1]
        x_noise = step_noise(noise, "x", z.shape[0]) if c.observation == "gaussian" else coin

        def step(carry, inputs):
            state, x_hat = carry
            z_t, h_tf_t, coin_t, x_noise_t = inputs
            b = mlp(params.get("mlp_x_h"), network_input(c, x_hat), c.dense_x_h, act)
            state, h_gen_t = lstm_step(p_h, state, lstm_project(p_h, b))
            h_t = jnp.where(coin_t[..., None] < use_pred, h_gen_t, h_tf_t)
            out_t = decode_from_h(params, z_t, h_t)
            if c.observation == "gaussian":
                x_next = out_t.sample(draw_step(x_noise_t, batch + (c.x_dim,)))
            else:
                x_next = jnp.exp(out_t.logvar)
            return (state, jax.lax.stop_gradient(x_next)), (out_t, h_gen_t, h_t)

        carry0 = (zero_carry(batch, c.dim_rnn_h, h_tf.dtype), jnp.zeros(batch + (c.x_dim,), h_tf.dtype))
        _, (x_out, h_gen, h_used) = jax.lax.scan(step, carry0, (z, h_tf, coin, x_noise))
        return x_out, h_gen, h_used

    def decode(params, z, x):
        return decode_from_h(params, z, h_teacher_forced(params, x))

    def prior(params, z, x):
        return prior_from_h(params, z, h_teacher_forced(params, x))

    def forward(params, x, noise, *, use_pred=0.0, mask=None):
        """One pass; ``use_pred`` (scheduled sampling only) is the probability of the generated h;
        ``mask`` (T, [B]) marks valid frames of end-padded sequences."""
        h_tf = h_teacher_forced(params, x)
        z, q, g = encode_from_h(params, x, h_tf, noise, mask)
        extras = {"h_inf": h_tf, "rnn_g": g}
        if not c.scheduled_sampling:
            return Outputs(z, q, prior_from_h(params, z, h_tf), decode_from_h(params, z, h_tf), extras)
        coin = noise_array(noise, "coin", x.shape[:-1], kind="uniform")
        x_out, h_gen, h_used = generation_chain(params, z, h_tf, coin, use_pred, noise)
        p = prior_from_h(params, z, h_gen if c.prior_on == "gen" else h_used)
        return Outputs(z, q, p, x_out, {**extras, "h_gen": h_gen})

    name = "srnn_ss" if c.scheduled_sampling else "srnn"
    return DVAE(name, c, init, forward, encode, decode, prior)
