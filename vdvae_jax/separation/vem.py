"""MixDVAE SC-ASS separation of a batch of mixtures with the generic VEM
(:func:`vdvae_jax.inference.mixdvae.scass_vem`): sources vmapped with per-source priors stacked.

The mixtures (M, T, F) run as the VEM's in-model batch, time-major (T, M, F); without fine-tuning and
without a convergence test the sequences are independent, so this equals separating them one by one.
The estimate of source n is the posterior mean :math:`\\mu_n` of the last iteration (complex STFT).
"""

from __future__ import annotations

import jax.numpy as jnp

from vdvae_jax.inference.base import resolve_devices
from vdvae_jax.inference.mixdvae import SCASSOptions, scass_data, scass_vem, solve, stack_params

__all__ = ["mixdvae_separate"]


def mixdvae_separate(config, params_list, mix, key, *, n_iter: int = 70,
                     options: SCASSOptions = SCASSOptions(), devices=None):
    """Complex source estimates (M, S, T, F) and the per-iteration ELBO (n_iter,) for mixtures
    ``mix`` (M, T, F) complex; ``params_list`` = one SRNN parameter tree per source (same ``config``).

    ``devices``: split the M mixtures over this many devices (or this list), see
    :func:`~vdvae_jax.inference.mixdvae.solve`; M must divide evenly. The ELBO is then summed over the
    groups (group i runs with keys ``fold_in(key, i)``, so estimates differ from one device by the draws)."""
    mix = jnp.asarray(mix)
    if mix.ndim != 3 or not jnp.iscomplexobj(mix):
        raise ValueError(f"mix must be complex (M, T, F), got {mix.dtype} {mix.shape}")
    alg = scass_vem(config, options, record=False)
    data = scass_data(stack_params(list(params_list)), jnp.swapaxes(mix, 0, 1))
    state, infos = solve(alg, key, data, n_iter, devices=devices)
    split = len(resolve_devices(devices)) > 1   # as solve decides: only then a leading device axis
    elbo = jnp.sum(infos.elbo, axis=0) if split else infos.elbo
    return jnp.transpose(state.mu, (2, 1, 0, 3)), elbo
