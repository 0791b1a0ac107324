"""Enhancement API and CLI: the published VoiceBank RVAE works as a prior; bad files are reported."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO


def _run(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "vdvae_jax", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def test_cli_enhances_with_published_rvae_and_reports_bad_files(tmp_path, shared_dir):
    audio = np.load(shared_dir / "reference/inputs/audio.npz")
    speech, noise = audio["speech"][:16000], audio["noise"][:16000]
    noisy = speech + noise * np.sqrt(np.sum(speech**2) / np.sum(noise**2)) * 10 ** (-5 / 20)
    (tmp_path / "noisy").mkdir()
    (tmp_path / "clean").mkdir()
    sf.write(tmp_path / "noisy/a.wav", noisy.astype(np.float32), 16000, subtype="FLOAT")
    sf.write(tmp_path / "clean/a.wav", speech.astype(np.float32), 16000, subtype="FLOAT")
    sf.write(tmp_path / "noisy/bad_rate.wav", noisy[:8000].astype(np.float32), 8000, subtype="FLOAT")
    prior = shared_dir / "reference/checkpoints/dvae_se/vb_rvae"
    lv = _run(["enhance", "--prior", str(prior), "--noisy", "noisy", "--out", "enh_lv", "--method", "lv",
               "--niter", "2", "--quiet"], tmp_path)
    assert lv.returncode == 1 and "enhanced 1 of 2 files" in lv.stdout, lv.stderr[-3000:]
    assert np.isfinite(sf.read(tmp_path / "enh_lv/a.wav")[0]).all()
    out = _run(["enhance", "--prior", str(prior), "--noisy", "noisy", "--out", "enh", "--niter", "3",
                "--quiet"], tmp_path)
    assert out.returncode == 1, out.stderr[-3000:]  # one bad file
    assert "bad_rate.wav" in out.stderr and "sample rate 8000" in out.stderr
    assert "enhanced 1 of 2 files" in out.stdout
    enhanced, sr = sf.read(tmp_path / "enh/a.wav")
    assert sr == 16000 and enhanced.shape == noisy.shape and np.isfinite(enhanced).all()
    (tmp_path / "noisy/bad_rate.wav").unlink()
    res = _run(["evaluate", "--clean", "clean", "--estimate", "enh", "--noisy", "noisy", "--out",
                "m.json"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["rows"][0]["file"] == "a.wav" and "si_sdr_improvement" in metrics["rows"][0]


def test_evaluate_rejects_unpaired_folders(tmp_path):
    for folder, names in (("c", ["x.wav", "y.wav"]), ("e", ["x.wav"])):
        (tmp_path / folder).mkdir()
        for n in names:
            sf.write(tmp_path / folder / n, np.random.default_rng(0).standard_normal(4000) * 0.1, 16000)
    res = _run(["evaluate", "--clean", "c", "--estimate", "e", "--out", "m.json"], tmp_path)
    assert res.returncode != 0 and "do not pair up" in res.stderr and "y.wav" in res.stderr


def test_enhance_api_errors():
    from vdvae_jax.data.audio import AudioError
    from vdvae_jax.enhance import enhance
    from vdvae_jax import models
    import jax
    import jax.numpy as jnp

    model = models.build("vae", dense_x_z=(8,))
    prior = (model, model.init(jax.random.key(0), jnp.ones((2, 513))))
    with pytest.raises(ValueError, match="unknown method 'ddgm'"):
        enhance(np.ones(4000), 16000, prior, method="ddgm")
    with pytest.raises(TypeError, match="takes a DDGMConfig"):
        enhance(np.ones(4000), 16000, prior, method="lv", config="vb")
    with pytest.raises(AudioError, match="sample rate"):
        enhance(np.ones(4000), 8000, prior)
    with pytest.raises(AudioError, match="NaN"):
        enhance(np.full(4000, np.nan), 16000, prior)


@pytest.mark.parametrize("kind", ["lv", "no", "nolv"])
def test_enhance_with_deep_noise_models(kind):
    """method lv/no/nolv (U-NA): finite output, and speech + noise estimates add up to the input."""
    import jax
    import jax.numpy as jnp

    from vdvae_jax import models
    from vdvae_jax.enhance import enhance
    from vdvae_jax.inference.ddgm import DDGMConfig

    model = models.build("rvae_causal", z_dim=4, dim_rnn_g_x=8, dim_rnn_g_z=8, dim_rnn_h=8, input_transform="log")
    prior = (model, model.init(jax.random.key(0), jnp.ones((3, 513))))
    rng = np.random.default_rng(1)
    x = (np.sin(np.arange(6000) * 0.05) + 0.3 * rng.standard_normal(6000)).astype(np.float32)
    cfg = DDGMConfig(n_iter=3, noise_init="floor", floor_debias=True, speech_gain="utterance")
    speech, noise = enhance(x, 16000, prior, method=kind, config=cfg, bucket=16, return_noise=True)
    assert speech.shape == x.shape and np.isfinite(speech).all()
    np.testing.assert_allclose(speech + noise, x, atol=1e-4)
    assert np.sum(speech**2) < np.sum(x**2)


# ---------------------------------------------------------------------------------- bad input
def _small_prior(**kw):
    import jax
    import jax.numpy as jnp

    from vdvae_jax import models

    model = models.build("vae", **{"z_dim": 2, "dense_x_z": (8,), **kw})
    return model, model.init(jax.random.key(0), jnp.ones((2, 513)))


def test_prior_mismatch_and_corrupt_files_are_named(tmp_path):
    from vdvae_jax.enhance import PriorError, load_prior
    from vdvae_jax.models.io import save_model

    small, big = _small_prior(), _small_prior(dense_x_z=(16,))
    save_model(tmp_path / "ok.npz", *small)
    assert load_prior(tmp_path / "ok.npz")[0].config.dense_x_z == (8,)
    save_model(tmp_path / "mismatch.npz", small[0], big[1])  # config of one, weights of the other
    with pytest.raises(PriorError, match=r"mismatch.npz: weights do not match the vae architecture.*"
                                         r"parameter \['\w+'\]\['\w+'\]: weights \(\d+,( \d+)?\) vs "
                                         r"architecture \(\d+,( \d+)?\)"):
        load_prior(tmp_path / "mismatch.npz")
    with pytest.raises(PriorError, match="weights do not match"):
        load_prior((small[0], big[1]))
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(PriorError, match="corrupt.npz: corrupt or unreadable"):
        load_prior(tmp_path / "corrupt.npz")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_prior(tmp_path / "absent.npz")


def test_published_prior_mismatch_and_corrupt_checkpoint(tmp_path, shared_dir):
    from vdvae_jax.enhance import PriorError, load_prior

    src = shared_dir / "reference/checkpoints/dvae_se/vb_vae"
    bad = tmp_path / "bad_arch"
    bad.mkdir()
    (bad / "config.ini").write_text((src / "config.ini").read_text().replace("dense_x_z = 128",
                                                                            "dense_x_z = 64"))
    (bad / "VAE_final_epoch287.pt").symlink_to(src / "VAE_final_epoch287.pt")
    with pytest.raises(PriorError, match=r"mlp_x_z.*\(513, 128\).*\(513, 64\)"):
        load_prior(bad)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.ini").write_text((src / "config.ini").read_text())
    (broken / "VAE.pt").write_bytes((src / "VAE_final_epoch287.pt").read_bytes()[:5000])
    with pytest.raises(PriorError, match="cannot read the prior"):
        load_prior(broken)


def test_default_config_reduces_to_reference_and_bounds_the_gain():
    import jax

    from vdvae_jax.enhance import EnhanceConfig, enhance, smoothing_matrix
    from vdvae_jax.inference.se_vem import SEVEMConfig

    prior = _small_prior()
    x = (0.3 * np.random.default_rng(0).standard_normal(5000)).astype(np.float32)
    cfg = SEVEMConfig(n_iter=3, nmf_rank=3, lr=1e-2)
    ref = enhance(x, 16000, prior, config=cfg, bucket=16)
    same = enhance(x, 16000, prior, config=EnhanceConfig(vem=cfg), bucket=16)
    np.testing.assert_allclose(same, ref, rtol=1e-5, atol=1e-6)
    safe = EnhanceConfig(vem=cfg, noise_smooth_frames=5, noise_smooth_bins=3, gain_floor=0.5)
    speech, noise = enhance(x, 16000, prior, config=safe, bucket=16, return_noise=True,
                            key=jax.random.key(3))
    assert np.isfinite(speech).all() and np.isfinite(noise).all()
    # gain floor 0.5: the speech estimate keeps at least half of the mixture, noise at most half
    assert np.sum(speech**2) >= np.sum(noise**2) * 0.99
    C = np.asarray(smoothing_matrix(np.arange(6) < 4, 3))
    np.testing.assert_allclose(C.sum(0)[:4], 1.0, atol=1e-6)
    assert np.all(C[4:] == 0)  # padded frames never feed valid ones
    with pytest.raises(ValueError, match="odd"):
        EnhanceConfig(noise_smooth_frames=4)
    with pytest.raises(ValueError, match="unknown config"):
        enhance(x, 16000, prior, config="nope")


def test_tonal_noise_components_and_fall_back():
    import jax
    import jax.numpy as jnp

    from vdvae_jax.enhance import (EnhanceConfig, _smooth_m_step, enhance, smoothing_matrix,
                                   tonal_speech_correlation)
    from vdvae_jax.inference.se_vem import SEVEMConfig

    prior = _small_prior()
    t = np.arange(8000) / 16000
    rng = np.random.default_rng(1)
    x = (0.02 * rng.standard_normal(t.size) + 0.5 * np.sin(2 * np.pi * 1000.0 * t)).astype(np.float32)
    smooth = EnhanceConfig(vem=SEVEMConfig(n_iter=10, nmf_rank=2, lr=1e-2), noise_smooth_frames=5,
                           noise_smooth_bins=33)
    tonal = dataclasses.replace(smooth, noise_tonal_components=1, noise_tonal_frames=0,
                                noise_tonal_speech_corr=1.0)  # never fall back

    def tone_db(y):  # power at 1 kHz relative to the input, by projection on the sinusoid
        c = [np.dot(v, np.exp(-2j * np.pi * 1000.0 * t)) for v in (y, x)]
        return 20 * np.log10(abs(c[0]) / abs(c[1]))

    y_s, y_t = (enhance(x, 16000, prior, config=c, bucket=16) for c in (smooth, tonal))
    assert tone_db(y_t) < -10.0
    # a threshold of -1 always falls back: exactly the smoothed model
    back = dataclasses.replace(tonal, noise_tonal_speech_corr=-1.0)
    np.testing.assert_array_equal(enhance(x, 16000, prior, config=back, bucket=16), y_s)
    # the M-step alone on a flat spectrum plus one line: only the tonal block fits the line
    f, n = 48, 20
    P = jnp.ones((n, f)).at[:, 20].set(100.0)
    vs, g, m = jnp.full((n, 2, f), 1e-3), jnp.ones(n), jnp.ones(n)
    key = jax.random.split(jax.random.key(0), 4)
    Ws = (jax.random.uniform(key[0], (f, 2)) + 0.1, jax.random.uniform(key[1], (f, 1)) + 0.1)
    Hs = (jax.random.uniform(key[2], (2, n)) + 0.1, jax.random.uniform(key[3], (1, n)) + 0.1)
    B, C = smoothing_matrix(jnp.ones(f, bool), 9).T, smoothing_matrix(jnp.ones(n, bool), 5)
    D = smoothing_matrix(jnp.ones(n, bool), 2 * n + 1)
    for blocks in (1, 2):
        W, H, Bs, Cs = Ws[:blocks], Hs[:blocks], (B, None)[:blocks], (C, D)[:blocks]
        step = jax.jit(lambda W, H: _smooth_m_step(P, vs, W, H, g, Bs, Cs, m)[:2])
        for _ in range(30):
            W, H = step(W, H)
        Vb = sum((Wi if Bi is None else Bi @ Wi) @ (Hi @ Ci) for Wi, Hi, Bi, Ci in zip(W, H, Bs, Cs))
        ratio = float(jnp.mean(Vb[20]) / 100.0)
        assert (ratio < 0.3) if blocks == 1 else (ratio > 0.8), (blocks, ratio)
    # the co-modulation statistic: a band following the speech envelope vs a steady one
    e = (np.abs(np.sin(np.linspace(0, 6, 40))) + 0.05).astype(np.float32)
    P = np.stack([3.0 * e, np.full(40, 2.0), np.ones(40)], 1).astype(np.float32)  # speech-like, steady, flat
    vs = np.broadcast_to(np.stack([e, 0 * e, 0 * e], 1)[:, None, :], (40, 2, 3)).astype(np.float32)
    W = np.eye(3, dtype=np.float32)[:, :2]  # tonal lines on bins 0 and 1
    rho = np.asarray(tonal_speech_correlation(P, vs, np.ones(40, np.float32), W, np.ones(40, bool)))
    assert rho[0] > 0.99 and abs(rho[1]) < 1e-3
    with pytest.raises(ValueError, match="noise_tonal_components"):
        EnhanceConfig(noise_tonal_components=-1)
    with pytest.raises(ValueError, match="noise_tonal_frames"):
        EnhanceConfig(noise_tonal_frames=4)


def _write(path, x, sr=16000):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.asarray(x, np.float32), sr, subtype="FLOAT")


def test_cli_bad_files_are_reported_and_the_rest_processed(tmp_path, capsys):
    from vdvae_jax.__main__ import main
    from vdvae_jax.models.io import save_model

    save_model(tmp_path / "prior.npz", *_small_prior())
    rng = np.random.default_rng(0)
    speech = (0.3 * np.sin(np.arange(6000) * 0.05) * rng.uniform(0.5, 1, 6000)).astype(np.float32)
    noisy = speech + 0.05 * rng.standard_normal(6000).astype(np.float32)
    _write(tmp_path / "noisy/good.wav", noisy)
    _write(tmp_path / "noisy/silent.wav", np.zeros(6000))
    _write(tmp_path / "noisy/nan.wav", np.full(6000, np.nan))
    _write(tmp_path / "noisy/rate.wav", noisy[:3000], sr=8000)
    (tmp_path / "noisy/junk.wav").write_bytes(b"RIFF....not a wav")
    status = main(["enhance", "--prior", str(tmp_path / "prior.npz"), "--noisy", str(tmp_path / "noisy"),
                   "--out", str(tmp_path / "enh"), "--niter", "2", "--quiet"])
    err = capsys.readouterr()
    assert status == 1 and "enhanced 1 of 5 files" in err.out
    assert "silent.wav" in err.err and "silent" in err.err
    assert "nan.wav" in err.err and "NaN" in err.err
    assert "rate.wav" in err.err and "sample rate 8000 Hz, expected 16000 Hz" in err.err
    assert "junk.wav" in err.err and "unreadable" in err.err
    assert sorted(p.name for p in (tmp_path / "enh").iterdir()) == ["good.wav"]
    # unusable prior: status 2 and a message, no traceback
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    assert main(["enhance", "--prior", str(tmp_path / "bad.npz"), "--noisy", str(tmp_path / "noisy"),
                 "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "corrupt or unreadable" in capsys.readouterr().err
    assert main(["enhance", "--prior", str(tmp_path / "absent"), "--noisy", str(tmp_path / "noisy"),
                 "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_evaluate_unpaired_rates_and_bad_files(tmp_path, capsys):
    from vdvae_jax.__main__ import main

    rng = np.random.default_rng(1)
    s = (0.3 * np.sin(np.arange(16000) * 0.03)).astype(np.float32)
    for name in ("a", "b", "c", "only_clean"):
        _write(tmp_path / f"clean/{name}.wav", s)
    for name in ("a", "b", "c", "only_est"):
        _write(tmp_path / f"est/{name}.wav", s + 0.05 * rng.standard_normal(s.size))
    _write(tmp_path / "est/b.wav", s[::2], sr=8000)  # rate differs from its clean file
    _write(tmp_path / "est/c.wav", np.full(s.size, np.nan))
    args = ["evaluate", "--clean", str(tmp_path / "clean"), "--estimate", str(tmp_path / "est"),
            "--out", str(tmp_path / "m.json")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "do not pair up" in err and "only_clean.wav" in err and "only_est.wav" in err
    assert main(args + ["--allow-unpaired"]) == 1  # b and c fail, a is evaluated
    out = capsys.readouterr()
    res = json.loads((tmp_path / "m.json").read_text())
    assert [r["file"] for r in res["rows"]] == ["a.wav"] and np.isfinite(res["rows"][0]["si_sdr"])
    assert res["unmatched"] == {"clean": ["only_clean.wav"], "estimate": ["only_est.wav"]}
    fails = "\n".join(res["failures"])
    assert "b.wav: sample rates differ" in fails and "16000 Hz" in fails and "8000 Hz" in fails
    assert "c.wav" in fails and "NaN" in fails
    assert "evaluated 1 of 3 files" in out.out
