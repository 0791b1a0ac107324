"""MixDVAE VEM (vdvae_jax.inference.mixdvae): source mapping, E-W with missing detections, stacked priors,
no retracing, options, and the whole-algorithm reference traces."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdvae_jax.inference import mixdvae as mv
from vdvae_jax.inference import mixdvae_source as ms
from vdvae_jax.models.srnn_mixdvae import MOTSRNNConfig, SCASSSRNNConfig, make_srnn_mot, make_srnn_scass

MOT = MOTSRNNConfig()
SC = SCASSSRNNConfig(x_dim=9, z_dim=3, dense_x_h=(8,), dim_rnn_h=6, dense_hx_g=(8,), dim_rnn_g=5,
                     dense_gz_z=(7,), dense_hz_z=(7,), dense_hz_x=(8,))


def _mot_params(seed=0):
    return make_srnn_mot(MOT).init(jax.random.key(seed), jnp.zeros((3, 4)))


def _sc_params(seed):
    return make_srnn_scass(SC).init(jax.random.key(seed), jnp.zeros((3, SC.x_dim)))


def _tracks(T=30, B=2, S=3, seed=0, missing=True):
    """S boxes moving linearly plus noise; obs (T, B, K=S, 4) with shuffled order and NaN misses."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(0.2, 0.7, (B, S, 2))
    size = rng.uniform(0.05, 0.1, (B, S, 2))
    vel = rng.uniform(-3e-3, 3e-3, (B, S, 2))
    t = np.arange(T)[:, None, None, None]
    xy = start[None] + vel[None] * t
    boxes = np.concatenate([xy, xy + size[None]], -1) + 2e-3 * rng.standard_normal((T, B, S, 4))
    for tt in range(1, T):
        for b in range(B):
            boxes[tt, b] = boxes[tt, b, rng.permutation(S)]
    if missing:
        miss = rng.uniform(size=(T, B, S)) < 0.2
        miss[0] = False
        boxes[miss] = np.nan
    return boxes.astype(np.float32)


def _mix(T=6, B=2, F=9, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((T, B, F)) + 1j * rng.standard_normal((T, B, F))).astype(np.complex64)


def _close(a, b, **kw):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw)


def test_mot_vmap_equals_loop():
    data = mv.mot_data(_mot_params(), _tracks(T=12))
    key = jax.random.key(1)
    outs = {}
    for mode in ("vmap", "loop"):
        alg = mv.mot_vem(MOT, mv.MOTOptions(init="constant"), source_map=mode)
        state = alg.init(key, data)
        outs[mode] = jax.jit(alg.step)(key, state, data)
    _close(outs["vmap"], outs["loop"], rtol=2e-5, atol=1e-6)


def test_scass_stacked_different_priors_match_per_source_calls():
    """Each source uses its own prior: the vmapped step over stacked params == separate per-source calls."""
    p0, p1 = _sc_params(0), _sc_params(1)
    mix = _mix()
    data = mv.scass_data(mv.stack_params([p0, p1]), mix)
    T, B, F = mix.shape
    rng = np.random.default_rng(3)
    init_noise = {"z": jnp.asarray(rng.standard_normal((2, T, B, SC.z_dim)), jnp.float32)}
    noise = {"z": jnp.asarray(rng.standard_normal((2, T, B, SC.z_dim)), jnp.float32),
             "u_re": jnp.asarray(rng.uniform(size=(2, T, B, F)), jnp.float32),
             "u_im": jnp.asarray(rng.uniform(size=(2, T, B, F)), jnp.float32)}
    alg = mv.scass_vem(SC, mv.SCASSOptions.reference())
    state, (_, info) = jax.jit(lambda a, b, d: (lambda s: (s, alg.step(b, s, d)))(alg.init(a, d)))(
        init_noise, noise, data)
    power = np.abs(mix) ** 2
    v_x = 0.03 * power
    init = jax.jit(ms.scass_vem_initialization, static_argnums=1)
    update = jax.jit(ms.scass_source_update, static_argnums=1, static_argnames="complex_noise")
    for n, p in enumerate((p0, p1)):
        s0 = init(p, SC, power, {"z": init_noise["z"][n]})
        np.testing.assert_allclose(state.s_power[:, n], s0, rtol=1e-5)
        upd = update(p, SC, s0, 0.5, v_x, mix, jax.tree.map(lambda a: a[n], noise), complex_noise="uniform")
        np.testing.assert_allclose(info.mu[:, n], upd.mu, rtol=1e-5, atol=1e-6)
    assert not np.allclose(info.mu[:, 0], info.mu[:, 1])
    np.testing.assert_allclose(np.sum(info.eta, 1), 1.0, rtol=1e-6)


def test_scass_reused_h_chain_equals_recomputed():
    """SCASSOptions.reuse_h_chain: the E-Z h chain stepped in the last E-S recursion is the h chain of the
    new encoder input (state invariant), and a run with it equals a run that recomputes it; a given
    start power must have the (T, S, [B,] F) layout."""
    from vdvae_jax.models.srnn_mixdvae import h_teacher_forced

    data = mv.scass_data(mv.stack_params([_sc_params(0), _sc_params(1)]), jnp.asarray(_mix(T=7, B=3)))
    runs = {}
    for reuse in (True, False):
        alg = mv.scass_vem(SC, mv.SCASSOptions(reuse_h_chain=reuse))
        runs[reuse] = mv.solve(alg, jax.random.key(5), data, 3)
    (state, infos), (state_ref, infos_ref) = runs[True], runs[False]
    assert state_ref.h_enc is None
    for n in range(2):
        params_n = jax.tree.map(lambda a: a[n], data.params)
        np.testing.assert_allclose(state.h_enc[:, n], h_teacher_forced(params_n, SC, state.s_power[:, n]),
                                   rtol=1e-5, atol=1e-5)
    _close((infos.mu, infos.eta, infos.elbo), (infos_ref.mu, infos_ref.eta, infos_ref.elbo), rtol=1e-4, atol=1e-5)
    alg = mv.scass_vem(SC, mv.SCASSOptions())
    start = alg.init(jax.random.key(0), data, s_power=state.s_power)
    np.testing.assert_allclose(start.h_enc, state.h_enc, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="s_power must be"):
        alg.init(jax.random.key(0), data, s_power=jnp.swapaxes(state.s_power, 0, 1))


def test_scass_without_losses_gives_the_same_estimates():
    """SCASSOptions(losses=False): the same posteriors, NaN printed losses and ELBO; refused with tol > 0."""
    data = mv.scass_data(mv.stack_params([_sc_params(0), _sc_params(1)]), jnp.asarray(_mix(T=5, B=2)))
    with_losses = mv.solve(mv.scass_vem(SC, mv.SCASSOptions()), jax.random.key(3), data, 2)[1]
    without = mv.solve(mv.scass_vem(SC, mv.SCASSOptions(losses=False)), jax.random.key(3), data, 2)[1]
    _close((without.mu, without.eta), (with_losses.mu, with_losses.eta), rtol=1e-6, atol=1e-7)
    assert np.isnan(np.asarray(without.elbo)).all() and np.isfinite(np.asarray(with_losses.elbo)).all()
    with pytest.raises(ValueError, match="needs losses=True"):
        mv.SCASSOptions(losses=False, tol=1e-4)


def test_ew_rows_sum_to_one_with_missing_detections():
    obs = _tracks(T=10, missing=True)
    data = mv.mot_data(_mot_params(), obs)
    assert not bool(jnp.all(data.mask))
    rng = np.random.default_rng(0)
    mean = jnp.asarray(np.moveaxis(np.nan_to_num(obs[:, :, :3], nan=0.4), 2, 0)
                       + 0.01 * rng.standard_normal((3,) + obs.shape[:2] + (4,)), jnp.float32)
    var = jnp.full(mean.shape, 1e-5)
    phi = mv.mot_phi_from_boxes(data.obs, data.mask, 0.04)
    assign = jax.jit(mv.mot_assignment, static_argnums=(5, 6))
    for gamma, floor in [(1.0, 0.0), (0.008, 1e-10)]:
        eta = assign(data.obs, data.mask, phi, mean + 10.0, var, gamma, floor)  # far: underflow
        eta = np.asarray(eta)
        assert np.all(np.isfinite(eta))
        rows = eta.sum(0)
        np.testing.assert_allclose(rows[np.asarray(data.mask)], 1.0, rtol=1e-5)
        assert np.all(eta[:, ~np.asarray(data.mask)] == 0)


@pytest.mark.parametrize("options", [
    mv.MOTOptions.reference(init_iters=2, init_chunk_len=10),
    mv.MOTOptions(init_iters=1, init_chunk_len=10, phi_from="detection", phi_update="pooled",
                  order="es_first", finetune="all"),
])
def test_no_nan_with_missing_detections(options):
    obs = _tracks(T=20, seed=4)
    obs[5] = np.nan                          # a frame without any detection
    mask = np.all(np.isfinite(obs), -1)
    mask[7, 0, 1] = False                    # masked although finite
    data = mv.mot_data(_mot_params(), obs, mask=mask)
    state, info = mv.solve(mv.mot_vem(MOT, options), jax.random.key(0), data, 3)
    for leaf in jax.tree.leaves((state, info)):
        assert np.all(np.isfinite(np.asarray(leaf, dtype=np.float64) if np.asarray(leaf).dtype != bool
                                  else 0.0))
    eta = np.asarray(info.eta[-1])
    np.testing.assert_allclose(eta.sum(0)[data.mask], 1.0, rtol=1e-5)
    assert np.all(eta[:, 5] == 0)


def test_reference_chunked_init_is_piecewise_constant():
    obs = _tracks(T=20, missing=False)
    data = mv.mot_data(_mot_params(), obs)
    ref = jax.jit(mv.mot_vem(MOT, mv.MOTOptions.reference(init_iters=2, init_chunk_len=10)).init)(
        jax.random.key(0), data)
    traj = jax.jit(mv.mot_vem(MOT, mv.MOTOptions(init_iters=2, init_chunk_len=10)).init)(jax.random.key(0), data)
    m = np.asarray(ref.mean)
    np.testing.assert_array_equal(m[:, :10], np.broadcast_to(np.asarray(data.frame0)[:, None], m[:, :10].shape))
    np.testing.assert_array_equal(m[:, 10:], np.broadcast_to(m[:, 10:11], m[:, 10:].shape))
    np.testing.assert_allclose(m[:, 10], np.asarray(traj.mean)[:, 9], rtol=1e-6)  # seeded by chunk 0's end
    with pytest.raises(ValueError, match="multiple"):
        mv.mot_vem(MOT, mv.MOTOptions(init_chunk_len=7)).init(jax.random.key(0), data)


def test_no_retracing_across_iterations_and_calls():
    data = mv.mot_data(_mot_params(), _tracks(T=10))
    alg = mv.mot_vem(MOT, mv.MOTOptions(init="constant"))
    step = jax.jit(chex.assert_max_traces(alg.step, n=1))
    state = alg.init(jax.random.key(0), data)
    for i in range(3):
        state, _ = step(jax.random.key(i), state, data)
    data2 = mv.mot_data(_mot_params(1), _tracks(T=10, seed=5))      # new values, same shapes
    state = alg.init(jax.random.key(0), data2)
    step(jax.random.key(9), state, data2)
    solve_fn = chex.assert_max_traces(lambda k, d: mv.solve(alg, k, d, 2, jit=False), n=1)
    jitted = jax.jit(solve_fn)
    jitted(jax.random.key(0), data)
    jitted(jax.random.key(1), data2)


def test_convergence_freezes_the_state():
    data = mv.mot_data(_mot_params(), _tracks(T=10, missing=False))
    state, info = mv.solve(mv.mot_vem(MOT, mv.MOTOptions(init="constant", tol=1e3)), jax.random.key(0), data, 4)
    conv = np.asarray(info.converged)
    assert not conv[0] and conv[1:].all()
    np.testing.assert_array_equal(info.mean[1], info.mean[3])        # frozen after iteration 1
    assert int(state.iteration) == 2


def test_vmap_sequences_matches_single_sequences():
    obs = _tracks(T=10, B=2)
    data = mv.mot_data(_mot_params(), obs)
    alg = mv.mot_vem(MOT, mv.MOTOptions(init="constant"))
    valg = mv.vmap_sequences(alg)
    key = jax.random.key(3)
    new, info = jax.jit(lambda k, d: valg.step(k, valg.init(k, d), d))(key, data)
    keys = jax.random.split(key, 2)
    single = jax.jit(lambda k, d: alg.step(k, alg.init(k, d), d))
    for b in range(2):
        d = mv.MOTData(data.params, data.obs[:, b], data.mask[:, b], data.frame0[:, b])
        s, i = single(keys[b], d)
        np.testing.assert_allclose(info.mean[b], i.mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(info.elbo[b], i.elbo, rtol=1e-5)


def test_finetune_encoder_only_changes_encoder():
    data = mv.mot_data(_mot_params(), _tracks(T=10))
    alg = mv.mot_vem(MOT, mv.MOTOptions(init="constant", finetune="encoder"))
    state = alg.init(jax.random.key(0), data)
    new, _ = jax.jit(alg.step)(jax.random.key(1), state, data)
    for name in data.params:
        changed = any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(data.params[name]),
                                                                 jax.tree.leaves(new.params[name])))
        assert changed == (name in ("mlp_gz_z", "inf_mean", "inf_logvar")), name


def test_bad_input():
    p = _mot_params()
    obs = _tracks(T=5)
    obs[0, 0, 1] = np.nan
    with pytest.raises(ValueError, match="frame-0"):
        mv.mot_data(p, obs)
    with pytest.raises(ValueError, match=r"\(T, \[B,\] K, 4\)"):
        mv.mot_data(p, obs[..., :3])
    with pytest.raises(ValueError, match="detections per frame"):
        mv.mot_data(p, _tracks(T=5), num_sources=4)
    with pytest.raises(ValueError, match="ew_gamma"):
        mv.MOTOptions(ew_gamma=0.0)
    with pytest.raises(ValueError, match="complex"):
        mv.scass_data(None, np.ones((3, 4)))
    with pytest.raises(ValueError, match="identical shapes"):
        mv.stack_params([{"a": jnp.zeros(2)}, {"a": jnp.zeros(3)}])


def test_vem_traces(shared_dir):
    from vdvae_jax.reference_mixdvae import check_vem_trace

    base = shared_dir / "reference" / "mixdvae"
    for name in ("vem_trace_mot.npz", "vem_trace_scass.npz"):
        if not (base / name).is_file():
            pytest.skip(f"{name} not available")
        for r in check_vem_trace(base / name):
            assert r.passed, r.line() + "\n" + "\n".join(r.failures)


def test_vem_time_chain_reads_inputs_as_the_trained_model():
    """A prior trained on log-power (``input_transform="log"``) is read the same way by the VEM-time
    decoder chain as by the model it was trained as (h_t from x_{t-1})."""
    from vdvae_jax.models import build
    from vdvae_jax.models.srnn_mixdvae import h_teacher_forced

    model = build("srnn_scass", x_dim=12, z_dim=3, dense_x_h=(8,), dim_rnn_h=6, dense_hx_g=(8,), dim_rnn_g=6,
                  dense_gz_z=(5,), dense_hz_z=(5,), dense_hz_x=(8,), input_transform="log")
    x = jnp.exp(jax.random.normal(jax.random.key(1), (7, 2, 12)))
    params = model.init(jax.random.key(0), x)
    out = model.forward(params, x, jax.random.key(2))
    np.testing.assert_allclose(h_teacher_forced(params, model.config, x), out.extras["h_inf"], rtol=1e-6)


def test_mot_one_pass_diagnostics_equal_the_term_by_term_definitions():
    """The step's fused printed losses / ELBO equal _mot_printed and sum(mot_elbo_terms) (missing detections)."""
    data = mv.mot_data(_mot_params(), _tracks(T=12))
    alg = mv.mot_vem(MOT, mv.MOTOptions.reference(init="constant"))
    state = alg.init(jax.random.key(0), data)
    # E-W written out (log-domain floor, softmax over sources) against the cost-based implementation
    maha, trace = mv._mot_distance(data.obs, state.phi, state.mean, state.var)
    log_beta = -0.5 * jnp.sum(jnp.log(state.phi), -1) - 0.5 * 0.008 * (maha + trace)
    eta = jnp.where(data.mask, jax.nn.softmax(jnp.logaddexp(log_beta, np.log(1e-10)), axis=0), 0.0)
    np.testing.assert_allclose(eta, state.eta, rtol=1e-5, atol=1e-6)  # init's E-W from the cached cost
    np.testing.assert_allclose(mv.mot_assignment(data.obs, data.mask, state.phi, state.mean, state.var, 0.008,
                                                 1e-10), eta, rtol=1e-5, atol=1e-6)
    upd = jax.vmap(lambda x, e, f0, k: ms.mot_source_update(data.params, MOT, x, e, 1.0 / state.phi, data.obs, f0,
                                                             k, mask=data.mask))(
        state.mean, eta, data.frame0, jax.random.split(jax.random.key(2), 3))
    args = (eta, data.mask, data.obs, state.phi, upd.mean, upd.var, upd.dec, upd.q, upd.p)
    printed, elbo = mv._mot_diagnostics(eta, data.mask, mv._mot_cost(data.obs, state.phi, upd.mean, upd.var),
                                        *args[4:], upd.loss)
    _close(printed, mv._mot_printed(eta, data.obs, state.phi, upd.mean, upd.var, upd.loss), rtol=1e-5, atol=1e-5)
    _close(elbo, jnp.sum(mv.mot_elbo_terms(*args)["elbo"]), rtol=1e-5)


def test_scass_one_pass_diagnostics_equal_the_term_by_term_definitions():
    """SC-ASS step: E-W from the shared cost equals scass_assignment written out, and the fused printed
    losses / ELBO equal _scass_printed and sum(scass_elbo_terms)."""
    mix = jnp.asarray(_mix(T=6, B=2))
    data = mv.scass_data(mv.stack_params([_sc_params(0), _sc_params(1)]), mix)
    alg = mv.scass_vem(SC, mv.SCASSOptions.reference())
    state = alg.init(jax.random.key(0), data)
    state, info = jax.jit(alg.step)(jax.random.key(1), state, data)
    v_x = 0.03 * jnp.abs(mix) ** 2 + mv.SCASSOptions.reference().vx_floor
    d = jnp.abs(mix[:, None] - state.mu) ** 2                      # (T, S, B, F)
    log_beta = -jnp.log(v_x[:, None]) - (d + state.v_phi) / v_x[:, None]
    floor = mv.SCASSOptions.reference().beta_floor
    eta = jax.nn.softmax(jnp.logaddexp(log_beta, np.log(floor)) if floor > 0 else log_beta, axis=1)
    np.testing.assert_allclose(state.eta, eta, rtol=1e-5, atol=1e-6)
    q = mv.Gaussian(jax.random.normal(jax.random.key(3), (6, 2, 2, SC.z_dim)), jnp.full((6, 2, 2, SC.z_dim), -0.3))
    p = mv.Gaussian(jnp.zeros_like(q.mean), jnp.full(q.mean.shape, 0.2))
    v_theta = jnp.exp(jax.random.normal(jax.random.key(4), state.v_phi.shape))
    losses = jnp.arange(4.0)
    printed, elbo = mv._scass_diagnostics(eta, mv._scass_cost(mix, v_x, state.mu, state.v_phi),
                                          jnp.abs(state.mu) ** 2, state.v_phi, v_theta, q, p, losses)
    _close(printed, mv._scass_printed(eta, mix, v_x, state.mu, state.v_phi, losses), rtol=1e-5, atol=1e-5)
    terms = mv.scass_elbo_terms(eta, mix, v_x, state.mu, state.v_phi, v_theta, q, p)
    _close(elbo, jnp.sum(terms["elbo"]), rtol=1e-5)
    assert np.isfinite(float(info.elbo)) and np.isfinite(np.asarray(info[:5], float)).all()
