"""Batches split over several devices (two CPU devices in a subprocess): MixDVAE ``solve(devices=)`` and
batched SE-VEM ``enhance_stft_batch(devices=)``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CODE = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, pytest
    import test_mixdvae_vem as t
    import test_se_vem_batch as tb
    from vdvae_jax.inference import mixdvae as mv, se_vem_batch
    assert jax.device_count() == 2, jax.devices()

    # MixDVAE: each half of the batch is an ordinary run with keys fold_in(key, i)
    halves = lambda d, i: d._replace(**{f: getattr(d, f)[:, 2 * i:2 * i + 2]
                                       for f in d._fields if f != "params"})
    cases = [(mv.mot_vem(t.MOT, mv.MOTOptions(init="constant")),
              mv.mot_data(t._mot_params(), t._tracks(T=12, B=4))),
             (mv.scass_vem(t.SC, mv.SCASSOptions()),
              mv.scass_data(mv.stack_params([t._sc_params(0), t._sc_params(1)]), t._mix(B=4)))]
    ik, key = jax.random.key(1), jax.random.key(2)
    for alg, data in cases:
        state, info = mv.solve(alg, key, data, 3, init_key=ik, devices=2)
        assert info.elbo.shape == (2, 3) and state.iteration.shape == (2,)  # one value per group
        for i in range(2):
            s1, i1 = mv.solve(alg, jax.random.fold_in(key, i), halves(data, i), 3,
                              init_key=jax.random.fold_in(ik, i))
            np.testing.assert_allclose(np.asarray(jax.tree.leaves(state)[0])[:, :, 2 * i:2 * i + 2],
                                       np.asarray(jax.tree.leaves(s1)[0]), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(np.asarray(info.elbo[i]), np.asarray(i1.elbo), rtol=1e-4)
        three = data._replace(**{f: getattr(data, f)[:, :3] for f in data._fields if f != "params"})
        with pytest.raises(ValueError, match="divisible"):
            mv.solve(alg, key, three, 3, devices=2)
    with pytest.raises(ValueError, match="local device"):
        mv.solve(alg, key, data, 3, devices=3)

    # SC-ASS separation API: mixtures (M, T, F) split over the devices, ELBO summed over the groups
    from vdvae_jax.separation.vem import mixdvae_separate
    mix = jnp.swapaxes(jnp.asarray(t._mix(B=4)), 0, 1)
    mu, elbo = mixdvae_separate(t.SC, [t._sc_params(0), t._sc_params(1)], mix, key, n_iter=3, devices=2)
    _, infos = mv.solve(mv.scass_vem(t.SC, mv.SCASSOptions(), record=False), key, mv.scass_data(
        mv.stack_params([t._sc_params(0), t._sc_params(1)]), jnp.swapaxes(mix, 0, 1)), 3, devices=2)
    assert mu.shape == (4, 2) + mix.shape[1:] and elbo.shape == (3,)
    np.testing.assert_allclose(np.asarray(elbo), np.asarray(infos.elbo).sum(0), rtol=1e-5)
    assert mixdvae_separate(t.SC, [t._sc_params(0), t._sc_params(1)], mix, key, n_iter=3, devices=1)[1].shape == (3,)

    # SE-VEM: per-utterance keys, so the split result is the one-device result
    model, params = tb._small("vae")
    X, mask = tb._batch([9, 16, 5, 12], 16)
    keys = jax.random.split(jax.random.key(3), 4)
    one = se_vem_batch.enhance_stft_batch(model, params, X, mask, keys, tb.CFG)
    two = se_vem_batch.enhance_stft_batch(model, params, X, mask, keys, tb.CFG, devices=2)
    assert len(two[0].sharding.device_set) == 2
    for a, b in zip(one, two):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="split evenly"):
        se_vem_batch.enhance_stft_batch(model, params, X[:3], mask[:3], keys[:3], tb.CFG, devices=2)
    print("OK")
""")


def test_batches_split_over_two_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    out = subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "OK" in out.stdout
