"""The MixDVAE pre-training SRNNs (Lin et al., MixDVAE): multi-object tracking (MOT) and single-channel
audio source separation (SC-ASS).

Both are SRNNs (see :mod:`vdvae_jax.models.srnn`) with a deterministic forward LSTM over the previous
frames, :math:`h_t = \\mathrm{LSTM}(\\phi(x_{t-1}), h_{t-1})` (:math:`x_{-1} = 0`), a prior
:math:`p(z_t | h_t, z_{t-1})` and a decoder :math:`p(x_t | h_t, z_t)`.

* **MOT** (``srnn_mot``, boxes :math:`x_t \\in R^4`, :math:`z_t \\in R^4`): real Gaussian decoder
  (``gen_mean`` and ``gen_logvar``) and a **causal encoder without backward RNN**,

  .. math::
      q(z_t | h_t, x_t, z_{t-1}) = \\mathcal N\\big(\\mu, \\sigma^2\\big)(\\mathrm{MLP}_{gz}([h_t, x_t, z_{t-1}])).

  Scheduled sampling feeds the generation chain a *sample*
  :math:`\\hat x_t = \\mu_t + e^{\\frac12\\log\\sigma^2_t} \\varepsilon^x_t` (stop-gradient), with noise
  ``noise["x"]`` of shape (T, [B,] 4).
* **SC-ASS** (``srnn_scass``, power spectra, F = 513, :math:`z_t \\in R^{16}`): the same computation as
  the DVAE_SE SRNN_ss (zero-mean complex Gaussian, decoder log-variance, anti-causal encoder RNN), so it
  is :func:`~vdvae_jax.models.srnn.make_srnn` with the MixDVAE loss options.

Modes (as the reference conformance vectors name them): ``tf`` = ``scheduled_sampling=False`` (decoder
and prior on the teacher-forced :math:`h`), ``ss_pred0`` / ``ss_pred1`` = ``scheduled_sampling=True``
with ``use_pred`` 0 / 1 (the prior always reads :math:`h^{gen}`).

Losses, per frame (divide by T*B), as the MixDVAE code computes them: MOT
:math:`\\sum \\log\\sigma^2 + (x - \\mu)^2/\\sigma^2` (``gaussian_reference_nll=True``, no 1/2), SC-ASS
Itakura-Saito with :math:`v + 10^{-10}`; KL in the reference form without the ``-1`` and without an
epsilon on the prior variance (``kl_mode="reference"``, ``kl_var_eps=0``).

Checkpoint keys are renamed by :func:`mixdvae_state_dict_to_params` (``linear_0`` -> ``linear0``,
``inf_z_*`` -> ``inf_*``, ``prior_z_*`` -> ``prior_*``, ``gen_x_mean``/``gen_x_logvar``/``gen_x`` ->
``gen_mean``/``gen_logvar``/``gen_logvar``), so the parameter tree matches :mod:`~vdvae_jax.models.srnn`.

Pure helpers shared with the VEM-time source update (:mod:`vdvae_jax.inference.mixdvae_source`):
:func:`h_input_gates`, :func:`h_teacher_forced`, :func:`decoder_from_h`,
:func:`prior_from_h`, :func:`encoder_for`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import jax
import jax.numpy as jnp

from vdvae_jax.convert import state_dict_to_params
from vdvae_jax.distributions import Gaussian
from vdvae_jax.models.base import (DVAE, DVAEConfig, Outputs, draw_step, network_input, noise_array,
                                   step_noise)
from vdvae_jax.models.heads import decoder_head, gaussian_head, init_gaussian_head
from vdvae_jax.models.srnn import (SRNNConfig, init_h_chain, init_prior_and_decoder, init_srnn_block,
                                  make_srnn, srnn_encode_from_h)
from vdvae_jax.nn.layers import lstm_project, lstm_scan_gates, lstm_step, mlp, zero_carry

__all__ = [
    "MOTSRNNConfig",
    "SCASSSRNNConfig",
    "make_srnn_mot",
    "make_srnn_scass",
    "MIXDVAE_MODELS",
    "mixdvae_state_dict_to_params",
    "config_from_ini",
    "h_input_gates",
    "h_teacher_forced",
    "decoder_from_h",
    "prior_from_h",
    "encoder_for",
]


@dataclasses.dataclass(frozen=True)
class MOTSRNNConfig(DVAEConfig):
    """MixDVAE MOT SRNN (``cfg_dvae_single_mot.ini``): 1,540 parameters with the defaults.

    ``dense_hx_g`` of the reference config is not used by this model and has no field here.
    """

    x_dim: int = 4
    z_dim: int = 4
    observation: str = "gaussian"
    kl_mode: str = "reference"
    kl_var_eps: float = 0.0
    gaussian_reference_nll: bool = True
    dense_x_h: tuple[int, ...] = (4,)
    dim_rnn_h: int = 8
    dense_gz_z: tuple[int, ...] = (16, 8)
    dense_hz_z: tuple[int, ...] = (8, 8)
    dense_hz_x: tuple[int, ...] = (16,)
    scheduled_sampling: bool = True
    prior_on: str = "gen"

    def __post_init__(self):
        super().__post_init__()
        if self.observation != "gaussian":
            raise ValueError("the MOT SRNN has a real Gaussian decoder (observation='gaussian')")
        if self.prior_on not in ("gen", "decoder"):
            raise ValueError(f"prior_on must be 'gen' or 'decoder', got {self.prior_on!r}")


@dataclasses.dataclass(frozen=True)
class SCASSSRNNConfig(SRNNConfig):
    """MixDVAE SC-ASS SRNN (``cfg_dvae_single_scass_{wsj,cbf}.ini``): 884,993 parameters."""

    kl_mode: str = "reference"
    kl_var_eps: float = 0.0
    scheduled_sampling: bool = True

    def __post_init__(self):
        super().__post_init__()
        if self.observation != "is":
            raise ValueError("the SC-ASS SRNN models power spectra (observation='is')")


# ----------------------------------------------------------------------------------------------
# Pure pieces (also used by the VEM-time source update).


def h_input_gates(params, config, x_prev: jax.Array) -> jax.Array:
    """Input gates of the h chain, ``lstm_project(rnn_h, MLP_xh(phi(x_prev)))``, (T, [B,] 4H) for the
    frames ``x_prev`` that each step reads."""
    b = mlp(params.get("mlp_x_h"), network_input(config, x_prev), config.dense_x_h, config.activation)
    return lstm_project(params["rnn_h"]["forward"], b)


def h_teacher_forced(params, config, x: jax.Array) -> jax.Array:
    """:math:`h_t = \\mathrm{LSTM}(\\phi(x_{t-1}))` with :math:`x_{-1} = 0`; x is (T, [B,] x_dim)."""
    x_prev = jnp.concatenate([jnp.zeros_like(x[:1]), x[:-1]], axis=0)
    return lstm_scan_gates(params["rnn_h"]["forward"], h_input_gates(params, config, x_prev))


def decoder_from_h(params, config, z: jax.Array, h: jax.Array) -> Gaussian:
    """Decoder Gaussian over x from ``[h, z]`` (zero mean for the power model)."""
    u = mlp(params.get("mlp_hz_x"), jnp.concatenate([h, z], axis=-1), config.dense_hz_x, config.activation)
    return decoder_head(params, u, config)


def prior_from_h(params, config, z: jax.Array, h: jax.Array) -> Gaussian:
    """Prior :math:`p(z_t | h_t, z_{t-1})` at the sampled past (:math:`z_{-1} = 0`); time-major."""
    z_prev = jnp.concatenate([jnp.zeros_like(z[:1]), z[:-1]], axis=0)
    u = mlp(params.get("mlp_hz_z"), jnp.concatenate([h, z_prev], axis=-1), config.dense_hz_z, config.activation)
    return gaussian_head(params, u, "prior")


def _mot_encode_from_h(params, config, x, h, noise):
    """Causal MOT encoder: ``z_t ~ q(z_t | [h_t, x_t, z_{t-1}])``, sequential in t."""
    c = config

    def step(z_prev, inputs):
        h_t, x_t, noise_t = inputs
        u = mlp(params.get("mlp_gz_z"), jnp.concatenate([h_t, network_input(c, x_t), z_prev], axis=-1), c.dense_gz_z,
                c.activation)
        q_t = gaussian_head(params, u, "inf")
        z_t = q_t.sample(draw_step(noise_t, x.shape[1:-1] + (c.z_dim,)))
        return z_t, (z_t, q_t)

    z0 = jnp.zeros(x.shape[1:-1] + (c.z_dim,), h.dtype)
    _, (z, q) = jax.lax.scan(step, z0, (h, x, step_noise(noise, "z", x.shape[0])))
    return z, q


def encoder_for(config):
    """``encode(params, x, noise) -> (z, q, h_inf)`` of the model ``config`` describes (x time-major)."""
    if isinstance(config, MOTSRNNConfig):
        def encode(params, x, noise):
            h = h_teacher_forced(params, config, x)
            z, q = _mot_encode_from_h(params, config, x, h, noise)
            return z, q, h
        return encode

    def encode(params, x, noise):   # the teacher-forced SRNN encoder (no generation chain)
        h = h_teacher_forced(params, config, x)
        z, q, _ = srnn_encode_from_h(params, config, x, h, noise)
        return z, q, h
    return encode


# ----------------------------------------------------------------------------------------------
# Models.


def make_srnn_mot(config: MOTSRNNConfig = MOTSRNNConfig()) -> DVAE:
    """The MOT pre-training SRNN (see module docstring); ``forward(params, x, noise, use_pred=0.)``.

    ``noise``: key or ``{"z": (T,[B,]4), "x": (T,[B,]4) (scheduled sampling), "coin": (T,[B]) U[0,1)}``.
    """
    c = config
    act = c.activation

    def init(key, x):
        k = iter(jax.random.split(key, 8))
        params = {}
        init_h_chain(params, k, c)
        q_in = init_srnn_block(params, k, "mlp_gz_z", c.dense_gz_z, c.dim_rnn_h + c.x_dim + c.z_dim, act)
        params.update(init_gaussian_head(next(k), q_in, c.z_dim, "inf"))
        init_prior_and_decoder(params, k, c)
        return params

    def encode(params, x, noise):
        return _mot_encode_from_h(params, c, x, h_teacher_forced(params, c, x), noise)

    def decode(params, z, x):
        return decoder_from_h(params, c, z, h_teacher_forced(params, c, x))

    def prior(params, z, x):
        return prior_from_h(params, c, z, h_teacher_forced(params, c, x))

    def generation_chain(params, z, h_tf, coin, use_pred, noise):
        p_h = params["rnn_h"]["forward"]
        batch = z.shape[1:-1]

        def step(carry, inputs):
            state, x_hat = carry
            z_t, h_tf_t, coin_t, eps_t = inputs
            state, h_gen_t = lstm_step(p_h, state, lstm_project(p_h, mlp(params.get("mlp_x_h"),
                                                                             network_input(c, x_hat),
                                                                             c.dense_x_h, act)))
            h_t = jnp.where(coin_t[..., None] < use_pred, h_gen_t, h_tf_t)
            out_t = decoder_from_h(params, c, z_t, h_t)
            x_next = out_t.sample(draw_step(eps_t, batch + (c.x_dim,)))
            return (state, jax.lax.stop_gradient(x_next)), (out_t, h_gen_t, h_t)

        carry0 = (zero_carry(batch, c.dim_rnn_h, h_tf.dtype), jnp.zeros(batch + (c.x_dim,), h_tf.dtype))
        xs = (z, h_tf, coin, step_noise(noise, "x", z.shape[0]))
        _, (x_out, h_gen, h_used) = jax.lax.scan(step, carry0, xs)
        return x_out, h_gen, h_used

    def forward(params, x, noise, *, use_pred=0.0, mask=None):
        del mask  # causal encoder and decoder: end padding never reaches the valid frames
        """One pass; ``use_pred`` (scheduled sampling only) is the probability of the generated h."""
        h_tf = h_teacher_forced(params, c, x)
        z, q = _mot_encode_from_h(params, c, x, h_tf, noise)
        extras = {"h_inf": h_tf}
        if not c.scheduled_sampling:
            return Outputs(z, q, prior_from_h(params, c, z, h_tf), decoder_from_h(params, c, z, h_tf), extras)
        coin = noise_array(noise, "coin", x.shape[:-1], kind="uniform")
        x_out, h_gen, h_used = generation_chain(params, z, h_tf, coin, use_pred, noise)
        p = prior_from_h(params, c, z, h_gen if c.prior_on == "gen" else h_used)
        return Outputs(z, q, p, x_out, {**extras, "h_gen": h_gen})

    name = "srnn_mot"  # the registry name; the mode lives in config.scheduled_sampling
    return DVAE(name, c, init, forward, encode, decode, prior)


def make_srnn_scass(config: SCASSSRNNConfig = SCASSSRNNConfig()) -> DVAE:
    """The SC-ASS pre-training SRNN: :func:`~vdvae_jax.models.srnn.make_srnn` with the MixDVAE options."""
    model = make_srnn(config)
    return model._replace(name="srnn_scass")


MIXDVAE_MODELS = {
    "srnn_mot": (MOTSRNNConfig, make_srnn_mot),
    "srnn_scass": (SCASSSRNNConfig, make_srnn_scass),
}


# ----------------------------------------------------------------------------------------------
# Checkpoints and configs.

_RENAMES = (
    (re.compile(r"\.linear_(\d+)\."), r".linear\1."),
    (re.compile(r"^inf_z_(mean|logvar)\."), r"inf_\1."),
    (re.compile(r"^prior_z_(mean|logvar)\."), r"prior_\1."),
    (re.compile(r"^gen_x_(mean|logvar)\."), r"gen_\1."),
    (re.compile(r"^gen_x\."), r"gen_logvar."),
)


def mixdvae_state_dict_to_params(sd: Mapping) -> dict:
    """A MixDVAE SRNN state dict (``weights.npz`` / ``model_*.pt``) -> our SRNN parameter tree.

    The encoder RNN ``rnn_g`` is run by the reference on time-reversed input, so its ``_l0`` weights
    become ``params["rnn_g"]["backward"]``.
    """
    renamed = {}
    for key, value in sd.items():
        new = key
        for pattern, repl in _RENAMES:
            new = pattern.sub(repl, new)
        if new in renamed:
            raise ValueError(f"two checkpoint keys map to {new!r}")
        renamed[new] = value
    return state_dict_to_params(renamed, flipped={"rnn_g"})


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in str(text).replace(" ", "").split(",") if v)


def config_from_ini(cfg: Mapping, **overrides):
    """Model config from a MixDVAE ``config.ini`` given as ``{section: {key: str}}`` (model.json).

    The task (``[User] task_name``: ``MOT`` or ``SC-ASS``) picks the class; sizes come from
    ``[Network]``; ``[Training] schedule_sampling`` (absent in the VEM configs: True) sets the mode.
    """
    net = cfg["Network"]
    task = cfg.get("User", {}).get("task_name", "MOT" if int(net["x_dim"]) == 4 else "SC-ASS")
    ss = str(cfg.get("Training", {}).get("schedule_sampling", "True")).strip().lower() == "true"
    common = dict(x_dim=int(net["x_dim"]), z_dim=int(net["z_dim"]), activation=net.get("activation", "tanh"),
                  dense_x_h=_ints(net["dense_x_h"]), dim_rnn_h=int(net["dim_RNN_h"]),
                  dense_gz_z=_ints(net["dense_gz_z"]), dense_hz_z=_ints(net["dense_hz_z"]),
                  dense_hz_x=_ints(net["dense_hz_x"]), scheduled_sampling=ss)
    for key in ("num_RNN_h", "num_RNN_g"):
        if key in net and int(net[key]) != 1:
            raise ValueError(f"{key} = {net[key]}: only single-layer RNNs are supported")
    if task.upper() == "MOT":
        return MOTSRNNConfig(**{**common, **overrides})
    if task.upper() in ("SC-ASS", "SCASS"):
        common.update(dense_hx_g=_ints(net["dense_hx_g"]), dim_rnn_g=int(net["dim_RNN_g"]))
        return SCASSSRNNConfig(**{**common, **overrides})
    raise ValueError(f"unknown MixDVAE task {task!r}")
