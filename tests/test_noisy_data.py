"""The noisy default corpus (vdvae_jax.data.noisy) and the experiments/enhance.py smoke run."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from vdvae_jax.data.corpus import build_default_corpus
from vdvae_jax.data.noisy import build_noisy_corpus, measured_snr, noisy_segments

SNRS = (-5.0, 0.0, 5.0, 10.0)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    corpus = build_default_corpus(3, cache_dir=root, n_train=2, n_val=1, n_test=2, n_babble=2,
                                  utts_per_speaker=2, progress=False, num_workers=1)
    return root, corpus, build_noisy_corpus(3, corpus=corpus, cache_dir=root / "noisy", progress=False)


def test_snr_is_exact_and_splits(small):
    _, corpus, noisy = small
    test = noisy.mixtures("test")
    assert len(test) == len(corpus.utterances("test")) * len(SNRS)  # every test utterance at every SNR
    assert len(noisy.mixtures("train")) == len(corpus.utterances("train"))
    for m in noisy.mixtures():
        x, s = noisy.load(m)
        assert x.shape == s.shape and x.dtype == np.float32
        assert abs(measured_snr(s, x) - m.snr) < 0.01, (m, measured_snr(s, x))
    for snr in SNRS:
        assert len(noisy.mixtures("test", snr=snr)) == len(corpus.utterances("test"))


def test_test_split_is_speaker_and_noise_disjoint(small):
    _, _, noisy = small
    test, train = noisy.mixtures("test"), noisy.mixtures("train") + noisy.mixtures("val")
    assert not {m.speaker for m in test} & {m.speaker for m in train}
    assert not {m.noise for m in test} & {m.noise for m in train}
    assert {m.noise for m in test} == {"amplitude_modulated"}


def test_deterministic_and_cached(small, tmp_path):
    root, corpus, noisy = small
    again = build_noisy_corpus(3, corpus=corpus, cache_dir=root / "noisy", progress=False)
    assert again.root == noisy.root  # reopened from the cache
    fresh = build_noisy_corpus(3, corpus=corpus, cache_dir=tmp_path, progress=False)  # rebuilt
    for a, b in zip(noisy.mixtures(), fresh.mixtures()):
        assert a.noise_seed == b.noise_seed and a.noise_params == b.noise_params
        np.testing.assert_array_equal(noisy.load(a)[0], fresh.load(b)[0])
    other = build_noisy_corpus(4, corpus=corpus, cache_dir=tmp_path, progress=False)
    assert other.root != fresh.root
    assert not np.array_equal(noisy.load(noisy.mixtures("test")[0])[0], other.load(other.mixtures("test")[0])[0])


def test_segments_and_errors(small):
    root, corpus, noisy = small
    segs = noisy_segments(noisy, "train", 50)
    assert segs.ndim == 3 and segs.shape[1:] == (50, 513) and np.all(np.isfinite(segs))
    with pytest.raises(ValueError, match="disjoint"):
        build_noisy_corpus(3, corpus=corpus, cache_dir=root / "bad", train_noises=("white",),
                           test_noises=("white",), progress=False)
    with pytest.raises(ValueError, match="unknown noise type"):
        build_noisy_corpus(3, corpus=corpus, cache_dir=root / "bad", test_noises=("thunder",), progress=False)
    with pytest.raises(ValueError, match="split"):
        noisy.mixtures("dev")
    with pytest.raises(ValueError, match="noise_split"):
        build_noisy_corpus(3, corpus=corpus, cache_dir=root / "bad", noise_split="speaker", progress=False)


def test_recording_split_trains_on_the_test_noise_type(small):
    """noise_split='recording' (WSJ0-QUT-like): training also has the test noise type, with other seeds."""
    root, corpus, typed = small
    rec = build_noisy_corpus(3, corpus=corpus, cache_dir=root / "noisy", noise_split="recording", progress=False)
    assert rec.root != typed.root
    train = rec.mixtures("train")
    assert {m.noise for m in rec.mixtures("test")} == {"amplitude_modulated"}
    assert list(rec.manifest["params"]["train_noises"]) == ["white", "pink", "brown", "babble", "amplitude_modulated"]
    assert {m.noise for m in train} <= set(rec.manifest["params"]["train_noises"])
    seeds = {m.noise_seed for m in rec.mixtures("test")}
    assert not seeds & {m.noise_seed for m in train + rec.mixtures("val")}
    assert [m.noise_seed for m in rec.mixtures("test")] == [m.noise_seed for m in typed.mixtures("test")]


@pytest.mark.slow
def test_enhance_experiment_smoke(tmp_path):
    """experiments/enhance.py --smoke runs end to end and writes its table (belongs with test_experiments)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = tmp_path / "enh"
    proc = subprocess.run([sys.executable, str(REPO / "experiments" / "enhance.py"), "--smoke", "--out", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert {"noisy", "NMF-VEM", "NMF-VEM, enhance default", "NOLV U-NA", "NOLV U-ND", "NOLV U-NDA"} <= set(res["results"])
    for r in res["results"].values():
        assert np.isfinite(r["summary"]["mean"]["si_sdr"])
    assert (out / "results.md").is_file() and (out / "spectrograms.png").is_file()
    # "below input" column: mixtures whose SI-SDR fell below the noisy input's (0 for the noisy row)
    assert "| below input |" in res["table"] and "| noisy |" in res["table"]
    noisy_row = next(line for line in res["table"].splitlines() if line.startswith("| noisy |"))
    assert f"| 0/{len(res['mixtures'])} |" in noisy_row
