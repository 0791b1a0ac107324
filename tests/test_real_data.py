"""Real noisy set builder: planning, mixing and manifest logic on synthetic arrays (no network)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from vdvae_jax.data.audio import AudioError
from vdvae_jax.data import real

VOICES = [{"path": f"v/{spk}_{i}.ogg", "speaker": spk} for spk in ("a", "b") for i in range(5)]
NOISES = [{"path": f"n/{kind}_{i}.ogg", "noise_type": kind} for kind in ("rain", "music", "hum")
          for i in range(2)]


def test_plan_is_deterministic_and_balanced():
    p1 = real.plan_mixtures(VOICES, NOISES, 16, seed=3)
    assert p1 == real.plan_mixtures(VOICES, NOISES, 16, seed=3)
    assert p1 != real.plan_mixtures(VOICES, NOISES, 16, seed=4)
    snrs = [p["snr_db"] for p in p1]
    assert all(snrs.count(s) == 4 for s in real.SNRS)
    for spk in ("a", "b"):  # every speaker meets every SNR
        assert sorted({p["snr_db"] for p in p1 if p["speaker"] == spk}) == sorted(real.SNRS)
    assert {p["noise_type"] for p in p1} == {"rain", "music", "hum"}
    assert len({p["file"] for p in p1}) == 16
    assert all(p["voice"].startswith(f"v/{p['speaker']}_") for p in p1)
    with pytest.raises(real.RealDataError, match="noise"):
        real.plan_mixtures(VOICES, [], 4)


def test_mix_item_snr_offset_and_peak():
    rng = np.random.default_rng(0)
    s = rng.standard_normal(8000) * 0.1
    n = rng.standard_normal(3000)  # shorter than the speech: looped
    clean, noisy, offset = real.mix_item(s, n, 5.0, seed=1)
    assert 0 <= offset < n.size and clean.shape == noisy.shape == s.shape
    assert np.isclose(np.max(np.abs(noisy)), 0.9, atol=1e-6)
    resid = noisy.astype(np.float64) - clean
    assert np.isclose(10 * np.log10(np.sum(clean.astype(np.float64) ** 2) / np.sum(resid**2)), 5.0,
                      atol=1e-3)
    np.testing.assert_allclose(clean / (np.max(np.abs(clean))), s / np.max(np.abs(s)), atol=1e-6)
    _, noisy2, offset2 = real.mix_item(s, n, 5.0, seed=1)
    assert offset2 == offset and np.array_equal(noisy2, noisy)
    with pytest.raises(AudioError, match="noise"):
        real.mix_item(s, np.zeros(100), 0.0, seed=0)
    with pytest.raises(AudioError, match="speech"):
        real.mix_item(np.full(100, np.nan), n, 0.0, seed=0)


def test_write_set_renders_pairs_and_manifest(tmp_path):
    rng = np.random.default_rng(1)
    t = np.arange(16000 * 3) / 16000
    audio = {v["path"]: (0.3 * np.sin(2 * np.pi * (150 + 10 * i) * t) * (1 + np.sin(3 * t))).astype(np.float32)
             for i, v in enumerate(VOICES)}
    audio.update({nz["path"]: rng.standard_normal(16000).astype(np.float32) for nz in NOISES})
    plan = real.plan_mixtures(VOICES, NOISES, 4, seed=0)
    path = real.write_set(tmp_path / "set", plan, loader=audio.__getitem__, extra={"seed": 0})
    manifest = json.loads(path.read_text())
    assert manifest == real.load_manifest(tmp_path / "set") and manifest["sr"] == 16000
    assert [it["file"] for it in manifest["items"]] == [p["file"] for p in plan]
    for it in manifest["items"]:
        c, sr_c = sf.read(tmp_path / "set/clean" / it["file"])
        x, sr_x = sf.read(tmp_path / "set/noisy" / it["file"])
        assert sr_c == sr_x == 16000 and c.shape == x.shape and 2.0 <= c.size / 16000 <= 5.0
        snr = 10 * np.log10(np.sum(c**2) / np.sum((x - c) ** 2))
        assert abs(snr - it["snr_db"]) < 1e-2
    short = dict(audio, **{VOICES[0]["path"]: audio[VOICES[0]["path"]][:8000]})
    with pytest.raises(AudioError, match="after trimming"):
        real.write_set(tmp_path / "bad", [dict(plan[0], voice=VOICES[0]["path"])], loader=short.__getitem__)
    with pytest.raises(FileNotFoundError, match="real_noisy.py --build"):
        real.load_manifest(tmp_path / "nothing")


def test_sources_and_decoding_from_an_unpacked_tree(tmp_path):
    root = tmp_path / "root"
    voice = root / "usr/share/games/fillets-ng/sound/lev/cs/lev-m-hello.ogg"
    glest = root / "usr/share/games/megaglest/tilesets/t1/sounds/rain.ogg"
    link = root / "usr/share/games/megaglest/tilesets/t2/sounds/rain.ogg"
    for p in (voice, glest):
        p.parent.mkdir(parents=True)
        sf.write(p, 0.1 * np.sin(np.arange(22050 * 3) * 0.05), 22050, format="OGG", subtype="VORBIS")
    link.parent.mkdir(parents=True)
    link.symlink_to(glest)
    assert real.voice_sources(root) == [{"path": str(voice), "speaker": "fillets-small"}]
    assert real.noise_sources(root) == [{"path": str(glest), "noise_type": "rain"}]  # link deduplicated
    x = real.decode_audio(voice)
    assert x.dtype == np.float32 and abs(x.size - 48000) <= 1
    assert [v["path"] for v in real.select_voices(real.voice_sources(root))] == [str(voice)]


def test_fetch_reports_missing_tools(tmp_path):
    with pytest.raises(real.RealDataError, match="apt-get"):
        real.fetch_debs(["fillets-ng-data-cs"], tmp_path, apt_get="no-such-apt-get-binary")


def test_paired_speech_enhancement_layouts(tmp_path):
    from vdvae_jax.data.datasets import paired_folders, se_test_list, voicebank_demand_pairs

    x = np.zeros(800, np.float32) + 0.1
    for sub in ("clean_testset_wav", "noisy_testset_wav"):
        for name in ("p232_001.wav", "p257_002.wav"):
            (tmp_path / "vb" / sub).mkdir(parents=True, exist_ok=True)
            sf.write(tmp_path / "vb" / sub / name, x, 48000)
    pairs = voicebank_demand_pairs(tmp_path / "vb")
    assert [p["name"] for p in pairs] == ["p232_001.wav", "p257_002.wav"]
    assert pairs[0]["noisy"].parent.name == "noisy_testset_wav"
    (tmp_path / "vb/noisy_testset_wav/p257_002.wav").unlink()
    with pytest.raises(FileNotFoundError, match="p257_002"):
        paired_folders(tmp_path / "vb/clean_testset_wav", tmp_path / "vb/noisy_testset_wav")
    lst = tmp_path / "wsj_test.json"
    lst.write_text(json.dumps([{"noisy_wav": "{noisy_root}/p232_001.wav", "clean_wav":
                                "{clean_root}/p232_001.wav", "snr": -5, "noise_type": "CAFE"}]))
    rows = se_test_list(lst, tmp_path / "vb/noisy_testset_wav", tmp_path / "vb/clean_testset_wav")
    assert rows[0]["snr"] == -5 and rows[0]["noisy_wav"].is_file()
    with pytest.raises(FileNotFoundError, match="missing"):
        se_test_list(lst, tmp_path / "nowhere", tmp_path / "vb/clean_testset_wav")
