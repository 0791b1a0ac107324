"""Frame-wise VAE, the non-dynamical baseline of the zoo.

.. math::
    p(x_{1:T}, z_{1:T}) = \\prod_t p(x_t | z_t) \\, \\mathcal N(z_t; 0, I), \\qquad
    q(z_{1:T} | x_{1:T}) = \\prod_t q(z_t | x_t).

Encoder ``mlp_x_z`` (513 -> 128, tanh) then heads ``inf_mean``/``inf_logvar``; decoder ``mlp_z_x`` with the
reversed widths (16 -> 128, tanh) then the head ``gen_logvar`` (+ ``gen_mean`` for Gaussian observations).
138,273 parameters at the speech configuration.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vdvae_jax.distributions import standard_normal_like
from vdvae_jax.models.base import DVAE, DVAEConfig, Outputs, network_input, noise_array
from vdvae_jax.models.heads import decoder_head, init_decoder_head, init_gaussian_head, gaussian_head
from vdvae_jax.nn.layers import MLP, mlp, mlp_out_dim

__all__ = ["VAEConfig", "make_vae"]


@dataclasses.dataclass(frozen=True)
class VAEConfig(DVAEConfig):
    """Widths of the frame-wise VAE; ``dense_z_x=None`` mirrors ``dense_x_z``."""

    dense_x_z: tuple[int, ...] = (128,)
    dense_z_x: tuple[int, ...] | None = None

    @property
    def decoder_widths(self) -> tuple[int, ...]:
        return tuple(reversed(self.dense_x_z)) if self.dense_z_x is None else self.dense_z_x


def make_vae(config: VAEConfig = VAEConfig()) -> DVAE:
    c = config

    def init(key, x):
        k = jax.random.split(key, 4)
        params = {}
        if c.dense_x_z:
            params["mlp_x_z"] = MLP(c.dense_x_z, c.activation).init(k[0], x[0])["params"]
        params.update(init_gaussian_head(k[1], mlp_out_dim(c.x_dim, c.dense_x_z), c.z_dim, "inf"))
        if c.decoder_widths:
            params["mlp_z_x"] = MLP(c.decoder_widths, c.activation).init(
                k[2], jnp.zeros((c.z_dim,)))["params"]
        params.update(init_decoder_head(k[3], mlp_out_dim(c.z_dim, c.decoder_widths), c))
        return params

    def encode(params, x, noise):
        h = mlp(params.get("mlp_x_z"), network_input(c, x), c.dense_x_z, c.activation)
        q = gaussian_head(params, h, "inf")
        z = q.sample(noise_array(noise, "z", q.mean.shape))
        return z, q

    def decode(params, z, x=None):
        h = mlp(params.get("mlp_z_x"), z, c.decoder_widths, c.activation)
        return decoder_head(params, h, c)

    def prior(params, z, x=None):
        return standard_normal_like(z)

    def forward(params, x, noise, *, mask=None):
        del mask  # frame-wise: padding never reaches valid frames
        z, q = encode(params, x, noise)
        return Outputs(z, q, prior(params, z), decode(params, z), {})

    return DVAE("vae", c, init, forward, encode, decode, prior)
