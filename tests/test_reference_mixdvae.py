"""MixDVAE SRNNs and the VEM-time source update: reference conformance and small oracles."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdvae_jax.inference import mixdvae_source as ms
from vdvae_jax.models.srnn_mixdvae import (MIXDVAE_MODELS, MOTSRNNConfig, SCASSSRNNConfig, make_srnn_mot,
                                           make_srnn_scass)

_mot_update = jax.jit(ms.mot_source_update, static_argnums=(1,))
_scass_update = jax.jit(ms.scass_source_update, static_argnums=(1,), static_argnames=("complex_noise",))

SHARED = Path(os.environ.get("VDVAE_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
MIXDVAE = SHARED / "reference" / "mixdvae"


@pytest.mark.skipif(not (MIXDVAE / "mot" / "vectors.npz").is_file(), reason="reference vectors not available")
@pytest.mark.parametrize("tag", ["mot", "scass_wsj", "scass_cbf"])
def test_reference_vectors(tag):
    from vdvae_jax.reference_mixdvae import check_model_dir

    results = check_model_dir(MIXDVAE / tag)
    modes = {r.mode for r in results}
    expected = {"tf", "ss_pred0", "ss_pred1", "vem"} | ({"vem_init"} if tag != "mot" else set())
    assert modes == expected
    for r in results:
        assert r.passed, r.line() + "\n" + "\n".join(r.failures)
        assert r.n_arrays >= 1


def _random_params(config, seed=0):
    """A parameter tree of the given MixDVAE SRNN config, drawn with numpy (cheaper than flax init)."""
    rng = np.random.default_rng(seed)
    c = config

    def dense(i, o):
        return {"kernel": rng.uniform(-1, 1, (i, o)).astype(np.float32) / np.sqrt(i),
                "bias": rng.uniform(-0.3, 0.3, (o,)).astype(np.float32)}

    def mlp(i, widths):
        out = {}
        for n, w in enumerate(widths):
            out[f"linear{n}"], i = dense(i, w), w
        return out, i

    def lstm(i, h):
        return {"kernel_ih": rng.uniform(-1, 1, (i, 4 * h)).astype(np.float32) / np.sqrt(h),
                "kernel_hh": rng.uniform(-1, 1, (h, 4 * h)).astype(np.float32) / np.sqrt(h),
                "bias": rng.uniform(-0.3, 0.3, (4 * h,)).astype(np.float32)}

    p = {}
    p["mlp_x_h"], a = mlp(c.x_dim, c.dense_x_h)
    p["rnn_h"] = {"forward": lstm(a, c.dim_rnn_h)}
    if isinstance(c, MOTSRNNConfig):
        enc_in = c.dim_rnn_h + c.x_dim + c.z_dim
    else:
        p["mlp_hx_g"], a = mlp(c.dim_rnn_h + c.x_dim, c.dense_hx_g)
        p["rnn_g"] = {"backward": lstm(a, c.dim_rnn_g)}
        enc_in = c.dim_rnn_g + c.z_dim
    p["mlp_gz_z"], a = mlp(enc_in, c.dense_gz_z)
    p["inf_mean"], p["inf_logvar"] = dense(a, c.z_dim), dense(a, c.z_dim)
    p["mlp_hz_z"], a = mlp(c.dim_rnn_h + c.z_dim, c.dense_hz_z)
    p["prior_mean"], p["prior_logvar"] = dense(a, c.z_dim), dense(a, c.z_dim)
    p["mlp_hz_x"], a = mlp(c.dim_rnn_h + c.z_dim, c.dense_hz_x)
    p["gen_logvar"] = dense(a, c.x_dim)
    if isinstance(c, MOTSRNNConfig):
        p["gen_mean"] = dense(a, c.x_dim)
    return jax.tree.map(jnp.asarray, p)


def test_registry_entries():
    assert MIXDVAE_MODELS["srnn_mot"] == (MOTSRNNConfig, make_srnn_mot)
    assert MIXDVAE_MODELS["srnn_scass"] == (SCASSSRNNConfig, make_srnn_scass)
    shapes = jax.eval_shape(make_srnn_mot().init, jax.random.key(0), jnp.zeros((5, 4)))
    assert jax.tree.map(jnp.shape, shapes) == jax.tree.map(jnp.shape, _random_params(MOTSRNNConfig()))
    params = shapes
    # 1,540 in torch, which stores the LSTM bias twice (b_ih + b_hh, 4H = 32 values each)
    assert sum(p.size for p in jax.tree.leaves(params)) == 1540 - 32


# ----------------------------------------------------------------------------------------------
# Python-loop oracle of the MOT VEM-time recursion (full 4x4 matrices, as the reference builds them).


def _np(tree):
    return jax.tree.map(np.asarray, tree)


def _lstm(p, state, x):
    h, c = state
    gates = x @ p["kernel_ih"] + p["bias"] + h @ p["kernel_hh"]
    i, f, g, o = np.split(gates, 4, axis=-1)
    sig = lambda a: 1.0 / (1.0 + np.exp(-a))  # noqa: E731
    c = sig(f) * c + sig(i) * np.tanh(g)
    h = sig(o) * np.tanh(c)
    return (h, c), h


def _mlp(p, x, n):
    for k in range(n):
        x = np.tanh(x @ p[f"linear{k}"]["kernel"] + p[f"linear{k}"]["bias"])
    return x


def _lin(p, x):
    return x @ p["kernel"] + p["bias"]


def _mot_oracle(p, x_init, eta, phi_inv, obs, frame0, eps):
    """One sequence (no batch axis): x_init (T,4), eta (T,K), phi_inv (T,K,4,4), obs (T,K,4)."""
    T = x_init.shape[0]
    H = p["rnn_h"]["forward"]["kernel_hh"].shape[0]
    zero = (np.zeros(H), np.zeros(H))
    # encoder: h_inf over x_{t-1}, z_t from [h_t, x_t, z_{t-1}]
    state, z_prev, zs, qm, qv = zero, np.zeros(4), [], [], []
    for t in range(T):
        x_prev = x_init[t - 1] if t > 0 else np.zeros(4)
        state, h = _lstm(p["rnn_h"]["forward"], state, _mlp(p["mlp_x_h"], x_prev, 1))
        u = _mlp(p["mlp_gz_z"], np.concatenate([h, x_init[t], z_prev]), 2)
        m, lv = _lin(p["inf_mean"], u), _lin(p["inf_logvar"], u)
        z_prev = m + np.exp(0.5 * lv) * eps[t]
        zs.append(z_prev), qm.append(m), qv.append(lv)
    # decoder + E-S
    state, inp, out = zero, frame0, []
    for t in range(T):
        state, h = _lstm(p["rnn_h"]["forward"], state, _mlp(p["mlp_x_h"], inp, 1))
        u = _mlp(p["mlp_hz_x"], np.concatenate([h, zs[t]]), 1)
        mean, lv = _lin(p["gen_mean"], u), _lin(p["gen_logvar"], u)
        if t == 0:
            mean, lv = frame0, np.full(4, np.log(1e-5))
        lam = np.diag(1.0 / np.exp(lv))
        vec = lam @ mean
        for k in range(eta.shape[1]):
            if np.isfinite(eta[t, k]) and np.all(np.isfinite(obs[t, k])):
                lam = lam + eta[t, k] * phi_inv[t, k]
                vec = vec + eta[t, k] * phi_inv[t, k] @ obs[t, k]
        S = np.linalg.inv(lam)
        m = S @ vec
        z_before = zs[t - 1] if t > 0 else np.zeros(4)
        pu = _mlp(p["mlp_hz_z"], np.concatenate([h, z_before]), 2)
        out.append(dict(m=m, S=S, mean=mean, lv=lv, pm=_lin(p["prior_mean"], pu), plv=_lin(p["prior_logvar"], pu)))
        inp = m
    return zs, out


def _mot_problem(T=5, B=2, K=3, seed=0):
    rng = np.random.default_rng(seed)
    frame0 = rng.uniform(0.2, 0.8, (B, 4))
    x_init = frame0[None] + 0.01 * rng.standard_normal((T, B, 4))
    obs = frame0[None, :, None] + 0.01 * rng.standard_normal((T, B, K, 4))
    sd = rng.uniform(1e-3, 6e-3, (B, K, 4))
    phi_inv = np.broadcast_to(1.0 / sd**2, (T, B, K, 4)).copy()
    eta = rng.dirichlet(np.ones(K), (T, B))
    eps = rng.standard_normal((T, B, 4))
    return [a.astype(np.float32) for a in (x_init, eta, phi_inv, obs, frame0, eps)]


def test_mot_source_update_matches_loop_oracle():
    config = MOTSRNNConfig()
    x_init, eta, phi_inv, obs, frame0, eps = _mot_problem()
    eta[2, 1, 0] = np.nan                  # a missing detection, marked the reference's way
    obs[2, 1, 0] = np.nan
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), _random_params(config, 1))
        res = _mot_update(params, config, *(jnp.asarray(a, jnp.float64) for a in
                                                     (x_init, eta, phi_inv, obs, frame0)),
                                   {"z": jnp.asarray(eps, jnp.float64)})
        res = _np(res)
    p = _np(params)
    T, B = x_init.shape[:2]
    for b in range(B):
        phi_full = phi_inv[:, b, :, :, None] * np.eye(4)
        zs, out = _mot_oracle(p, x_init[:, b].astype(np.float64), eta[:, b], phi_full, obs[:, b],
                              frame0[b].astype(np.float64), eps[:, b].astype(np.float64))
        np.testing.assert_allclose(res.z[:, b], np.stack(zs), rtol=1e-9, atol=1e-12)
        for name, ours in [("m", res.mean), ("mean", res.dec.mean), ("lv", res.dec.logvar),
                           ("pm", res.p.mean), ("plv", res.p.logvar)]:
            np.testing.assert_allclose(ours[:, b], np.stack([o[name] for o in out]), rtol=1e-8, atol=1e-12,
                                       err_msg=name)
        S = np.stack([o["S"] for o in out])
        np.testing.assert_allclose(S, res.var[:, b, :, None] * np.eye(4), rtol=1e-8, atol=1e-20)
    # loss terms: reference formulas
    steps = T * B
    recon = np.sum(res.dec.logvar + (res.mean - res.dec.mean) ** 2 / np.exp(res.dec.logvar)) / steps
    kl = -0.5 * np.sum(res.q.logvar - res.p.logvar - (np.exp(res.q.logvar) + (res.q.mean - res.p.mean) ** 2)
                       / np.exp(res.p.logvar)) / steps
    np.testing.assert_allclose([res.recon, res.kl, res.loss], [recon, kl, recon + kl], rtol=1e-10)


def test_mot_missing_observations_are_finite_and_masked():
    config = MOTSRNNConfig()
    x_init, eta, phi_inv, obs, frame0, eps = _mot_problem(T=6, seed=3)
    params = _random_params(config, 2)
    noise = {"z": jnp.asarray(eps)}
    # NaN rows (reference convention), eta = 0 rows, and an explicit mask all mean "missing"
    eta_nan, obs_nan = eta.copy(), obs.copy()
    eta_nan[3] = np.nan
    obs_nan[3] = np.nan
    obs_nan[1, 0, 2] = np.nan
    eta_nan[1, 0, 2] = np.nan
    mask = np.ones(eta.shape, bool)
    mask[3] = False
    mask[1, 0, 2] = False
    eta_zero, obs_zero = np.where(mask, eta, 0.0), np.where(mask[..., None], obs, 0.0)
    a = _mot_update(params, config, x_init, eta_nan, phi_inv, obs_nan, frame0, noise)
    b = _mot_update(params, config, x_init, eta_zero, phi_inv, obs_zero, frame0, noise)
    c = _mot_update(params, config, x_init, eta, phi_inv, obs_nan, frame0, noise, mask=jnp.asarray(mask))
    for res in (a, b, c):
        for leaf in jax.tree.leaves(res):
            assert np.all(np.isfinite(np.asarray(leaf)))
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(a.mean, c.mean, rtol=1e-6, atol=1e-7)
    # every detection missing at t = 3: pure prediction step
    np.testing.assert_allclose(a.mean[3], a.dec.mean[3], rtol=1e-6)
    np.testing.assert_allclose(a.var[3], np.exp(a.dec.logvar[3]), rtol=1e-5)
    # gradients stay finite with masked NaN data
    g = jax.jit(jax.grad(lambda p: ms.mot_source_update(p, config, x_init, eta_nan, phi_inv, obs_nan, frame0,
                                                noise).loss))(params)
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(g))


def test_scass_source_update_options():
    config = SCASSSRNNConfig(x_dim=9, z_dim=3, dense_x_h=(8,), dim_rnn_h=6, dense_hx_g=(8,), dim_rnn_g=5,
                             dense_gz_z=(7,), dense_hz_z=(7,), dense_hz_x=(8,))
    T, B, F = 5, 2, 9
    rng = np.random.default_rng(0)
    mix = (rng.standard_normal((T, B, F)) + 1j * rng.standard_normal((T, B, F))).astype(np.complex64)
    power = (np.abs(mix) ** 2).astype(np.float32)
    params = _random_params(config)
    s0 = ms.scass_vem_initialization(params, config, power, jax.random.key(1))
    assert s0.shape == (T, B, F) and np.all(np.asarray(s0) > 0)
    v_x = 0.03 * power
    half, key = jnp.full((T, B, F), 0.5), jax.random.key(2)
    results = {}
    for kind in ms.COMPLEX_NOISE:
        res = results[kind] = _scass_update(params, config, s0, half, v_x, mix, key, complex_noise=kind)
        assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(res))
        np.testing.assert_allclose(res.v_phi, 1.0 / (0.5 / v_x + 1.0 / res.v_theta_s), rtol=1e-5)
        np.testing.assert_allclose(res.mu, res.v_phi * 0.5 / v_x * mix, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(res.s_power, np.abs(res.s) ** 2, rtol=1e-4)
    # uniform noise (reference bug): s - mu has non-negative real and imaginary parts
    res = results["uniform"]
    d = np.asarray(res.s - res.mu)
    assert np.all(d.real >= -1e-6) and np.all(d.imag >= -1e-6)
    # eta = 0: the source posterior is the DVAE prior
    res0 = _scass_update(params, config, s0, jnp.zeros((T, B, F)), v_x, mix, key, complex_noise="uniform")
    np.testing.assert_allclose(res0.v_phi, res0.v_theta_s, rtol=1e-6)
    assert np.all(np.asarray(res0.mu) == 0)
    with pytest.raises(ValueError):
        ms.scass_source_update(params, config, s0, 0.5, v_x, mix, jax.random.key(2), complex_noise="laplace")
