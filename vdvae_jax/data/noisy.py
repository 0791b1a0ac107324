"""Noisy versions of the default speech corpus, for unsupervised speech enhancement.

Every utterance of a split is mixed with a seeded noise of :mod:`vdvae_jax.data.noise` at a given SNR
(:func:`~vdvae_jax.data.noise.mix_at_snr`: :math:`10 \\log_{10} \\|s\\|^2 / \\|n\\|^2` = SNR exactly):

* ``test``: every test utterance at **every** SNR of ``snrs`` (default −5, 0, 5, 10 dB), with the
  held-out ``test_noises`` only (default ``amplitude_modulated``: coloured noise, spectral exponent
  drawn in [0.5, 1.5], times a random envelope of 1–4 Hz and depth 0.5–0.9);
* ``train`` / ``val``: every utterance once, SNRs cycling over ``snrs``, noise types cycling over
  ``train_noises`` (default white, pink, brown, babble of 3–8 talkers).

With ``noise_split="type"`` (default) the test split is speaker-disjoint (the corpus' test speakers)
**and** noise-type-disjoint from train/val. ``noise_split="recording"`` follows WSJ0-QUT instead (test
noises are other recordings of types heard in training): the test noise types are appended to
``train_noises``, and test noise instances stay disjoint (their own seeds). Everything is
deterministic from ``seed`` (noise seeds are ``SeedSequence([seed, split, utterance, snr])`` draws). Mixtures are written as float32 WAVs under
``$VDVAE_JAX_CACHE/noisy_<digest>/`` (the digest hashes the speech corpus folder and the parameters),
with ``manifest.json`` written last; the clean references stay in the speech corpus.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from vdvae_jax.data.audio import load_wav, save_wav, segment_waveform
from vdvae_jax.data.corpus import Corpus, build_default_corpus, default_cache_dir, manifest_complete
from vdvae_jax.data.noise import NOISE_TYPES, amplitude_modulated, babble, mix_at_snr, make_noise
from vdvae_jax.data.stft import StftConfig, power_spectrogram_reference

__all__ = ["DEFAULT_SNRS", "TRAIN_NOISES", "TEST_NOISES", "Mixture", "NoisyCorpus", "build_noisy_corpus",
           "noisy_segments", "measured_snr"]

_VERSION = 1
DEFAULT_SNRS = (-5.0, 0.0, 5.0, 10.0)
TRAIN_NOISES = ("white", "pink", "brown", "babble")
TEST_NOISES = ("amplitude_modulated",)
_SPLIT_ID = {"train": 0, "val": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class Mixture:
    """One noisy mixture: ``noisy = clean + noise`` with ``noise`` scaled to ``snr`` dB."""

    path: Path
    clean_path: Path
    speaker: str
    split: str
    noise: str
    snr: float
    noise_seed: int
    noise_params: dict


def measured_snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    """:math:`10 \\log_{10} \\|s\\|^2 / \\|x - s\\|^2` in float64."""
    s = np.asarray(clean, np.float64)
    n = np.asarray(noisy, np.float64) - s
    return float(10 * np.log10(np.sum(s**2) / np.sum(n**2)))


def _noise(kind: str, length: int, seed: int, corpus: Corpus) -> tuple[np.ndarray, dict]:
    """A noise of ``kind`` with its per-mixture random parameters (drawn from ``seed``)."""
    g = np.random.default_rng([seed, 1])
    if kind == "amplitude_modulated":
        p = dict(alpha=float(g.uniform(0.5, 1.5)), rate_hz=float(g.uniform(1.0, 4.0)),
                 depth=float(g.uniform(0.5, 0.9)))
        return amplitude_modulated(length, np.random.default_rng(seed), **p), p
    if kind == "babble":
        p = dict(n_talkers=int(g.integers(3, 9)))
        return babble(corpus, p["n_talkers"], length, seed), p
    return make_noise(kind, length, seed), {}


def _plan(corpus: Corpus, seed: int, snrs, train_noises, test_noises) -> list[dict]:
    jobs = []
    for split in ("train", "val", "test"):
        kinds = test_noises if split == "test" else train_noises
        for i, utt in enumerate(corpus.utterances(split)):
            snr_idx = range(len(snrs)) if split == "test" else [i % len(snrs)]
            for j in snr_idx:
                k = i * len(snrs) + j if split == "test" else i
                noise_seed = int(np.random.SeedSequence([seed, _SPLIT_ID[split], i, j]).generate_state(1)[0])
                stem = Path(utt.path).stem
                jobs.append(dict(path=f"{split}/{utt.speaker}/{stem}_snr{snrs[j]:+g}.wav",
                                 clean=str(Path(utt.path).relative_to(corpus.root)), speaker=utt.speaker,
                                 split=split, noise=kinds[k % len(kinds)], snr=float(snrs[j]),
                                 noise_seed=noise_seed))
    return jobs


def build_noisy_corpus(seed: int = 0, *, corpus: Corpus | None = None, snrs=DEFAULT_SNRS,
                       train_noises=TRAIN_NOISES, test_noises=TEST_NOISES, noise_split: str = "type",
                       cache_dir: str | os.PathLike | None = None, progress: bool = True) -> "NoisyCorpus":
    """Builds (or reopens from the cache) the noisy corpus (see the module docstring).

    Args:
      seed: noise seed (the speech corpus is ``build_default_corpus(seed)`` unless ``corpus`` is given).
      corpus: the clean speech corpus.
      snrs: SNRs in dB. train_noises / test_noises: noise-type names of
        :data:`~vdvae_jax.data.noise.NOISE_TYPES`, disjoint unless ``noise_split="recording"``.
      noise_split: ``"type"`` or ``"recording"`` (see the module docstring).
      cache_dir: parent folder (default :func:`~vdvae_jax.data.corpus.default_cache_dir`).
    """
    snrs = tuple(float(s) for s in snrs)
    train_noises, test_noises = tuple(train_noises), tuple(test_noises)
    if not snrs or not train_noises or not test_noises:
        raise ValueError("snrs, train_noises and test_noises must be non-empty")
    for kind in train_noises + test_noises:
        if kind not in NOISE_TYPES:
            raise ValueError(f"unknown noise type {kind!r}; expected one of {sorted(NOISE_TYPES)}")
    if noise_split not in ("type", "recording"):
        raise ValueError(f"noise_split must be 'type' or 'recording', got {noise_split!r}")
    if noise_split == "recording":
        train_noises = train_noises + tuple(k for k in test_noises if k not in train_noises)
    elif set(train_noises) & set(test_noises):
        raise ValueError(f"train and test noise types must be disjoint: {set(train_noises) & set(test_noises)}")
    corpus = build_default_corpus(seed, progress=progress) if corpus is None else corpus
    params = dict(version=_VERSION, seed=int(seed), corpus=corpus.root.name, snrs=snrs,
                  train_noises=train_noises, test_noises=test_noises)
    if noise_split != "type":
        params["noise_split"] = noise_split
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"noisy_{digest}"
    if NoisyCorpus.is_complete(root):
        return NoisyCorpus(root, corpus)
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    jobs = _plan(corpus, seed, snrs, train_noises, test_noises)
    for job in tqdm(jobs, desc="noisy corpus", unit="mix", disable=not progress):
        clean = load_wav(corpus.root / job["clean"], corpus.sr)
        noise, job["noise_params"] = _noise(job["noise"], clean.size, job["noise_seed"], corpus)
        noisy, _ = mix_at_snr(clean, noise, job["snr"])
        save_wav(root / job["path"], noisy, corpus.sr)
    manifest = dict(params=params, speech_corpus=str(corpus.root), sr=corpus.sr,
                    build_seconds=round(time.perf_counter() - t0, 3), mixtures=jobs)
    tmp = root / f"manifest.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=0))
    os.replace(tmp, root / "manifest.json")
    if progress:
        print(f"built noisy corpus: {len(jobs)} mixtures in {time.perf_counter() - t0:.1f} s -> {root}")
    return NoisyCorpus(root, corpus)


class NoisyCorpus:
    """Read access to a built noisy corpus (``manifest.json`` + WAVs; clean files in ``corpus``)."""

    def __init__(self, root: str | os.PathLike, corpus: Corpus):
        self.root = Path(root)
        self.corpus = corpus
        path = self.root / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: noisy corpus manifest missing (build incomplete?)")
        self.manifest = json.loads(path.read_text())
        self.sr = int(self.manifest["sr"])
        self.snrs = tuple(self.manifest["params"]["snrs"])
        self._mix = [Mixture(path=self.root / m["path"], clean_path=corpus.root / m["clean"],
                             speaker=m["speaker"], split=m["split"], noise=m["noise"], snr=m["snr"],
                             noise_seed=m["noise_seed"], noise_params=m["noise_params"])
                     for m in self.manifest["mixtures"]]

    @staticmethod
    def is_complete(root: str | os.PathLike) -> bool:
        """True if ``root`` has a manifest and every mixture WAV it lists."""
        return manifest_complete(root, "mixtures")

    def mixtures(self, split: str | None = None, *, snr: float | None = None,
                 noise: str | None = None) -> list[Mixture]:
        """Mixtures filtered by split, SNR and noise type, in build order."""
        if split is not None and split not in _SPLIT_ID:
            raise ValueError(f"unknown split {split!r}; expected one of {tuple(_SPLIT_ID)}")
        return [m for m in self._mix if (split is None or m.split == split)
                and (snr is None or m.snr == float(snr)) and (noise is None or m.noise == noise)]

    def load(self, mixture: Mixture) -> tuple[np.ndarray, np.ndarray]:
        """``(noisy, clean)`` float32 waveforms at 16 kHz."""
        return load_wav(mixture.path, self.sr), load_wav(mixture.clean_path, self.sr)

    def __repr__(self) -> str:
        return f"NoisyCorpus({str(self.root)!r}, {len(self._mix)} mixtures)"


def noisy_segments(noisy: NoisyCorpus, split: str = "train", seq_len: int = 100, *,
                   max_files: int | None = None, stft_cfg: StftConfig = StftConfig()) -> np.ndarray:
    """(N, seq_len, F) power segments of the noisy mixtures of ``split`` (U-ND training data).

    As the DDGM's noisy training data: segments of ``seq_len`` frames, each peak-normalised, no
    clean signal involved (the reference also trims silence on the noisy signal; a trim at 30 dB
    below the peak removes nothing from these mixtures, so it is skipped).
    """
    out = []
    for m in noisy.mixtures(split)[:max_files]:
        x, _ = noisy.load(m)
        if (1 + x.size // stft_cfg.hop) // seq_len == 0:
            continue
        out.append(power_spectrogram_reference(segment_waveform(x.astype(np.float64), seq_len, stft_cfg.hop),
                                               stft_cfg))
    if not out:
        raise ValueError(f"no {split} mixture is long enough for a {seq_len}-frame segment")
    return np.concatenate(out).astype(np.float32)
