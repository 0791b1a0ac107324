"""DDGM noise models (LV, NO, NOLV) and the U-NA / U-ND / U-NDA configurations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdvae_jax import models
from vdvae_jax.inference import ddgm
from vdvae_jax.models.noise_models import NoiseModelConfig, make_noise_model

F, Z, T = 12, 3, 9


@pytest.fixture(scope="module")
def speech():
    model = models.build("rvae_causal", x_dim=F, z_dim=Z, dim_rnn_g_x=8, dim_rnn_g_z=8, dim_rnn_h=8,
                         input_transform="log")
    params = model.init(jax.random.key(0), jnp.ones((T, F)))
    return model, params


def _noise(kind):
    return make_noise_model(NoiseModelConfig(kind=kind, x_dim=F, z_dim=Z, dim_rnn=6, dense=(5,)))


def _toy_power(key, t=T, batch=()):
    k1, k2 = jax.random.split(key)
    speech = jnp.exp(2.0 * jax.random.normal(k1, (t,) + batch + (F,)))
    return speech + 0.5 * jax.random.exponential(k2, (t,) + batch + (F,))


@pytest.mark.parametrize("kind", ["lv", "no", "nolv"])
@pytest.mark.parametrize("batch", [(), (2,)])
def test_noise_model_shapes_finite(kind, batch):
    nm = _noise(kind)
    params = nm.init(jax.random.key(1))
    x = _toy_power(jax.random.key(2), batch=batch)
    z = jax.random.normal(jax.random.key(3), (T,) + batch + (Z,))
    out = nm.apply(params, x, z)
    assert out.shape == (T,) + batch + (F,)
    assert np.all(np.isfinite(np.asarray(out)))


@pytest.mark.parametrize("kind", ["no", "nolv"])
def test_scan_equals_step_loop(kind):
    """The NO/NOLV recurrence as one scan equals frame-by-frame steps; frame t never sees x_t."""
    nm = _noise(kind)
    params = nm.init(jax.random.key(4))
    x = _toy_power(jax.random.key(5), batch=(2,))
    z = jax.random.normal(jax.random.key(6), (T, 2, Z))
    full = nm.apply(params, x, z)
    carry, outs = nm.init_carry((2,)), []
    for t in range(T):
        carry, o = nm.step(params, carry, x[t], z[t])
        outs.append(o)
    np.testing.assert_allclose(np.stack(outs), full, rtol=1e-5, atol=1e-5)
    x2 = x.at[4].multiply(100.0)  # changing x_4 leaves frames <= 4 unchanged
    np.testing.assert_array_equal(nm.apply(params, x2, z)[:5], full[:5])
    assert not np.allclose(nm.apply(params, x2, z)[5], full[5])


def test_lv_is_bidirectional_and_masked():
    nm = _noise("lv")
    params = nm.init(jax.random.key(7))
    z = jax.random.normal(jax.random.key(8), (T, Z))
    full = nm.apply(params, None, z)
    z2 = z.at[-1].add(5.0)
    assert not np.allclose(nm.apply(params, None, z2)[0], full[0])  # frame 1 sees z_T
    zp = jnp.concatenate([z, 7.0 * jnp.ones((3, Z))])  # end padding is masked out
    mask = jnp.arange(T + 3) < T
    np.testing.assert_allclose(nm.apply(params, None, zp, mask)[:T], full, rtol=1e-5, atol=1e-6)


def test_bad_config_and_head_bias():
    with pytest.raises(ValueError, match="kind"):
        NoiseModelConfig(kind="nmf")
    nm = _noise("no")
    with pytest.raises(ValueError, match="head_bias"):
        nm.init(jax.random.key(0), head_bias=jnp.zeros(F + 1))
    p = nm.init(jax.random.key(0), head_bias=jnp.full(F, 3.0))
    np.testing.assert_array_equal(p["head"]["bias"], 3.0)
    with pytest.raises(ValueError, match="noisy power"):
        nm.apply(p, None, jnp.zeros((T, Z)))


def test_loss_is_formula_and_frozen_decoder(speech):
    model, params = speech
    nm = _noise("nolv")
    cfg = ddgm.DDGMConfig(beta=0.5)
    P = _toy_power(jax.random.key(9))
    t = ddgm.fresh_trainable(model, nm, params, jax.random.key(10), cfg)
    enc, frozen = ddgm.split_speech_params(model, params, cfg)
    assert "gen_logvar" in frozen and "rnn_h" in frozen and "rnn_g_x" in enc
    data = ddgm.DDGMData(P, None, frozen)
    key = jax.random.key(11)
    loss, (recon, kl) = ddgm.loss_fn(model, nm, cfg, t, data, key)
    v_s, log_vn, out = ddgm.forward(model, nm, t, data, key)
    V = v_s + jnp.exp(log_vn)
    want_recon = float(jnp.sum(P / V - jnp.log(P / V) - 1) / T)
    np.testing.assert_allclose(recon, want_recon, rtol=1e-5)
    np.testing.assert_allclose(loss, recon + 0.5 * kl, rtol=1e-6)
    # a mask equals the unpadded loss
    Pp = jnp.concatenate([P, jnp.zeros((4, F))])
    lp, _ = ddgm.loss_fn(model, nm, cfg, t, ddgm.DDGMData(Pp, jnp.arange(T + 4) < T, frozen), key)
    np.testing.assert_allclose(lp, loss, rtol=1e-5)
    G, _, _ = ddgm.wiener_gain(model, nm, cfg, t, data, key)
    assert np.all((np.asarray(G) >= 0) & (np.asarray(G) <= 1))


def test_una_loss_decreases(speech):
    model, params = speech
    nm = _noise("nolv")
    cfg = ddgm.DDGMConfig(n_iter=30, lr=1e-2, noise_init="floor", wf_mode="mean")
    P = _toy_power(jax.random.key(12))
    _, frozen = ddgm.split_speech_params(model, params, cfg)
    alg = ddgm.make_adaptation(model, nm, cfg)
    state = alg.init(ddgm.fresh_trainable(model, nm, params, jax.random.key(13), cfg, P))
    step = jax.jit(chex.assert_max_traces(alg.step, n=1))  # one trace for all iterations
    data = ddgm.DDGMData(P, None, frozen)
    losses = []
    for i in range(cfg.n_iter):
        state, info = step(jax.random.key(100 + i), state, data)
        losses.append(float(info.loss))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    # the decoder (frozen) is not part of the trainable tree
    assert set(state.trainable["speech"]) <= set(ddgm.split_speech_params(model, params, cfg)[0])
    # train_encoder=False: the encoder stays where it started, the noise net moves
    start = ddgm.fresh_trainable(model, nm, params, jax.random.key(13), cfg, P)
    alg = ddgm.make_adaptation(model, nm, ddgm.DDGMConfig(n_iter=3, lr=1e-2, train_encoder=False))
    st = alg.init(start)
    for i in range(3):
        st, _ = alg.step(jax.random.key(i), st, data)
    chex.assert_trees_all_equal(st.trainable["speech"], start["speech"])
    assert not np.allclose(st.trainable["noise"]["head"]["bias"], start["noise"]["head"]["bias"])


def test_adapt_batch_matches_single_and_unda_starts_from_und(speech):
    model, params = speech
    nm = _noise("no")
    cfg = ddgm.DDGMConfig(n_iter=4, lr=1e-2)
    enc, frozen = ddgm.split_speech_params(model, params, cfg)
    # U-ND on a few toy segments (batch-major), then U-NDA from its parameters
    segs = np.asarray(_toy_power(jax.random.key(14), batch=(6,))).swapaxes(0, 1)
    t0 = {"speech": enc, "noise": nm.init(jax.random.key(15))}
    nd_params, hist = ddgm.train_nd(model, nm, cfg, ddgm.NDConfig(epochs=2, batch_size=3, lr=1e-2), frozen, t0,
                                    segs, jax.random.key(16), progress=False)
    assert len(hist) == 2 and all(np.isfinite(h["loss"]) for h in hist)
    assert not np.allclose(nd_params["noise"]["head"]["bias"], t0["noise"]["head"]["bias"])
    assert not all(np.allclose(a, b) for a, b in zip(jax.tree.leaves(nd_params["speech"]), jax.tree.leaves(enc)))
    # noise net only: the encoder keeps its clean-speech weights exactly, the noise net still moves
    nd_noise, _ = ddgm.train_nd(model, nm, cfg, ddgm.NDConfig(epochs=2, batch_size=3, lr=1e-2, train_encoder=False),
                                frozen, t0, segs, jax.random.key(16), progress=False)
    chex.assert_trees_all_equal(nd_noise["speech"], enc)
    assert not np.allclose(nd_noise["noise"]["head"]["bias"], t0["noise"]["head"]["bias"])
    # padded batch of two utterances of different lengths == each alone
    P = _toy_power(jax.random.key(17), t=T + 3, batch=(2,))
    mask = jnp.stack([jnp.arange(T + 3) < T, jnp.ones(T + 3, bool)], axis=1)
    P = jnp.where(mask[..., None], P, 0.0)
    key = jax.random.key(18)
    G, losses = ddgm.adapt_batch(model, nm, cfg, frozen, nd_params, P, mask, key, shared_start=True)
    assert G.shape == P.shape and losses.shape == (2, cfg.n_iter)
    alg = ddgm.make_adaptation(model, nm, cfg)
    k0 = jax.random.split(key, 2)[0]
    k_run, k_wf = jax.random.split(k0)
    from vdvae_jax.inference.base import run

    data = ddgm.DDGMData(P[:T, 0], None, frozen)
    state, info = run(alg, k_run, alg.init(nd_params), data, cfg.n_iter)
    np.testing.assert_allclose(losses[0], info.loss, rtol=2e-4)
    G0, _, _ = ddgm.wiener_gain(model, nm, cfg, state.trainable, data, k_wf)
    np.testing.assert_allclose(G[:T, 0], G0, rtol=2e-3, atol=1e-4)
    np.testing.assert_array_equal(G[T:, 0], 0.0)
    # U-NDA's first loss is the U-ND model's loss on that utterance (it starts from the U-ND parameters)
    first = ddgm.loss_fn(model, nm, cfg, nd_params, data, jax.random.split(k_run, cfg.n_iter)[0])[0]
    np.testing.assert_allclose(losses[0, 0], first, rtol=1e-4)
    # U-ND test-time pass: shared parameters on the batch
    Gnd = ddgm.apply_batch(model, nm, cfg, frozen, nd_params, P, mask, key)
    assert Gnd.shape == P.shape and np.all(np.isfinite(np.asarray(Gnd)))


def test_config_errors(speech):
    model, params = speech
    with pytest.raises(ValueError, match="noise_init"):
        ddgm.DDGMConfig(noise_init="zeros")
    with pytest.raises(ValueError, match="needs the utterance power"):
        ddgm.fresh_trainable(model, _noise("lv"), params, jax.random.key(0), ddgm.DDGMConfig(noise_init="floor"))
    with pytest.raises(ValueError, match="trainable layers"):
        ddgm.split_speech_params(model, params, ddgm.DDGMConfig(trainable=("nope",)))


def test_speech_gain_floor_debias_and_recentre():
    """The profiled gain recovers a known speech scale per utterance; debiased floor; re-centred bias."""
    v_s = jnp.exp(jax.random.normal(jax.random.key(3), (40, 2, F)))
    v_n = jnp.full_like(v_s, 1e-6)
    P = v_s * jnp.array([0.01, 30.0])[:, None]  # (T, B, F): utterance gains 0.01 and 30
    cfg = ddgm.DDGMConfig(speech_gain="utterance", gain_iters=40)
    np.testing.assert_allclose(ddgm.speech_gain(cfg, P, v_s, v_n), [0.01, 30.0], rtol=1e-3)
    np.testing.assert_array_equal(ddgm.speech_gain(ddgm.DDGMConfig(), P, v_s, v_n), [1.0, 1.0])
    assert ddgm.floor_offset(ddgm.DDGMConfig()) == 0.0
    np.testing.assert_allclose(ddgm.floor_offset(ddgm.DDGMConfig(floor_debias=True)), -np.log(-np.log(0.9)))
    nm = _noise("no")
    t = {"speech": {}, "noise": nm.init(jax.random.key(0), head_bias=jnp.zeros(F))}
    out = ddgm.recentre_noise(t, 4.0 * jnp.ones((T, F)), None, jnp.ones(F))
    np.testing.assert_allclose(out["noise"]["head"]["bias"], np.log(4.0) * np.ones(F), rtol=1e-6)
    np.testing.assert_array_equal(t["noise"]["head"]["bias"], np.zeros(F))


def test_profiled_noise_gain_recovers_per_bin_levels_with_padding():
    """speech_gain + noise_gain jointly recover a speech gain per utterance and a noise level per bin;
    padded frames (garbage power) take no part; the profiled loss is below the unprofiled one."""
    k1, k2, k3 = jax.random.split(jax.random.key(4), 3)
    v_s = jnp.exp(2.0 * jax.random.normal(k1, (60, 2, F)))
    v_n = jnp.exp(jax.random.normal(k2, (60, 2, F)))
    g_true = jnp.array([0.2, 5.0])
    c_true = jnp.exp(jax.random.uniform(k3, (2, F), minval=-3.0, maxval=3.0))
    P = g_true[:, None] * v_s + c_true * v_n           # the expected power: the IS optimum is exact
    m = jnp.arange(60)[:, None] < jnp.array([60, 45])
    P = jnp.where(m[..., None], P, 1e6)
    cfg = ddgm.DDGMConfig(speech_gain="utterance", noise_gain="frequency", gain_iters=400)
    g, c = ddgm.profile_gains(cfg, P, v_s, v_n, m)
    np.testing.assert_allclose(g, g_true, rtol=2e-2)
    np.testing.assert_allclose(c, c_true, rtol=5e-2)
    g1, c1 = ddgm.profile_gains(ddgm.DDGMConfig(noise_gain="frequency", gain_iters=400), P, v_s, v_n, m)
    np.testing.assert_array_equal(g1, [1.0, 1.0])
    assert c1.shape == (2, F) and not np.allclose(c1, 1.0)
    # "band": c = A_f c' with A_f the noise_smooth_bins average; a level of that form is recovered
    band = ddgm.DDGMConfig(speech_gain="utterance", noise_gain="band", noise_smooth_bins=5, gain_iters=400)
    c_band = ddgm.noise_variance(band, jnp.log(c_true))                  # A_f c'
    P = jnp.where(m[..., None], g_true[:, None] * v_s + c_band * v_n, 1e6)
    g, c = ddgm.profile_gains(band, P, v_s, v_n, m)
    np.testing.assert_allclose(g, g_true, rtol=2e-2)
    np.testing.assert_allclose(c, c_band, rtol=5e-2)
    with pytest.raises(ValueError, match="noise_gain"):
        ddgm.DDGMConfig(noise_gain="bin")


def test_noise_smoothing_loop_oracle_padding_and_gain_floor(speech):
    cfg = ddgm.DDGMConfig(noise_smooth_frames=5, noise_smooth_bins=3)
    x = jax.random.normal(jax.random.key(0), (20, 2, 9))
    m = jnp.arange(20)[:, None] < jnp.array([20, 12])
    v, e, mm = np.asarray(ddgm.noise_variance(cfg, x, m)), np.exp(np.asarray(x)), np.asarray(m)
    for b in range(2):     # valid frames within 2, then bins within 1, averaged
        for t in np.flatnonzero(mm[:, b]):
            near = [u for u in range(t - 2, t + 3) if 0 <= u < 20 and mm[u, b]]
            row = e[near, b].mean(0)
            want = [row[max(0, f - 1): f + 2].mean() for f in range(9)]
            np.testing.assert_allclose(v[t, b], want, rtol=1e-5)
    np.testing.assert_allclose(ddgm.noise_variance(ddgm.DDGMConfig(), x), np.exp(x), rtol=1e-6)
    g = jax.grad(lambda y: jnp.sum(ddgm.noise_variance(cfg, y, m)))(x)      # differentiable (loss, U-ND)
    assert np.all(np.isfinite(np.asarray(g))) and float(jnp.sum(g[12:, 1])) == 0.0   # padding gets none
    # the floor bounds the attenuation: G in [beta, 1] on valid frames
    model, params = speech
    nm = _noise("lv")
    P = _toy_power(jax.random.key(9))
    floored = ddgm.DDGMConfig(noise_smooth_frames=3, noise_smooth_bins=3, gain_floor=0.25)
    t = ddgm.fresh_trainable(model, nm, params, jax.random.key(10), floored)
    enc, frozen = ddgm.split_speech_params(model, params, floored)
    G, _, _ = ddgm.wiener_gain(model, nm, floored, t, ddgm.DDGMData(P, None, frozen), jax.random.key(11))
    assert np.all((np.asarray(G) >= 0.25 - 1e-6) & (np.asarray(G) <= 1))
    for bad in (dict(noise_smooth_frames=2), dict(noise_smooth_bins=0), dict(gain_floor=1.0)):
        with pytest.raises(ValueError):
            ddgm.DDGMConfig(**bad)
