"""The whole model zoo: shapes, finiteness, jit/vmap consistency, explicit-loop oracles of the
recursions, KL checks and a trace-once train step. Small widths (x_dim 7, z_dim 3, T 5)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vdvae_jax.distributions import Gaussian, kl_gaussian
from vdvae_jax.models import REGISTRY, build
from vdvae_jax.models.base import loss_from_outputs
from vdvae_jax.train import init_train_state, make_train_step

T, B, F, Z = 5, 2, 7, 3

SMALL = {
    "vae": dict(dense_x_z=(8,)),
    "rvae": dict(dim_rnn_g_x=6, dim_rnn_g_z=5, dim_rnn_h=6),
    "rvae_causal": dict(dim_rnn_g_x=6, dim_rnn_g_z=5, dim_rnn_h=6),
    "srnn": dict(dense_x_h=(8,), dim_rnn_h=6, dense_hx_g=(8,), dim_rnn_g=6, dense_gz_z=(8,),
                 dense_hz_z=(8,), dense_hz_x=(8,)),
    "srnn_ss": dict(dense_x_h=(8,), dim_rnn_h=6, dense_hx_g=(8,), dim_rnn_g=6, dense_gz_z=(8,),
                    dense_hz_z=(8,), dense_hz_x=(8,)),
    "dkf": dict(dense_x_gx=(8,), dim_rnn_gx=6, dense_ztm1_g=(4,), dense_g_z=(5,), dense_z_x=(4, 8)),
    "storn": dict(dense_x_g=(8,), dim_rnn_g=6, dense_g_z=(5,), dense_z_h=(4,), dense_xtm1_h=(8,),
                  dim_rnn_h=6, dense_h_x=(8,)),
    "vrnn": dict(dense_x=(8,), dense_z=(4,), dim_rnn=6),
    "dsae": dict(v_dim=2, dim_rnn_g_v=5, dim_rnn_g_xv=5, dim_rnn_g_z=4, dim_rnn_prior=4, dense_vz_x=(4, 8)),
    "srnn_mot": dict(dense_x_h=(4,), dim_rnn_h=6, dense_gz_z=(8,), dense_hz_z=(8,), dense_hz_x=(8,)),
    "srnn_scass": dict(dense_x_h=(8,), dim_rnn_h=6, dense_hx_g=(8,), dim_rnn_g=6, dense_gz_z=(8,),
                       dense_hz_z=(8,), dense_hz_x=(8,)),
}
NAMES = sorted(REGISTRY)


def test_every_registered_model_has_a_small_config():
    assert set(SMALL) == set(REGISTRY)


def _model(name, **kw):
    return build(name, x_dim=F, z_dim=Z, **SMALL[name], **kw)


def _x(batch=(B,), seed=0):
    return jnp.exp(jax.random.normal(jax.random.key(seed), (T,) + batch + (F,)))


def _noise(model, batch=(B,), seed=1):
    k = jax.random.split(jax.random.key(seed), 3)
    noise = {"z": jax.random.normal(k[0], (T,) + batch + (Z,)),
             "coin": jax.random.uniform(k[1], (T,) + batch)}
    if model.name == "dsae":
        noise["v"] = jax.random.normal(k[2], batch + (model.config.v_dim,))
    if model.config.observation == "gaussian":
        noise["x"] = jax.random.normal(k[2], (T,) + batch + (F,))
    return noise


def _mode(model):
    return {"use_pred": 0.5} if getattr(model.config, "scheduled_sampling", False) else {}


def _leaves(out):
    return (out.z, out.q.mean, out.q.logvar, out.p.mean, out.p.logvar, out.x_out.mean, out.x_out.logvar)


def _random_params(model, seed=3):
    """Parameters of ``model.init``'s structure filled from NumPy (``init`` itself is only traced:
    executing flax initialisers eagerly costs seconds per model on a small CPU)."""
    shapes = jax.eval_shape(model.init, jax.random.key(seed), _x()[:, 0])
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.uniform(-0.6, 0.6, s.shape), s.dtype), shapes)


class _Zoo(dict):
    def __missing__(self, name):
        m = _model(name)
        self[name] = (m, _random_params(m))
        return self[name]


@pytest.fixture(scope="module")
def zoo():
    return _Zoo()


@pytest.mark.parametrize("name, n_params", [("dkf", 516_641 - 512), ("storn", 870_113 - 2 * 512),
                                            ("vrnn", 480_097 - 512), ("dsae", 1_650_241 - 2 * 1024 - 128 - 512)])
def test_speech_configs_have_the_reference_sizes(name, n_params):
    """Spec §1 parameter counts, less one bias vector per recurrent direction (ours are summed)."""
    model = build(name)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((3, 513)))
    assert sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes)) == n_params


@pytest.mark.parametrize("name", NAMES)
def test_shapes(zoo, name):
    model, params = zoo[name]
    for batch in ((), (B,), (2, 3)):
        x = _x(batch)
        out = jax.eval_shape(lambda p, x, k: model.forward(p, x, k, **_mode(model)), params, x, jax.random.key(0))
        for a in (out.z, out.q.mean, out.q.logvar, out.p.mean, out.p.logvar):
            assert a.shape == (T,) + batch + (Z,)
        assert out.x_out.logvar.shape == x.shape
        loss = jax.eval_shape(lambda p, x, n: model.loss(p, x, n, **_mode(model))[0], params, x, jax.random.key(0))
        assert loss.shape == ()


@pytest.mark.parametrize("name", NAMES)
def test_train_step_traces_once_jit_matches_eager_vmap_matches_batch(zoo, name):
    """Three jitted Adam steps trace once with finite loss, gradients and parameters, every parameter
    moves; the jitted loss equals the un-jitted loss, and ``vmap`` over sequences of
    the forward pass equals the batch axis."""
    model, params = zoo[name]
    mode = _mode(model)
    opt = optax.adam(1e-3)
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(make_train_step(model, opt), n=1))
    state = init_train_state(params, opt)
    xb = _x()
    batch = jnp.swapaxes(xb, 0, 1)  # (B, T, F), the loaders' layout
    key = jax.random.key(0)
    losses = []
    for i in range(3):
        state, metrics = step(state, batch, key, jnp.float32(0.1 * (i + 1)), jnp.float32(0.5))
        losses.append(float(metrics["loss"]))
        assert np.isfinite(float(metrics["grad_norm"])) and float(metrics["grad_norm"]) > 0
    assert np.all(np.isfinite(losses)) and int(state.step) == 3
    assert all(bool(jnp.all(jnp.isfinite(p))) for p in jax.tree.leaves(state.params))
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, params)
    assert all(jax.tree.leaves(moved)), "every parameter receives a gradient"

    # the first step's loss without jit (op-by-op dispatch; ``disable_jit`` would also unroll the
    # scans into Python loops, which the loop oracles below cover at a fraction of the cost)
    eager = model.loss(params, xb, jax.random.fold_in(key, 0), beta=0.1, **mode)[0]
    np.testing.assert_allclose(float(eager), losses[0], rtol=2e-5)

    noise = _noise(model)
    batched = _leaves(model.forward(params, xb, noise, **mode))
    axes = {k: (0 if k == "v" else 1) for k in noise}
    mapped = jax.vmap(lambda x1, n1: _leaves(model.forward(params, x1, n1, **mode)),
                      in_axes=(1, axes), out_axes=1)(xb, noise)
    for a, b in zip(batched, mapped):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_kl_analytic_matches_monte_carlo():
    k = jax.random.split(jax.random.key(0), 5)
    q = Gaussian(jax.random.normal(k[0], (4,)), 0.5 * jax.random.normal(k[1], (4,)))
    p = Gaussian(jax.random.normal(k[2], (4,)), 0.5 * jax.random.normal(k[3], (4,)))
    s = q.sample(jax.random.normal(k[4], (400_000, 4)))

    def logpdf(g, v):
        return -0.5 * jnp.sum(g.logvar + (v - g.mean) ** 2 / jnp.exp(g.logvar) + jnp.log(2 * jnp.pi), -1)

    mc = float(jnp.mean(logpdf(q, s) - logpdf(p, s)))
    exact = float(kl_gaussian(q, p, mode="exact"))
    assert abs(mc - exact) < 0.02 * max(1.0, exact)
    assert float(kl_gaussian(q, p, mode="reference")) == pytest.approx(exact + 0.5 * 4, rel=1e-5)
    np.testing.assert_allclose(exact, float(q.to_distrax().kl_divergence(p.to_distrax())), rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Explicit Python-loop oracles (NumPy, float64) of the new models' full forward passes.


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _lin(p, x):
    return x @ p["kernel"] + p["bias"]


def _mlp(p, x, n):
    for i in range(n):
        x = np.tanh(_lin(p[f"linear{i}"], x))
    return x


def _sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def _lstm_cell(p, h, c, x):
    i, f, g, o = np.split(x @ p["kernel_ih"] + h @ p["kernel_hh"] + p["bias"], 4, axis=-1)
    c = _sig(f) * c + _sig(i) * np.tanh(g)
    return _sig(o) * np.tanh(c), c


def _lstm_loop(p, xs, reverse=False):
    H = p["kernel_hh"].shape[0]
    h, c = np.zeros(xs.shape[1:-1] + (H,)), np.zeros(xs.shape[1:-1] + (H,))
    out = [None] * len(xs)
    for t in (reversed(range(len(xs))) if reverse else range(len(xs))):
        h, c = _lstm_cell(p, h, c, xs[t])
        out[t] = h
    return np.stack(out)


def _softplus(a):
    return np.log1p(np.exp(a))


def _check(ours, ref):
    for name, a, b in zip(("z", "q.mean", "q.logvar", "p.mean", "p.logvar", "y"), ours, ref):
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-4, atol=1e-5, err_msg=name)


def _ours(out):
    return out.z, out.q.mean, out.q.logvar, out.p.mean, out.p.logvar, out.x_out.logvar


def test_dkf_loop_oracle(zoo):
    model, params = zoo["dkf"]
    x, noise = _x(), _noise(model)
    p, xn, eps = _np(params), np.asarray(x, np.float64), np.asarray(noise["z"], np.float64)
    g = _lstm_loop(p["rnn_gx"]["backward"], _mlp(p["mlp_x_gx"], xn, 1), reverse=True)
    z_prev = np.zeros((B, Z))
    zs, ms, lvs, mps, lvps = [], [], [], [], []
    for t in range(T):
        # prior at the sampled past
        gate = _sig(_lin(p["mlp_gate"]["linear2"], np.maximum(_lin(p["mlp_gate"]["linear1"], z_prev), 0)))
        prop = _lin(p["mlp_z_prop"]["linear2"], np.maximum(_lin(p["mlp_z_prop"]["linear1"], z_prev), 0))
        mps.append((1 - gate) * _lin(p["prior_mean"], z_prev) + gate * prop)
        lvps.append(np.log(_softplus(_lin(p["prior_logvar"]["1"], np.maximum(prop, 0)))))
        c = np.tanh(_lin(p["mlp_ztm1_g"]["linear_last"], _mlp(p["mlp_ztm1_g"], z_prev, 1)))
        u = _mlp(p["mlp_g_z"], (c + g[t]) / 2, 1)
        m, lv = _lin(p["inf_mean"], u), _lin(p["inf_logvar"], u)
        z_prev = m + np.exp(0.5 * lv) * eps[t]
        zs.append(z_prev), ms.append(m), lvs.append(lv)
    zs = np.stack(zs)
    y = _lin(p["gen_logvar"], _mlp(p["mlp_z_x"], zs, 2))
    _check(_ours(model.forward(params, x, noise)), (zs, np.stack(ms), np.stack(lvs), np.stack(mps),
                                                     np.stack(lvps), y))


def test_vrnn_loop_oracle(zoo):
    model, params = zoo["vrnn"]
    x, noise = _x(), _noise(model)
    p, xn, eps = _np(params), np.asarray(x, np.float64), np.asarray(noise["z"], np.float64)
    H = model.config.dim_rnn
    h, c = np.zeros((B, H)), np.zeros((B, H))
    outs = {k: [] for k in ("z", "m", "lv", "mp", "lvp", "y")}
    for t in range(T):
        fx = _mlp(p["feature_extractor_x"], xn[t], 1)
        enc = np.concatenate([fx, h], -1)
        m, lv = _lin(p["inf_mean"], enc), _lin(p["inf_logvar"], enc)
        z = m + np.exp(0.5 * lv) * eps[t]
        fz = _mlp(p["feature_extractor_z"], z, 1)
        outs["y"].append(_lin(p["gen_logvar"], np.concatenate([fz, h], -1)))
        outs["mp"].append(_lin(p["prior_mean"], h)), outs["lvp"].append(_lin(p["prior_logvar"], h))
        outs["z"].append(z), outs["m"].append(m), outs["lv"].append(lv)
        h, c = _lstm_cell(p["rnn"]["forward"], h, c, np.concatenate([fx, fz], -1))
    ref = [np.stack(outs[k]) for k in ("z", "m", "lv", "mp", "lvp", "y")]
    out = model.forward(params, x, noise)
    _check(_ours(out), ref)
    # decode/prior from (z, x) recompute the same h
    np.testing.assert_allclose(model.decode(params, out.z, x).logvar, ref[5], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.prior(params, out.z, x).mean, ref[3], rtol=1e-4, atol=1e-5)


def test_storn_loop_oracle(zoo):
    model, params = zoo["storn"]
    x, noise = _x(), _noise(model)
    p, xn, eps = _np(params), np.asarray(x, np.float64), np.asarray(noise["z"], np.float64)
    Hg, Hh = model.config.dim_rnn_g, model.config.dim_rnn_h
    hg, cg = np.zeros((B, Hg)), np.zeros((B, Hg))
    hh, ch = np.zeros((B, Hh)), np.zeros((B, Hh))
    x_prev = np.zeros((B, F))
    zs, ms, lvs, ys = [], [], [], []
    for t in range(T):
        hg, cg = _lstm_cell(p["rnn_g"]["forward"], hg, cg, _mlp(p["mlp_x_g"], xn[t], 1))
        u = _mlp(p["mlp_g_z"], hg, 1)
        m, lv = _lin(p["inf_mean"], u), _lin(p["inf_logvar"], u)
        z = m + np.exp(0.5 * lv) * eps[t]
        inp = np.concatenate([_mlp(p["mlp_z_h"], z, 1), _mlp(p["mlp_xtm1_h"], x_prev, 1)], -1)
        hh, ch = _lstm_cell(p["rnn_h"]["forward"], hh, ch, inp)
        ys.append(_lin(p["gen_logvar"], _mlp(p["mlp_h_x"], hh, 1)))
        zs.append(z), ms.append(m), lvs.append(lv)
        x_prev = xn[t]
    zeros = np.zeros((T, B, Z))
    _check(_ours(model.forward(params, x, noise)), (np.stack(zs), np.stack(ms), np.stack(lvs), zeros, zeros,
                                                     np.stack(ys)))


def test_dsae_loop_oracle(zoo):
    model, params = zoo["dsae"]
    c = model.config
    x, noise = _x(), _noise(model)
    p, xn = _np(params), np.asarray(x, np.float64)
    eps, eps_v = np.asarray(noise["z"], np.float64), np.asarray(noise["v"], np.float64)
    fwd = _lstm_loop(p["rnn_g_v"]["forward"], xn)
    bwd = _lstm_loop(p["rnn_g_v"]["backward"], xn, reverse=True)
    g = np.concatenate([fwd[-1], bwd[0]], -1)
    mv, lvv = _lin(p["inf_v_mean"], g), _lin(p["inf_v_logvar"], g)
    v = mv + np.exp(0.5 * lvv) * eps_v
    xv = np.concatenate([xn, np.broadcast_to(v, (T, B, c.v_dim))], -1)
    gxv = np.concatenate([_lstm_loop(p["rnn_g_xv"]["forward"], xv),
                          _lstm_loop(p["rnn_g_xv"]["backward"], xv, reverse=True)], -1)
    r = np.zeros((B, c.dim_rnn_g_z))
    hp, cp = np.zeros((B, c.dim_rnn_prior)), np.zeros((B, c.dim_rnn_prior))
    z_prev = np.zeros((B, Z))
    o = {k: [] for k in ("z", "m", "lv", "mp", "lvp", "y")}
    prz = p["rnn_g_z"]["forward"]
    for t in range(T):
        r = np.tanh(gxv[t] @ prz["kernel_ih"] + r @ prz["kernel_hh"] + prz["bias"])
        m, lv = _lin(p["inf_z_mean"], r), _lin(p["inf_z_logvar"], r)
        z = m + np.exp(0.5 * lv) * eps[t]
        hp, cp = _lstm_cell(p["rnn_prior"]["forward"], hp, cp, z_prev)
        o["mp"].append(_lin(p["prior_mean"], hp)), o["lvp"].append(_lin(p["prior_logvar"], hp))
        o["y"].append(_lin(p["gen_logvar"], _mlp(p["mlp_vz_x"], np.concatenate([v, z], -1), 2)))
        o["z"].append(z), o["m"].append(m), o["lv"].append(lv)
        z_prev = z
    out = model.forward(params, x, noise)
    _check(_ours(out), [np.stack(o[k]) for k in ("z", "m", "lv", "mp", "lvp", "y")])
    kl_v = 0.5 * np.sum(np.exp(lvv) + mv ** 2 - 1 - lvv)
    np.testing.assert_allclose(float(out.extras["kl_static"]), kl_v, rtol=1e-4)
    terms = loss_from_outputs(c, x, out)
    kl_z = float(kl_gaussian(out.q, out.p, mode="exact", var_eps=c.kl_var_eps))
    np.testing.assert_allclose(float(terms.kl), (kl_z + kl_v) / (T * B), rtol=1e-5)


@pytest.mark.parametrize("name", ["rvae", "rvae_causal", "srnn"])
def test_existing_sequential_encoders_loop_oracle(zoo, name):
    """Posterior recursions of RVAE and SRNN against explicit loops (z, q only)."""
    model, params = zoo[name]
    x, noise = _x(), _noise(model)
    p, xn, eps = _np(params), np.asarray(x, np.float64), np.asarray(noise["z"], np.float64)
    zs, ms, lvs = [], [], []
    z_prev = np.zeros((B, Z))
    if name.startswith("rvae"):
        gx = [_lstm_loop(p["rnn_g_x"]["backward"], xn, reverse=True)]
        if name == "rvae":
            gx.append(_lstm_loop(p["rnn_g_x"]["forward"], xn))
        gx = np.concatenate(gx, -1)
        H = model.config.dim_rnn_g_z
        h, c = np.zeros((B, H)), np.zeros((B, H))
        for t in range(T):
            h, c = _lstm_cell(p["rnn_g_z"]["forward"], h, c, z_prev)
            u = np.concatenate([gx[t], h], -1)
            m, lv = _lin(p["inf_mean"], u), _lin(p["inf_logvar"], u)
            z_prev = m + np.exp(0.5 * lv) * eps[t]
            zs.append(z_prev), ms.append(m), lvs.append(lv)
    else:
        x_prev = np.concatenate([np.zeros_like(xn[:1]), xn[:-1]])
        h = _lstm_loop(p["rnn_h"]["forward"], _mlp(p["mlp_x_h"], x_prev, 1))
        g = _lstm_loop(p["rnn_g"]["backward"], _mlp(p["mlp_hx_g"], np.concatenate([h, xn], -1), 1), reverse=True)
        for t in range(T):
            u = _mlp(p["mlp_gz_z"], np.concatenate([g[t], z_prev], -1), 1)
            m, lv = _lin(p["inf_mean"], u), _lin(p["inf_logvar"], u)
            z_prev = m + np.exp(0.5 * lv) * eps[t]
            zs.append(z_prev), ms.append(m), lvs.append(lv)
    z, q = model.encode(params, x, noise)
    for a, b in zip((z, q.mean, q.logvar), (zs, ms, lvs)):
        np.testing.assert_allclose(np.asarray(a), np.stack(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_noise_pair_has_the_law_of_jax_random_and_independent_halves(kind):
    from vdvae_jax.models.base import noise_pair
    shape = (200, 500)
    a, b = jax.jit(lambda k: noise_pair(k, ("re", "im"), shape, kind))(jax.random.key(3))
    ref = np.asarray(jax.random.uniform(jax.random.key(4), shape) if kind == "uniform"
                     else jax.random.normal(jax.random.key(4), shape))
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape == shape and a.dtype == b.dtype == np.float32
    n = a.size
    for x in (a, b):   # moments within 5 standard errors of jax.random's law
        assert abs(x.mean() - ref.mean()) < 5 * ref.std() / np.sqrt(n)
        assert abs(x.var() - ref.var()) < 5 * ref.var() * np.sqrt(2.0 / n) * (1 if kind == "normal" else 0.6)
        if kind == "uniform":
            assert x.min() >= 0.0 and x.max() < 1.0
        assert np.allclose(np.quantile(x, [0.1, 0.5, 0.9]), np.quantile(ref, [0.1, 0.5, 0.9]), atol=0.02)
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 5 / np.sqrt(n)
    assert not np.array_equal(a, b)
    # a dict passes through (shape-checked); another key implementation falls back to jax.random
    given = {"re": jnp.ones(shape), "im": jnp.zeros(shape)}
    assert [float(x.mean()) for x in noise_pair(given, ("re", "im"), shape, kind)] == [1.0, 0.0]
    with pytest.raises(ValueError, match="shape"):
        noise_pair(given, ("re", "im"), (3,), kind)
    a2, b2 = noise_pair(jax.random.key(3, impl="rbg"), ("re", "im"), shape, kind)
    assert a2.shape == shape and not np.array_equal(np.asarray(a2), np.asarray(b2))


@pytest.mark.parametrize("reverse", [False, True])
def test_lstm_scan_hand_written_backward_matches_autodiff(reverse):
    """lstm_scan's custom VJP (kernel gradient as one product after the backward scan) against autodiff
    of the plain per-frame recurrence: values and gradients of params, inputs and initial carry, with and
    without a padding mask, and vmapped over per-sequence weights."""
    from vdvae_jax.nn.layers import lstm_init, lstm_project, lstm_scan, lstm_step

    def plain(params, xs, carry, mask):
        def step(c, inputs):
            g, m = inputs
            new, h = lstm_step(params, c, g)
            return jax.tree.map(lambda a, b: jnp.where(m[..., None], a, b), new, c), h
        return jax.lax.scan(step, carry, (lstm_project(params, xs), mask), reverse=reverse)[1]

    k = jax.random.split(jax.random.key(7), 5)
    params = lstm_init(k[0], 6, 5)
    xs = jax.random.normal(k[1], (10, 3, 6))
    carry = tuple(0.5 * jax.random.normal(kk, (3, 5)) for kk in k[2:4])
    w = jax.random.normal(k[4], (10, 3, 5))
    full = jnp.ones((10, 3), bool)
    padded = jnp.arange(10)[:, None] < jnp.array([10, 4, 7])
    for mask in (None, padded):
        ours = lambda p, x, c: jnp.sum(w * jnp.sin(lstm_scan(p, x, reverse=reverse, carry=c, mask=mask)))  # noqa: E731
        ref = lambda p, x, c: jnp.sum(w * jnp.sin(plain(p, x, c, full if mask is None else mask)))         # noqa: E731
        np.testing.assert_allclose(ours(params, xs, carry), ref(params, xs, carry), rtol=1e-5)
        chex.assert_trees_all_close(jax.grad(ours, argnums=(0, 1, 2))(params, xs, carry),
                                    jax.grad(ref, argnums=(0, 1, 2))(params, xs, carry), atol=1e-5)
    many = jax.tree.map(lambda a: jnp.stack([a, 0.5 * a]), params)          # per-sequence weights
    per_seq = jax.vmap(jax.grad(lambda p, x: jnp.sum(jnp.sin(lstm_scan(p, x, reverse=reverse, mask=padded)))))
    per_ref = jax.vmap(jax.grad(lambda p, x: jnp.sum(jnp.sin(plain(p, x, tuple(jnp.zeros((3, 5)) for _ in "hc"),
                                                                   padded)))))
    chex.assert_trees_all_close(per_seq(many, jnp.stack([xs, -xs])), per_ref(many, jnp.stack([xs, -xs])), atol=1e-5)


def test_rvae_z_chain_hand_written_backward_matches_autodiff():
    """The RVAE encoder's z chain (LSTM on its own samples + Gaussian head) with its custom VJP against
    autodiff of the same scan: gradients of every weight, of g_x and of the noise, with batch axes and
    vmapped over per-sequence weights (the speech RVAE takes this path; its reference gradients are
    checked by the conformance tests)."""
    from vdvae_jax.models.rvae import _z_chain, _z_chain_forward

    k = jax.random.split(jax.random.key(11), 10)
    gx_dim, hidden, z_dim, t = 6, 5, 3, 9
    shapes = [(z_dim, 4 * hidden), (hidden, 4 * hidden), (4 * hidden,), (gx_dim + hidden, z_dim), (z_dim,),
              (gx_dim + hidden, z_dim), (z_dim,)]
    weights = tuple(0.4 * jax.random.normal(kk, s) for kk, s in zip(k, shapes))
    g_x = jax.random.normal(k[7], (t, 2, gx_dim))
    eps = jax.random.normal(k[8], (t, 2, z_dim))
    w_out = [jax.random.normal(kk, (t, 2, d))
             for kk, d in zip(jax.random.split(k[9], 4), (z_dim, z_dim, z_dim, hidden))]

    def loss(chain):
        return lambda w, gx, e: sum(jnp.sum(a * jnp.sin(o)) for a, o in zip(w_out, chain(w, gx, e)))

    ours, ref = loss(_z_chain), loss(lambda w, gx, e: _z_chain_forward(w, gx, e, keep=False))
    np.testing.assert_allclose(ours(weights, g_x, eps), ref(weights, g_x, eps), rtol=1e-6)
    chex.assert_trees_all_close(jax.grad(ours, argnums=(0, 1, 2))(weights, g_x, eps),
                                jax.grad(ref, argnums=(0, 1, 2))(weights, g_x, eps), atol=1e-5)
    many = jax.tree.map(lambda a: jnp.stack([a, -0.5 * a]), weights)
    chex.assert_trees_all_close(jax.vmap(jax.grad(ours), (0, None, None))(many, g_x, eps),
                                jax.vmap(jax.grad(ref), (0, None, None))(many, g_x, eps), atol=1e-5)


def test_lstm_scan_replays_its_residuals():
    """lstm_scan(..., residuals=lstm_scan_residuals(...)) returns the pass's hidden states and the same
    gradients for params, inputs and carry, without running the recurrence; residuals of another shape are
    refused."""
    from vdvae_jax.nn.layers import lstm_init, lstm_scan, lstm_scan_residuals

    k = jax.random.split(jax.random.key(12), 4)
    params = lstm_init(k[0], 6, 5)
    xs = jax.random.normal(k[1], (8, 2, 6))
    carry = tuple(0.3 * jax.random.normal(kk, (2, 5)) for kk in k[2:4])
    mask = jnp.arange(8)[:, None] < jnp.array([8, 5])
    res = lstm_scan_residuals(params, xs, reverse=True, carry=carry, mask=mask)
    fresh = lambda p, x, c: jnp.sum(jnp.cos(lstm_scan(p, x, reverse=True, carry=c, mask=mask)))  # noqa: E731
    replay = lambda p, x, c: jnp.sum(jnp.cos(lstm_scan(p, x, reverse=True, carry=c, mask=mask,  # noqa: E731
                                                       residuals=res)))
    np.testing.assert_allclose(replay(params, xs, carry), fresh(params, xs, carry), rtol=1e-6)
    chex.assert_trees_all_close(jax.grad(replay, argnums=(0, 1, 2))(params, xs, carry),
                                jax.grad(fresh, argnums=(0, 1, 2))(params, xs, carry), atol=1e-6)
    with pytest.raises(ValueError, match="residuals are for"):
        lstm_scan(params, xs[:4], mask=mask[:4], residuals=res)


def test_lstm_scan_gates_equals_lstm_scan():
    """lstm_scan_gates on lstm_project's gates: the same states and the same gradients as lstm_scan."""
    from vdvae_jax.nn.layers import lstm_init, lstm_project, lstm_scan, lstm_scan_gates

    k = jax.random.split(jax.random.key(13), 2)
    params = lstm_init(k[0], 6, 5)
    xs = jax.random.normal(k[1], (7, 3, 6))
    mask = jnp.arange(7)[:, None] < jnp.array([7, 4, 2])
    for reverse in (False, True):
        plain = lambda p, x: jnp.sum(jnp.sin(lstm_scan(p, x, reverse=reverse, mask=mask)))  # noqa: E731
        gated = lambda p, x: jnp.sum(jnp.sin(lstm_scan_gates(  # noqa: E731
            p, lstm_project(p, x), reverse=reverse, mask=mask)))
        np.testing.assert_allclose(gated(params, xs), plain(params, xs), rtol=1e-6)
        chex.assert_trees_all_close(jax.grad(gated, argnums=(0, 1))(params, xs),
                                    jax.grad(plain, argnums=(0, 1))(params, xs), atol=1e-6)


def test_pad_columns_keeps_the_layer():
    """dense(pad_columns(p), x)[..., :n] == dense(p, x); widths already a multiple are returned as given."""
    from vdvae_jax.nn.layers import dense, pad_columns

    k = jax.random.split(jax.random.key(17), 3)
    p = {"kernel": jax.random.normal(k[0], (6, 13)), "bias": jax.random.normal(k[1], (13,))}
    x = jax.random.normal(k[2], (4, 6))
    padded = pad_columns(p)
    assert padded["kernel"].shape == (6, 16) and padded["bias"].shape == (16,)
    np.testing.assert_allclose(dense(padded, x)[..., :13], dense(p, x), rtol=1e-6, atol=1e-6)
    assert pad_columns(padded) is padded


def test_noise_pair_stacked_equals_noise_pair_per_key():
    """noise_pair_stacked puts noise_pair(keys[n]) at index n of its axis, bit for bit (Threefry keys)."""
    from vdvae_jax.models.base import noise_pair, noise_pair_stacked

    keys = jax.random.split(jax.random.key(8), 3)
    for kind in ("uniform", "normal"):
        stacked = noise_pair_stacked(keys, ("a", "b"), (4, 2, 5), kind, axis=1)
        assert stacked[0].shape == (4, 3, 2, 5)
        for n in range(3):
            for got, want in zip(stacked, noise_pair(keys[n], ("a", "b"), (4, 2, 5), kind)):
                np.testing.assert_array_equal(got[:, n], want)
