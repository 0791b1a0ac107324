"""Bucketed, masked resynthesis equals whole-utterance resynthesis; model files round-trip."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdvae_jax import models
from vdvae_jax.data.stft import StftConfig, stft_librosa
from vdvae_jax.evaluation import bucket_length, resynthesize
from vdvae_jax.models.io import load_model, save_model

SMALL = {"vae": {"dense_x_z": (8,)},
         "rvae": {"dim_rnn_g_x": 8, "dim_rnn_g_z": 8, "dim_rnn_h": 8},
         "srnn": {"dense_x_h": (8,), "dim_rnn_h": 8, "dense_hx_g": (8,), "dim_rnn_g": 8,
                  "dense_gz_z": (8,), "dense_hz_z": (8,), "dense_hz_x": (8,)}}


SMALL_ZOO = {**SMALL,
             "dkf": {"dense_x_gx": (8,), "dim_rnn_gx": 8, "dense_ztm1_g": (8,), "dense_g_z": (8,),
                     "dense_z_x": (8,)},
             "storn": {}, "vrnn": {}, "dsae": {}, "srnn_ss": SMALL["srnn"], "rvae_causal": SMALL["rvae"]}


@pytest.mark.parametrize("name", sorted(SMALL_ZOO))
def test_masked_padding_matches_unpadded(name):
    model = models.build(name, x_dim=513, z_dim=3, **SMALL_ZOO[name])
    params = model.init(jax.random.key(0), jnp.ones((4, 513)))
    x = jnp.asarray(np.random.default_rng(0).uniform(0.01, 1, (11, 1, 513)), jnp.float32)
    eps = np.random.default_rng(1).standard_normal((16, 1, 3)).astype(np.float32)
    noise = {"z": eps, "v": np.ones((1, 16), np.float32), "coin": np.zeros((16, 1), np.float32)}
    plain = model.forward(params, x, {k: (v[:11] if k != "v" else v) for k, v in noise.items()})
    padded_x = jnp.concatenate([x, jnp.zeros((5, 1, 513))], axis=0)
    mask = jnp.arange(16)[:, None] < 11
    padded = model.forward(params, padded_x, noise, mask=mask)
    np.testing.assert_allclose(padded.x_out.logvar[:11], plain.x_out.logvar, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(padded.z[:11], plain.z, rtol=1e-5, atol=1e-5)


def test_resynthesize_shapes_and_buckets(tmp_path):
    model = models.build("rvae", **SMALL["rvae"])
    params = model.init(jax.random.key(0), jnp.ones((4, 513)))
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(n).astype(np.float32) * 0.1 for n in (4000, 9000, 4100)]
    out = resynthesize(model, params, waves, jax.random.key(1), bucket=16, batch=2)
    assert [len(o) for o in out] == [len(w) for w in waves]
    assert all(np.isfinite(o).all() for o in out)
    assert bucket_length(17, 16) == 32 and bucket_length(16, 16) == 16
    # the frame count follows the librosa recipe
    assert stft_librosa(waves[0], StftConfig(pad_mode="constant")).shape == (1 + 4000 // 256, 513)


def test_model_file_round_trip_and_mismatch(tmp_path):
    model = models.build("srnn", **SMALL["srnn"])
    params = model.init(jax.random.key(0), jnp.ones((4, 513)))
    save_model(tmp_path / "m.npz", model, params)
    loaded, loaded_params = load_model(tmp_path / "m.npz")
    assert loaded.config == model.config
    jax.tree.map(np.testing.assert_array_equal, loaded_params, params)
    bad = jax.tree.map(lambda a: a, params)
    bad["gen_logvar"]["kernel"] = jnp.zeros((3, 3))
    save_model(tmp_path / "bad.npz", model, bad)
    with pytest.raises(ValueError, match="do not match"):
        load_model(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.npz")
