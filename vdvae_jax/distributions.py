"""Distributions of the DVAE zoo: diagonal Gaussians, KL terms and observation likelihoods.

Latents are diagonal Gaussians parameterised by mean and **log-variance**, reparameterised as
:math:`z = \\mu + \\varepsilon \\odot e^{\\frac12 \\log\\sigma^2}`. They convert to ``distrax`` for users who
want the full distribution API (``Gaussian.to_distrax()``).

Observation models:

* ``"is"`` — zero-mean circular complex Gaussian on STFT coefficients, :math:`s_{ft} \\sim
  \\mathcal N_c(0, \\sigma^2_{ft})`, with the decoder output :math:`y = \\log \\sigma^2`. On the power
  spectrogram :math:`x = |s|^2` the negative log-likelihood is, up to terms constant in :math:`\\sigma`,
  the Itakura-Saito divergence :math:`d_{IS}(x | \\sigma^2) = x/\\sigma^2 - \\log(x/\\sigma^2) - 1`.
* ``"gaussian"`` — real Gaussian with decoder mean and log-variance (boxes, poses). The reference's
  "loss" is :math:`\\sum \\log\\sigma^2 + (x-\\mu)^2/\\sigma^2` (twice the NLL without :math:`\\log 2\\pi`);
  the exact NLL is available with ``reference=False``.
"""

from __future__ import annotations

from typing import NamedTuple

import distrax
import jax
import jax.numpy as jnp

__all__ = [
    "Gaussian",
    "standard_normal_like",
    "kl_gaussian",
    "itakura_saito",
    "complex_gaussian_nll",
    "gaussian_nll",
    "observation_nll",
    "KL_MODES",
]

KL_MODES = ("exact", "reference")


class Gaussian(NamedTuple):
    """Diagonal Gaussian with ``mean`` and ``logvar`` (natural log of the variance)."""

    mean: jax.Array
    logvar: jax.Array

    def sample(self, eps: jax.Array) -> jax.Array:
        """Reparameterised sample :math:`\\mu + \\varepsilon e^{\\frac12 \\log\\sigma^2}`."""
        return self.mean + eps * jnp.exp(0.5 * self.logvar)

    @property
    def variance(self) -> jax.Array:
        return jnp.exp(self.logvar)

    def to_distrax(self) -> distrax.Distribution:
        """Event-shaped ``distrax.MultivariateNormalDiag`` over the last axis."""
        return distrax.MultivariateNormalDiag(self.mean, jnp.exp(0.5 * self.logvar))


def standard_normal_like(x: jax.Array) -> Gaussian:
    return Gaussian(jnp.zeros_like(x), jnp.zeros_like(x))


def kl_gaussian(q: Gaussian, p: Gaussian, *, mode: str = "exact", var_eps: float = 0.0) -> jax.Array:
    """Analytic :math:`\\mathrm{KL}(q \\| p)` summed over all elements.

    .. math::
        \\mathrm{KL} = \\tfrac12 \\sum \\Big[\\log\\sigma_p^2 - \\log\\sigma_q^2
            + \\frac{\\sigma_q^2 + (\\mu_q - \\mu_p)^2}{\\sigma_p^2 + \\epsilon} - 1\\Big]

    Args:
      q, p: Gaussians of the same shape.
      mode: ``"exact"`` (the true KL) or ``"reference"`` (the published code's form, which omits the
        ``-1`` and so reports ``KL + n/2`` for ``n`` latent elements; gradients are identical).
      var_eps: :math:`\\epsilon` added to the prior variance in the denominator (1e-10 in DVAE/DVAE_SE
        training, 0 in MixDVAE and the SE E-step).
    """
    if mode not in KL_MODES:
        raise ValueError(f"unknown KL mode {mode!r}; expected one of {KL_MODES}")
    ratio = (jnp.exp(q.logvar) + (q.mean - p.mean) ** 2) / (jnp.exp(p.logvar) + var_eps)
    terms = p.logvar - q.logvar + ratio
    if mode == "exact":
        terms = terms - 1.0
    return 0.5 * jnp.sum(terms)


def itakura_saito(x: jax.Array, variance: jax.Array, eps: float = 0.0) -> jax.Array:
    """:math:`\\sum d_{IS}(x | v + \\epsilon) = \\sum [x/v' - \\log(x/v') - 1]` (``eps=1e-10`` in training)."""
    ratio = x / (variance + eps)
    return jnp.sum(ratio - jnp.log(ratio) - 1.0)


def complex_gaussian_nll(x: jax.Array, logvar: jax.Array) -> jax.Array:
    """Exact :math:`-\\log p(s | \\sigma^2) = \\sum [x e^{-y} + y + \\log\\pi]` for power ``x = |s|^2``."""
    return jnp.sum(x * jnp.exp(-logvar) + logvar + jnp.log(jnp.pi))


def gaussian_nll(x: jax.Array, mean: jax.Array, logvar: jax.Array, *, reference: bool = False) -> jax.Array:
    """Real Gaussian NLL; ``reference=True`` gives the published ``sum(logvar + (x-mean)^2/var)``."""
    quad = logvar + (x - mean) ** 2 * jnp.exp(-logvar)
    if reference:
        return jnp.sum(quad)
    return 0.5 * jnp.sum(quad + jnp.log(2.0 * jnp.pi))


def observation_nll(kind: str, x: jax.Array, out: Gaussian, *, is_eps: float = 1e-10,
                    reference: bool = False) -> jax.Array:
    """Reconstruction term of a model's observation model (``kind`` in ``{"is", "gaussian"}``)."""
    if kind == "is":
        return itakura_saito(x, jnp.exp(out.logvar), is_eps)
    if kind == "gaussian":
        return gaussian_nll(x, out.mean, out.logvar, reference=reference)
    raise ValueError(f"unknown observation model {kind!r}; expected 'is' or 'gaussian'")
