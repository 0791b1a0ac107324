"""Tests for the embedded synthetic speech corpus (tiny builds only)."""

import numpy as np
import pytest
import soundfile as sf

from vdvae_jax.data.corpus import SPLITS, Corpus, build_default_corpus, default_cache_dir

TINY = dict(n_train=2, n_val=1, n_test=1, n_babble=1, utts_per_speaker=2, progress=False,
            num_workers=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_default_corpus(3, cache_dir=tmp_path_factory.mktemp("c1"), **TINY)


def test_deterministic(corpus, tmp_path):
    other = build_default_corpus(3, cache_dir=tmp_path, **TINY)
    a, b = corpus.utterances(), other.utterances()
    assert [u.text for u in a] == [u.text for u in b]
    for ua, ub in zip(a, b):
        assert ua.path.read_bytes() == ub.path.read_bytes()
        assert ua.phonemes == ub.phonemes and ua.words == ub.words
    assert corpus.root.name == other.root.name  # name = hash of the build parameters
    different = build_default_corpus(4, cache_dir=tmp_path, **TINY)
    assert different.root != other.root
    assert [u.text for u in different.utterances()] != [u.text for u in a]


def test_splits_and_audio(corpus):
    spk = {s: set(corpus.speakers(s)) for s in SPLITS}
    assert [len(spk[s]) for s in SPLITS] == [2, 1, 1, 1]
    assert len(set().union(*spk.values())) == 5  # speaker-disjoint
    assert len({corpus.voice(s)["voice"] for s in corpus.speakers("train")}) == 2
    for u in corpus.utterances():
        assert u.speaker in spk[u.split]
        info = sf.info(str(u.path))
        assert info.samplerate == 16000 and info.channels == 1
        x = corpus.load(u)
        assert x.dtype == np.float32 and np.count_nonzero(x) == x.size
        np.testing.assert_allclose(np.abs(x).max(), 0.9, rtol=1e-6)
        assert abs(u.duration - x.size / 16000) < 1e-9 and 1.4 < u.duration < 5.5
        starts = [s for _, s in u.phonemes]
        assert len(starts) > 5 and starts == sorted(starts) and starts[-1] < x.size
        assert all(isinstance(p, str) and p for p, _ in u.phonemes)
        # word events: a subsequence of the text (espeak may merge clitics such as "the").
        text_words = iter(u.text.replace(",", "").rstrip(".?").split())
        assert len(u.words) > 3 and all(w.strip(",.?") in text_words for w, _ in u.words)
    with pytest.raises(ValueError, match="unknown split"):
        corpus.utterances("dev")


def test_cache_reuse_and_env(corpus, monkeypatch, tmp_path):
    manifest = corpus.root / "manifest.json"
    mtime = manifest.stat().st_mtime_ns
    again = build_default_corpus(3, cache_dir=corpus.root.parent, **TINY)
    assert again.root == corpus.root and manifest.stat().st_mtime_ns == mtime
    # An incomplete build (missing wav) is detected.
    assert Corpus.is_complete(corpus.root)
    monkeypatch.setenv("VDVAE_JAX_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    with pytest.raises(FileNotFoundError, match="manifest"):
        Corpus(tmp_path)
    with pytest.raises(ValueError, match="distinct voices"):
        build_default_corpus(0, cache_dir=tmp_path, n_train=100, progress=False)


def test_incomplete_is_rebuilt(tmp_path):
    c = build_default_corpus(5, cache_dir=tmp_path, **dict(TINY, n_train=1, utts_per_speaker=1))
    victim = c.utterances("val")[0].path
    data = victim.read_bytes()
    victim.unlink()
    assert not Corpus.is_complete(c.root)
    c2 = build_default_corpus(5, cache_dir=tmp_path, **dict(TINY, n_train=1, utts_per_speaker=1))
    assert victim.read_bytes() == data and Corpus.is_complete(c2.root)
