"""Enhancement API and CLI: the published VoiceBank RVAE works as a prior; bad files are reported."""

from __future__ import annotations

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
    with pytest.raises(NotImplementedError, match="lv/no/nolv"):
        enhance(np.ones(4000), 16000, prior, method="lv")
    with pytest.raises(AudioError, match="sample rate"):
        enhance(np.ones(4000), 8000, prior)
    with pytest.raises(AudioError, match="NaN"):
        enhance(np.full(4000, np.nan), 16000, prior)
