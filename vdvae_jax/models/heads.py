"""Gaussian heads shared by the zoo: posterior/prior ``*_mean``/``*_logvar`` and decoder outputs.

Head names follow the published checkpoints: ``inf_mean``/``inf_logvar`` (posterior),
``prior_mean``/``prior_logvar`` (learnt prior), ``gen_logvar`` (+ ``gen_mean`` for real Gaussian
observations) for the decoder. Heads are plain affine layers, no activation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vdvae_jax.distributions import Gaussian
from vdvae_jax.nn.layers import MLP, Dense, dense, mlp_out_dim

__all__ = ["init_dense", "init_mlp_block", "init_gaussian_head", "gaussian_head", "init_decoder_head",
           "decoder_head"]


def init_dense(key, in_dim: int, out_dim: int):
    return Dense(out_dim).init(key, jnp.zeros((in_dim,)))["params"]


def init_mlp_block(params: dict, key, name: str, widths, in_dim: int, activation: str) -> int:
    """Add MLP ``name`` to ``params`` when ``widths`` is non-empty; returns its output size."""
    if widths:
        params[name] = MLP(widths, activation).init(key, jnp.zeros((in_dim,)))["params"]
    return mlp_out_dim(in_dim, widths)


def init_gaussian_head(key, in_dim: int, out_dim: int, prefix: str) -> dict:
    k1, k2 = jax.random.split(key)
    return {f"{prefix}_mean": init_dense(k1, in_dim, out_dim),
            f"{prefix}_logvar": init_dense(k2, in_dim, out_dim)}


def gaussian_head(params, h: jax.Array, prefix: str) -> Gaussian:
    return Gaussian(dense(params[f"{prefix}_mean"], h), dense(params[f"{prefix}_logvar"], h))


def init_decoder_head(key, in_dim: int, config) -> dict:
    k1, k2 = jax.random.split(key)
    params = {"gen_logvar": init_dense(k1, in_dim, config.x_dim)}
    if config.observation == "gaussian":
        params["gen_mean"] = init_dense(k2, in_dim, config.x_dim)
    return params


def decoder_head(params, h: jax.Array, config) -> Gaussian:
    """Decoder Gaussian over x; the IS model has zero mean and log-variance ``gen_logvar(h)``."""
    logvar = dense(params["gen_logvar"], h)
    if config.observation == "gaussian":
        return Gaussian(dense(params["gen_mean"], h), logvar)
    return Gaussian(jnp.zeros_like(logvar), logvar)
