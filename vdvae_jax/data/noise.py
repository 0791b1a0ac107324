"""Seeded noise generators (16 kHz, float32, unit RMS) and SNR mixing (host-side numpy).

Every generator takes an explicit ``rng``: a ``numpy.random.Generator`` or an integer seed.
Coloured noise is white Gaussian noise shaped in the frequency domain so that its power
spectral density is :math:`S(f) \\propto f^{-\\alpha}` (α = 0 white, 1 pink, 2 brown).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from vdvae_jax.data.audio import AudioError

__all__ = [
    "white",
    "pink",
    "brown",
    "coloured",
    "amplitude_modulated",
    "babble",
    "mix_at_snr",
    "make_noise",
    "NOISE_TYPES",
]

SR = 16000


def _rng(rng: np.random.Generator | int) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")


def _check_length(length: int) -> int:
    if int(length) <= 0:
        raise ValueError(f"noise length must be positive, got {length}")
    return int(length)


def _unit_rms(x: np.ndarray) -> np.ndarray:
    return (x / np.sqrt(np.mean(x**2))).astype(np.float32)


def coloured(length: int, alpha: float, rng: np.random.Generator | int) -> np.ndarray:
    """Gaussian noise with PSD :math:`\\propto f^{-\\alpha}` (DC removed), unit RMS.

    Args:
      length: number of samples.
      alpha: spectral exponent (0 white, 1 pink, 2 brown).
      rng: generator or seed.
    """
    length = _check_length(length)
    spec = np.fft.rfft(_rng(rng).standard_normal(length))
    f = np.fft.rfftfreq(length)
    gain = np.zeros_like(f)
    gain[1:] = f[1:] ** (-alpha / 2.0)  # amplitude ∝ f^{-α/2}
    x = np.fft.irfft(spec * gain, n=length)
    if length == 1 or not np.any(x):
        x = np.ones(length)
    return _unit_rms(x)


def white(length: int, rng: np.random.Generator | int) -> np.ndarray:
    """White Gaussian noise, unit RMS."""
    return _unit_rms(_rng(rng).standard_normal(_check_length(length)))


def pink(length: int, rng: np.random.Generator | int) -> np.ndarray:
    """Pink (1/f) noise, unit RMS."""
    return coloured(length, 1.0, rng)


def brown(length: int, rng: np.random.Generator | int) -> np.ndarray:
    """Brown (1/f²) noise, unit RMS."""
    return coloured(length, 2.0, rng)


def amplitude_modulated(
    length: int,
    rng: np.random.Generator | int,
    *,
    alpha: float = 1.0,
    rate_hz: float = 2.0,
    depth: float = 0.8,
    sr: int = SR,
) -> np.ndarray:
    """Coloured noise times a slow random envelope, unit RMS.

    :math:`n[k] = m[k]\\, c[k]` with :math:`c` of exponent ``alpha`` and
    :math:`m = 1 - \\text{depth} \\cdot u`, where :math:`u \\in [0, 1]` is a smooth (cosine
    interpolated) random curve with control points every ``1 / rate_hz`` seconds.
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if rate_hz <= 0:
        raise ValueError(f"rate_hz must be positive, got {rate_hz}")
    length = _check_length(length)
    g = _rng(rng)
    carrier = coloured(length, alpha, g)
    step = sr / rate_hz
    knots = g.uniform(0.0, 1.0, size=int(np.ceil(length / step)) + 2)
    pos = np.arange(length) / step
    i = np.floor(pos).astype(int)
    frac = 0.5 - 0.5 * np.cos(np.pi * (pos - i))  # smooth cosine interpolation
    u = knots[i] * (1 - frac) + knots[i + 1] * frac
    return _unit_rms(carrier * (1.0 - depth * u))


def babble(corpus, n_talkers: int, length: int, seed: int) -> np.ndarray:
    """Babble: sum of ``n_talkers`` utterances of the corpus' held-out ``babble`` speakers.

    Utterances are drawn without replacement (talkers cycle over the babble speakers), each is
    normalised to unit RMS, looped to ``length`` from a random offset, summed, and the sum is
    normalised to unit RMS.

    Args:
      corpus: a :class:`vdvae_jax.data.corpus.Corpus` with a non-empty ``babble`` split.
      n_talkers: number of simultaneous talkers (>= 1).
      length: samples.
      seed: integer seed.
    """
    length = _check_length(length)
    if n_talkers < 1:
        raise ValueError(f"n_talkers must be >= 1, got {n_talkers}")
    utts = corpus.utterances("babble")
    if not utts:
        raise ValueError("the corpus has no 'babble' speakers")
    g = np.random.default_rng(seed)
    by_spk: dict[str, list] = {}
    for u in utts:
        by_spk.setdefault(u.speaker, []).append(u)
    speakers = sorted(by_spk)
    spk_order = [speakers[i] for i in g.permutation(len(speakers))]
    out = np.zeros(length)
    used: set = set()
    for k in range(n_talkers):
        pool = [u for u in by_spk[spk_order[k % len(speakers)]] if u.path not in used]
        pool = pool or by_spk[spk_order[k % len(speakers)]]
        utt = pool[int(g.integers(len(pool)))]
        used.add(utt.path)
        x = corpus.load(utt).astype(np.float64)
        x = x / np.sqrt(np.mean(x**2))
        start = int(g.integers(x.size))
        out += np.resize(np.roll(x, -start), length)  # loop the utterance to `length`
    return _unit_rms(out)


def mix_at_snr(
    speech: np.ndarray, noise: np.ndarray, snr_db: float
) -> tuple[np.ndarray, np.ndarray]:
    """Scales ``noise`` so that :math:`10\\log_{10}(\\|s\\|^2 / \\|g n\\|^2) = \\text{snr\\_db}`.

    The gain is :math:`g = \\sqrt{\\|s\\|^2 / (\\|n\\|^2 10^{\\text{snr}/10})}`, computed in
    float64. ``noise`` longer than ``speech`` is cropped to its start.

    Returns:
      ``(speech + g n, g n)`` as float32, both of ``len(speech)``.

    Raises:
      AudioError: shapes not 1-D, noise shorter than speech, or silent speech/noise.
    """
    s = np.asarray(speech, np.float64)
    n = np.asarray(noise, np.float64)
    if s.ndim != 1 or n.ndim != 1:
        raise AudioError(f"mix_at_snr expects 1-D signals, got {s.shape} and {n.shape}")
    if n.size < s.size:
        raise AudioError(f"noise ({n.size} samples) is shorter than speech ({s.size})")
    n = n[: s.size]
    es, en = np.sum(s**2), np.sum(n**2)
    if es == 0 or en == 0:
        raise AudioError("mix_at_snr: speech or noise is all zeros")
    scaled = n * np.sqrt(es / (en * 10.0 ** (snr_db / 10.0)))
    return (s + scaled).astype(np.float32), scaled.astype(np.float32)


NOISE_TYPES: dict[str, Callable[..., np.ndarray]] = {
    "white": white,
    "pink": pink,
    "brown": brown,
    "amplitude_modulated": amplitude_modulated,
    "babble": babble,
}


def make_noise(kind: str, length: int, seed: int, *, corpus=None, n_talkers: int = 8):
    """Dispatches to a :data:`NOISE_TYPES` generator by name (``babble`` needs ``corpus``)."""
    if kind not in NOISE_TYPES:
        raise ValueError(f"unknown noise type {kind!r}; expected one of {sorted(NOISE_TYPES)}")
    if kind == "babble":
        if corpus is None:
            raise ValueError("babble noise needs a corpus (see build_default_corpus)")
        return babble(corpus, n_talkers, length, seed)
    return NOISE_TYPES[kind](length, np.random.default_rng(seed))
