"""numpyro cross-check of the closed-form MixDVAE (MOT) ELBO that the VEM tracks."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.infer import Trace_ELBO

from vdvae_jax.bayes.mixdvae_mot import MOTInputs, mot_closed_form_elbo, mot_guide, mot_model
from vdvae_jax.inference import mixdvae as mv
from vdvae_jax.models.srnn_mixdvae import MOTSRNNConfig, make_srnn_mot

CFG = MOTSRNNConfig()


@functools.lru_cache(maxsize=None)
def _problem(S=2, T=4, K=2, seed=0):
    rng = np.random.default_rng(seed)
    start = np.array([[0.2, 0.3, 0.3, 0.2], [0.5, 0.6, 0.6, 0.5]])[:S]
    t = np.arange(T)[:, None, None]
    tracks = start[None] + 0.01 * t                                       # (T, S, 4)
    obs = tracks[:, :K] + 0.01 * rng.standard_normal((T, K, 4))
    obs[:, [0, 1]] = obs[:, [1, 0]] if T % 2 else obs[:, [0, 1]]
    obs[2, 1] = np.nan                                                    # one missing detection
    params = make_srnn_mot(CFG).init(jax.random.key(seed), jnp.zeros((3, 4)))
    data = mv.mot_data(params, obs.astype(np.float32), num_sources=S)
    alg = mv.mot_vem(CFG, mv.MOTOptions(init="constant", phi_ratio=0.2))
    state = jax.jit(alg.init)(jax.random.key(1), data)
    eps = jnp.asarray(rng.standard_normal((S, T, CFG.z_dim)), jnp.float32)
    new, info = jax.jit(alg.step)({"z": eps}, state, data)
    inputs = MOTInputs(data.obs, data.mask, state.phi, data.frame0, new.mean, state.mean, new.mean, new.var,
                       new.eta)
    return params, inputs, eps, info


def test_closed_form_elbo_is_what_the_vem_tracks():
    params, inputs, eps, info = _problem()
    terms = mot_closed_form_elbo(params, CFG, inputs, {"z": eps})
    np.testing.assert_allclose(terms["elbo"], info.elbo, rtol=1e-5)
    assert np.isfinite(float(info.elbo))


def test_numpyro_trace_elbo_agrees_with_closed_form():
    params, inputs, _, _ = _problem()
    n = 4000
    keys = jax.random.split(jax.random.key(7), n)
    elbo = Trace_ELBO()
    mc = jax.jit(jax.vmap(lambda k: -elbo.loss(k, {}, mot_model, mot_guide, params, CFG, inputs)))(keys)
    cf = jax.jit(jax.vmap(lambda k: mot_closed_form_elbo(params, CFG, inputs, k)["elbo"]))(
        jax.random.split(jax.random.key(8), n))
    mc, cf = np.asarray(mc, np.float64), np.asarray(cf, np.float64)
    assert np.all(np.isfinite(mc)) and np.all(np.isfinite(cf))
    se = np.sqrt(mc.var() / n + cf.var() / n)
    print(f"numpyro Trace_ELBO {mc.mean():.3f} (sd {mc.std():.2f}), closed form {cf.mean():.3f} "
          f"(sd {cf.std():.2f}), difference {mc.mean() - cf.mean():.3f}, standard error {se:.3f}, n = {n}")
    assert abs(mc.mean() - cf.mean()) < 4 * se, (mc.mean(), cf.mean(), se)
    # the closed form removes the w and s sampling noise: its spread (z only) is smaller
    assert cf.std() < mc.std()
    assert se < 0.05 * abs(cf.mean())
