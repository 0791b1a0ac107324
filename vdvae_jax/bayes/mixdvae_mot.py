"""The MixDVAE MOT model and its VEM variational family as numpyro ``model`` / ``guide`` functions.

One sequence (no batch axis), S sources, T frames, K detections. Network parameters are passed in (the
pure functions of :mod:`vdvae_jax.models.srnn_mixdvae`), so no ``numpyro.param`` sites exist and
``Trace_ELBO().loss(key, {}, mot_model, mot_guide, params, config, inputs)`` is minus a one-particle ELBO.

**Generative model** (the one the VEM's closed-form ELBO refers to; see :mod:`vdvae_jax.inference.mixdvae`).
The DVAE's deterministic chain is the *plug-in* chain of E-S, driven by a fixed point estimate
:math:`\\bar m` (the VEM's current posterior means): :math:`h_0 = \\mathrm{LSTM}(0, \\phi(s^{start}))`,
:math:`h_t = \\mathrm{LSTM}(h_{t-1}, \\phi(\\bar m_{t-1}))`. For each source n

.. math::
    z_t \\sim \\mathcal N(\\mu_p(h_t, z_{t-1}), \\sigma_p^2), \\quad
    s_0 \\sim \\mathcal N(s^{start}, \\sigma_0^2), \\quad s_t \\sim \\mathcal N(\\mu_\\theta(h_t, z_t),
    \\sigma_\\theta^2(h_t, z_t))\\ (t \\ge 1),

and for each present detection :math:`w_{tk} \\sim \\mathrm{Cat}(1/S)`,
:math:`o_{tk} \\sim \\mathcal N(s_{t w_{tk}}, \\Phi_{tk})` (missing detections are masked out).

**Guide** :math:`q(w) q(s) q(z)`: :math:`q(w_{tk}) = \\mathrm{Cat}(\\eta_{tk\\cdot})`,
:math:`q(s_t) = \\mathcal N(m_t, \\Sigma_t)` (diagonal), and :math:`q(z)` the DVAE's causal encoder
run on the encoder input :math:`x^{enc}` (the previous iteration's means), sampled step by step.

:func:`mot_closed_form_elbo` is the same bound computed as the VEM does (exact over w and s, given a
sampled z); its expectation over z equals numpyro's ``Trace_ELBO`` expectation (checked in
tests/test_bayes.py).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist

from vdvae_jax.distributions import Gaussian
from vdvae_jax.inference.mixdvae import mot_elbo_terms
from vdvae_jax.models.srnn_mixdvae import decoder_from_h, encoder_for, h_teacher_forced, prior_from_h
from vdvae_jax.models.heads import gaussian_head
from vdvae_jax.nn.layers import lstm_project, lstm_step, mlp, zero_carry

__all__ = ["MOTInputs", "mot_model", "mot_guide", "mot_closed_form_elbo", "plugin_chain"]


class MOTInputs(NamedTuple):
    """obs (T, K, 4) (0 where missing), mask (T, K), phi (T, K, 4) diagonal Phi, start (S, 4) pinned
    start boxes, m_plugin (S, T, 4) drives the DVAE chain; guide: x_enc (S, T, 4) encoder input,
    mean/var (S, T, 4) q(s), eta (S, T, K) q(w); t0_var the pinned start variance."""

    obs: jax.Array
    mask: jax.Array
    phi: jax.Array
    start: jax.Array
    m_plugin: jax.Array
    x_enc: jax.Array
    mean: jax.Array
    var: jax.Array
    eta: jax.Array
    t0_var: float = 1e-5


def plugin_chain(params, config, m_plugin, start):
    """Decoder-chain LSTM outputs (T, H) driven by ``start`` at t = 0 and ``m_plugin[t-1]`` after."""
    x_in = jnp.concatenate([start[None], m_plugin[:-1]], axis=0)
    p_h = params["rnn_h"]["forward"]

    def step(state, x):
        b = mlp(params.get("mlp_x_h"), x, config.dense_x_h, config.activation)
        return lstm_step(p_h, state, lstm_project(p_h, b))

    _, h = jax.lax.scan(step, zero_carry((), config.dim_rnn_h), x_in)
    return h


def _normal(g: Gaussian):
    return dist.Normal(g.mean, jnp.exp(0.5 * g.logvar)).to_event(1)


def mot_model(params, config, inputs: MOTInputs):
    S, T = inputs.m_plugin.shape[:2]
    K = inputs.obs.shape[1]
    h = jax.vmap(lambda m, s0: plugin_chain(params, config, m, s0))(inputs.m_plugin, inputs.start)  # (S,T,H)
    z_prev = jnp.zeros((S, config.z_dim))
    s_all = []
    for t in range(T):
        with numpyro.plate("sources", S, dim=-1):
            pz = gaussian_head(params, mlp(params.get("mlp_hz_z"), jnp.concatenate([h[:, t], z_prev], -1),
                                           config.dense_hz_z, config.activation), "prior")
            z_t = numpyro.sample(f"z_{t}", _normal(pz))
            if t == 0:
                dec = Gaussian(inputs.start, jnp.full(inputs.start.shape, math.log(inputs.t0_var)))
            else:
                dec = decoder_from_h(params, config, z_t, h[:, t])
            s_t = numpyro.sample(f"s_{t}", _normal(dec))
        z_prev = z_t
        s_all.append(s_t)
        with numpyro.plate(f"obs_{t}", K, dim=-1), numpyro.handlers.mask(mask=inputs.mask[t]):
            w_t = numpyro.sample(f"w_{t}", dist.Categorical(probs=jnp.full((K, S), 1.0 / S)))
            numpyro.sample(f"o_{t}", dist.Normal(s_t[w_t], jnp.sqrt(inputs.phi[t])).to_event(1),
                           obs=inputs.obs[t])


def mot_guide(params, config, inputs: MOTInputs):
    S, T = inputs.mean.shape[:2]
    K = inputs.obs.shape[1]
    h_enc = jax.vmap(lambda x: h_teacher_forced(params, config, x))(inputs.x_enc)       # (S, T, H)
    z_prev = jnp.zeros((S, config.z_dim))
    for t in range(T):
        with numpyro.plate("sources", S, dim=-1):
            u = mlp(params.get("mlp_gz_z"), jnp.concatenate([h_enc[:, t], inputs.x_enc[:, t], z_prev], -1),
                    config.dense_gz_z, config.activation)
            z_prev = numpyro.sample(f"z_{t}", _normal(gaussian_head(params, u, "inf")))
            numpyro.sample(f"s_{t}", dist.Normal(inputs.mean[:, t], jnp.sqrt(inputs.var[:, t])).to_event(1))
        probs = jnp.where(inputs.mask[t][:, None], inputs.eta[:, t].T, 1.0 / S)            # (K, S)
        with numpyro.plate(f"obs_{t}", K, dim=-1), numpyro.handlers.mask(mask=inputs.mask[t]):
            numpyro.sample(f"w_{t}", dist.Categorical(probs=probs))


def mot_closed_form_elbo(params, config, inputs: MOTInputs, noise):
    """The VEM's ELBO (exact over w, s) at the z drawn from the guide's encoder with ``noise`` (a key
    or ``{"z": (S, T, Z)}``). Returns the dict of :func:`~vdvae_jax.inference.mixdvae.mot_elbo_terms`."""
    S = inputs.mean.shape[0]
    encode = encoder_for(config)
    keys = jax.random.split(noise, S) if isinstance(noise, jax.Array) and jnp.issubdtype(
        noise.dtype, jax.dtypes.prng_key) else noise

    def one(x_enc, m, start, k):
        z, q, _ = encode(params, x_enc, k)
        h = plugin_chain(params, config, m, start)
        dec = decoder_from_h(params, config, z, h)
        first = (jnp.arange(m.shape[0]) == 0)[:, None]
        dec = Gaussian(jnp.where(first, start, dec.mean), jnp.where(first, math.log(inputs.t0_var), dec.logvar))
        return dec, q, prior_from_h(params, config, z, h)

    dec, q, p = jax.vmap(one)(inputs.x_enc, inputs.m_plugin, inputs.start, keys)
    return mot_elbo_terms(inputs.eta, inputs.mask, inputs.obs, inputs.phi, inputs.mean, inputs.var, dec, q, p)
