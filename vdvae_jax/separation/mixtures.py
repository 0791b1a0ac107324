"""Speech + flute mixtures at a chosen speech-to-music ratio (SMR), following the MixDVAE recipe.

Sources (index order as in the reference VEM: **n = 0 flute, n = 1 speech**):

* speech: the default corpus (:func:`vdvae_jax.data.corpus.build_default_corpus`), speaker-disjoint
  ``train``/``val``/``test`` splits. Each speaker's utterances are silence-trimmed (top_db 30) and
  concatenated into one stream so that long segments (T = 300 frames, 4.8 s) exist;
* flute: :func:`vdvae_jax.separation.flute.flute_set` with melody-disjoint splits.

One mixture of T frames (segment length :math:`L = (T-1)\\,\\mathrm{hop}` samples):

1. draw a speech segment and a flute segment of length L (random stream, random start; a segment is
   rejected when :func:`~vdvae_jax.data.audio.trim_silence` would shorten it, as the reference does, so
   neither source starts or ends in silence);
2. peak-normalise the speech segment to 1 and scale the flute so that
   :math:`\\mathrm{rms}(s_{speech}) / \\mathrm{rms}(s_{flute}) = 10^{\\mathrm{SMR}/20}`
   (the reference's only setting is SMR = −10 dB: flute 10 dB louder);
3. :math:`x = s_{flute} + s_{speech}`; the VEM loader divides mixture and sources by
   :math:`\\max|x|` before the STFT (``normalised=True``); metrics compare with the un-normalised sources
   (scale-invariant SI-SDR; RMSE after the optimal scaling).

STFT as the reference data (§2.3): 1024-point sine window, hop 256, centred, ``pad_mode="reflect"``
(:class:`vdvae_jax.data.stft.StftConfig` defaults), time-major (T, F = 513).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

from vdvae_jax.data.audio import trim_silence
from vdvae_jax.data.stft import StftConfig, stft
from vdvae_jax.separation.flute import FluteConfig, flute_set

__all__ = ["MixtureConfig", "MixtureSet", "SOURCES", "make_mixtures", "speech_streams", "flute_streams",
           "scale_to_smr", "smr_db", "mixture_stft", "source_training_spectrograms"]

SOURCES = ("flute", "speech")


@dataclasses.dataclass(frozen=True)
class MixtureConfig:
    """Mixture settings: frames per mixture, SMR in dB (speech over flute), STFT, rejection budget."""

    n_frames: int = 100
    smr_db: float = -10.0
    stft: StftConfig = StftConfig()
    top_db: float = 30.0
    max_attempts: int = 10_000
    flute: FluteConfig = FluteConfig()

    @property
    def length(self) -> int:
        return (self.n_frames - 1) * self.stft.hop


class MixtureSet(NamedTuple):
    """``mix`` (M, L), ``sources`` (M, 2, L) un-normalised (index 0 flute, 1 speech), ``scale`` (M,)
    = 1 / max|mix| (the VEM input is ``scale * mix``), ``smr_db`` (M,) measured."""

    mix: np.ndarray
    sources: np.ndarray
    scale: np.ndarray
    smr_db: np.ndarray


def smr_db(speech: np.ndarray, flute: np.ndarray) -> np.ndarray:
    """Measured speech-to-music ratio :math:`20\\log_{10}(\\mathrm{rms}(s)/\\mathrm{rms}(f))` (last axis)."""
    rms = lambda v: np.sqrt(np.mean(np.asarray(v, np.float64) ** 2, axis=-1))
    return 20.0 * np.log10(rms(speech) / rms(flute))


def scale_to_smr(speech: np.ndarray, flute: np.ndarray, target_db: float) -> np.ndarray:
    """The flute scaled so that :func:`smr_db` (speech, result) equals ``target_db``."""
    flute = np.asarray(flute, np.float64)
    rms_f = np.sqrt(np.mean(flute**2))
    if rms_f == 0.0:
        raise ValueError("cannot scale an all-zero flute segment")
    rms_s = np.sqrt(np.mean(np.asarray(speech, np.float64) ** 2))
    return flute * (rms_s / 10 ** (target_db / 20.0) / rms_f)


def speech_streams(split: str, *, seed: int = 0, top_db: float = 30.0,
                   max_per_speaker: int | None = None) -> list[np.ndarray]:
    """One float64 stream per speaker of ``split``: its trimmed utterances (the first
    ``max_per_speaker``) concatenated in order."""
    from vdvae_jax.data.corpus import build_default_corpus

    corpus = build_default_corpus(seed)
    streams = []
    for spk in corpus.speakers(split):
        utts = [u for u in corpus.utterances(split) if u.speaker == spk][:max_per_speaker]
        streams.append(np.concatenate([trim_silence(corpus.load(u), top_db)[0] for u in utts]).astype(np.float64))
    return streams


def flute_streams(split: str, config: FluteConfig = FluteConfig()) -> list[np.ndarray]:
    """The cached flute melodies of ``split`` as float64 arrays."""
    return [w.astype(np.float64) for w in flute_set(config, split)]


def _draw_segment(rng, streams, length, top_db, max_attempts):
    for _ in range(max_attempts):
        s = streams[int(rng.integers(len(streams)))]
        if s.shape[0] < length:
            continue
        start = int(rng.integers(0, s.shape[0] - length + 1))
        seg = s[start:start + length]
        if np.max(np.abs(seg)) == 0.0:
            continue
        if trim_silence(seg, top_db)[0].shape[0] == length:
            return seg
    raise RuntimeError(f"no {length}-sample segment without edge silence in {max_attempts} attempts")


def make_mixtures(n: int, split: str, config: MixtureConfig = MixtureConfig(), *, seed: int = 0,
                  speech: list[np.ndarray] | None = None,
                  flute: list[np.ndarray] | None = None) -> MixtureSet:
    """``n`` mixtures of ``split`` (module docstring), deterministic in ``seed``.

    ``speech``/``flute`` override the source streams (default: :func:`speech_streams`,
    :func:`flute_streams` of ``split``).
    """
    if n < 1:
        raise ValueError(f"n must be positive, got {n}")
    if config.n_frames < 2:
        raise ValueError(f"n_frames must be >= 2, got {config.n_frames}")
    speech = speech_streams(split, top_db=config.top_db) if speech is None else speech
    flute = flute_streams(split, config.flute) if flute is None else flute
    rng = np.random.default_rng([seed, 7])
    length = config.length
    mixes, sources = [], []
    for _ in range(n):
        s = _draw_segment(rng, speech, length, config.top_db, config.max_attempts)
        s = s / np.max(np.abs(s))
        f = scale_to_smr(s, _draw_segment(rng, flute, length, config.top_db, config.max_attempts),
                         config.smr_db)
        mixes.append(f + s)
        sources.append(np.stack([f, s]))
    mix = np.stack(mixes)
    src = np.stack(sources)
    return MixtureSet(mix, src, 1.0 / np.max(np.abs(mix), axis=-1), smr_db(src[:, 1], src[:, 0]))


def mixture_stft(ms: MixtureSet, config: MixtureConfig = MixtureConfig(), *, normalised: bool = True):
    """``(X, S)``: complex64 mixture STFT (M, T, F) and source STFTs (M, 2, T, F), of the
    ``max|mix|``-normalised signals when ``normalised`` (the VEM input)."""
    k = ms.scale if normalised else np.ones_like(ms.scale)
    X = np.asarray(stft(np.asarray(ms.mix * k[:, None], np.float32), config.stft))
    S = np.asarray(stft(np.asarray(ms.sources * k[:, None, None], np.float32), config.stft))
    return X, S


def source_training_spectrograms(source: str, split: str, n_frames: int, *,
                                 config: MixtureConfig = MixtureConfig(),
                                 max_items: int | None = None) -> np.ndarray:
    """Single-source training data for the DVAE/NMF priors, ``(N, n_frames, F)`` float32 power:
    the reference recipe (trim, non-overlapping peak-normalised segments, reflect-padded STFT) on the
    speaker streams / flute melodies of ``split``."""
    from vdvae_jax.data.datasets import build_spectrogram_dataset

    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    waves = (speech_streams(split, top_db=config.top_db) if source == "speech"
             else flute_streams(split, config.flute))
    data = build_spectrogram_dataset(waves, config.stft, seq_len=n_frames, top_db=config.top_db)
    return data if max_items is None else data[:max_items]
