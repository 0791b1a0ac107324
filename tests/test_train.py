"""Training: schedules, early stopping, exact resume after a kill, data parallel == single device."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vdvae_jax import models
from vdvae_jax.train import (EarlyStopping, TrainConfig, fit, init_train_state, kl_warmup,
                             make_eval_step, make_train_step, scheduled_sampling_prob)

from conftest import REPO


def test_kl_warmup_schedules():
    assert [kl_warmup(e, "linear", 50) for e in (0, 25, 49, 50, 300)] == [0.0, 0.5, 0.98, 1.0, 1.0]
    assert [kl_warmup(e, "steps") for e in (0, 9, 10, 25, 49, 50, 70)] == [0.0, 0.0, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert kl_warmup(3, "none") == 1.0
    with pytest.raises(ValueError, match="unknown kl_warmup"):
        kl_warmup(0, "cosine")


def test_scheduled_sampling_schedule():
    assert [scheduled_sampling_prob(e, 50, 150) for e in (0, 49, 50, 100, 149, 150, 200)] == \
        [0.0, 0.0, 0.0, 0.5, 0.99, 1.0, 1.0]


def test_early_stopping_keeps_true_best_unless_reference_quirk():
    for quirk, expected in [(False, 1.0), (True, 3.0)]:
        stop = EarlyStopping(patience=2, best_is_last=quirk)
        stop.update(0, 5.0, {"w": np.array(1.0)})
        stop.update(1, 6.0, {"w": np.array(2.0)})
        done = stop.update(2, 7.0, {"w": np.array(3.0)})
        assert done and stop.best_epoch == 0
        assert float(stop.best_params["w"]) == expected


def _setup(name="rvae"):
    model = models.build(name, x_dim=9, z_dim=3, **({"dim_rnn_g_x": 8, "dim_rnn_g_z": 8, "dim_rnn_h": 8}
                                                     if name == "rvae" else {}))
    rng = np.random.default_rng(0)
    train_x = rng.uniform(0.01, 1.0, (24, 6, 9)).astype(np.float32)
    val_x = rng.uniform(0.01, 1.0, (8, 6, 9)).astype(np.float32)
    params = model.init(jax.random.key(1), jnp.asarray(train_x[0]))
    opt = optax.adam(1e-2)
    return model, opt, init_train_state(params, opt), train_x, val_x


def test_train_step_traces_once():
    model, opt, state, train_x, _ = _setup()
    step = jax.jit(chex.assert_max_traces(make_train_step(model, opt), n=1))
    key = jax.random.key(2)
    for i in range(3):  # changing schedule values must not retrace
        state, metrics = step(state, train_x[:4], key, jnp.float32(0.1 * i), jnp.float32(0.0))
    assert int(state.step) == 3 and np.isfinite(float(metrics["loss"]))


def test_resume_after_kill_equals_uninterrupted(tmp_path):
    model, opt, state, train_x, val_x = _setup()
    cfg = TrainConfig(lr=1e-2, beta=1.0, batch_size=4, epochs=3, warmup_epochs=2, patience=5,
                      checkpoint_every=2)
    step = jax.jit(make_train_step(model, opt))
    ev = jax.jit(make_eval_step(model))
    key = jax.random.key(3)
    kw = dict(train_step=step, eval_step=ev, train_data=train_x, val_data=val_x, config=cfg, key=key,
              progress=False, log=lambda s: None)
    full, full_stop, full_hist = fit(state=state, workdir=tmp_path / "a", **kw)
    killed, _, _ = fit(state=state, workdir=tmp_path / "b", max_steps=7, **kw)  # dies mid-epoch 1
    assert int(killed.step) == 7
    resumed, res_stop, res_hist = fit(state=state, workdir=tmp_path / "b", **kw)
    assert int(resumed.step) == int(full.step) == 18
    chex.assert_trees_all_equal(resumed.params, full.params)
    chex.assert_trees_all_equal(resumed.opt_state, full.opt_state)
    chex.assert_trees_all_equal(res_stop.best_params, full_stop.best_params)
    assert [h["epoch"] for h in res_hist] == [0, 1, 2]
    assert (tmp_path / "b" / "metrics.jsonl").is_file()


def test_data_parallel_equals_single_device():
    code = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np, optax, chex
        from vdvae_jax import models
        from vdvae_jax.train import data_parallel, init_train_state, make_train_step
        assert jax.device_count() == 4, jax.devices()
        model = models.build("srnn", x_dim=9, z_dim=3, dense_x_h=(8,), dim_rnn_h=8, dense_hx_g=(8,),
                             dim_rnn_g=8, dense_gz_z=(8,), dense_hz_z=(8,), dense_hz_x=(8,))
        x = jnp.asarray(np.random.default_rng(0).uniform(0.01, 1, (8, 5, 9)), jnp.float32)
        opt = optax.adam(1e-2)
        state = init_train_state(model.init(jax.random.key(0), x[0]), opt)
        step = make_train_step(model, opt)
        single, dp = state, state
        for i in range(3):
            single, m1 = jax.jit(step)(single, x, jax.random.key(1), 0.5, 0.0)
            dp, m2 = data_parallel(step)(dp, x, jax.random.key(1), 0.5, 0.0)
        assert len(dp.params["rnn_h"]["forward"]["kernel_hh"].sharding.device_set) == 4
        chex.assert_trees_all_close(dp.params, single.params, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)
        print("OK")
    """)
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK" in out.stdout
