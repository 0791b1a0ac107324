"""A flute-like (dizi-like) source: procedural pentatonic melodies through an additive model.

No SoundFont is available offline at run time on this machine (no Debian ``fluid-soundfont-gm``, no
``pretty_midi`` wheel for its TimGM6mb.sf2), so the flute is synthesised in numpy, deterministically
from ``(seed, melody index)``:

* **Melody**: a major-pentatonic scale (degrees 0, 2, 4, 7, 9 semitones) on a random tonic, notes
  restricted to the dizi range A4–B6 (MIDI 69–95, 440–1976 Hz); a random walk over scale degrees with
  mostly steps and a few leaps; durations from {1/2, 1, 3/2, 2} beats at 70–120 bpm; short breath
  rests between phrases.
* **Pitch**: :math:`f_0(t) = f_{note}(t)\\, 2^{c(t)/1200}` with a 20 ms glide between notes (legato), a
  delayed-onset vibrato :math:`c(t) = d\\,\\min(1, \\tau/0.25)\\sin(2\\pi r \\tau)` (rate r 4.5–6.5 Hz,
  depth d 10–35 cents, τ time since onset), and a slow random pitch wander (±5 cents).
* **Tone**: :math:`x(t) = e(t)\\sum_k a_k (1 + \\epsilon_k(t)) \\sin(k \\phi(t) + \\varphi_k)`,
  :math:`\\phi = 2\\pi\\int f_0`, harmonics up to 0.95·Nyquist with amplitudes
  :math:`a_k = k^{-\\rho}` (ρ per melody in 1.2–2.0, odd harmonics +3 dB, a bright "membrane" boost of
  the 4–8 kHz region for the dizi buzz) and slow multiplicative jitter ε_k (lowpassed noise, ~5 %).
* **Envelope** e(t): per-note attack 25–70 ms, slight decay, tremolo coupled to the vibrato, release
  40–90 ms; note velocities 0.6–1.
* **Breath**: broadband noise, band-passed 1–7 kHz, at −28…−20 dB relative to the tone, following the
  envelope, plus an attack "chiff" (a 20–40 ms noise burst, +10 dB over the breath floor at onsets).

Waveforms are float32 at 16 kHz, peak 0.9. :func:`flute_set` caches a split of melodies under
``<cache>/flute/<hash>/`` (``cache`` = :func:`vdvae_jax.data.corpus.default_cache_dir`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy import signal

__all__ = ["FluteConfig", "Melody", "melody", "render", "flute_melody", "flute_set", "FLUTE_SPLITS",
           "midi_to_hz", "DIZI_RANGE"]

SR = 16000
DIZI_RANGE = (69, 95)  # MIDI A4..B6
FLUTE_SPLITS = ("train", "val", "test")
_PENTATONIC = (0, 2, 4, 7, 9)
_VERSION = 1  # bump when the generator changes (invalidates caches)
_SPLIT_OFFSET = {"train": 0, "val": 1_000_000, "test": 2_000_000}


def midi_to_hz(m):
    return 440.0 * 2.0 ** ((np.asarray(m, np.float64) - 69.0) / 12.0)


@dataclasses.dataclass(frozen=True)
class FluteConfig:
    """Melody-set settings.

    Attributes:
      duration: seconds per melody.
      counts: melodies per split, ``(train, val, test)``.
      sr: sample rate.
      seed: base seed; melody i of a split uses ``default_rng([seed, split_offset + i])``.
    """

    duration: float = 8.0
    counts: tuple[int, int, int] = (60, 15, 15)
    sr: int = SR
    seed: int = 0

    def __post_init__(self):
        if self.duration <= 0.5:
            raise ValueError(f"duration must exceed 0.5 s, got {self.duration}")
        if len(self.counts) != 3 or min(self.counts) < 1:
            raise ValueError(f"counts must be three positive ints (train, val, test), got {self.counts}")


class Melody(NamedTuple):
    """A note list: MIDI pitches (float), onsets and durations in seconds (rests are gaps)."""

    pitch: np.ndarray
    onset: np.ndarray
    duration: np.ndarray


def melody(rng: np.random.Generator, total: float) -> Melody:
    """A random pentatonic melody filling ``total`` seconds, all notes inside :data:`DIZI_RANGE`."""
    lo, hi = DIZI_RANGE
    tonic = int(rng.integers(0, 12))
    scale = np.array([m for m in range(lo, hi + 1) if (m - tonic) % 12 in _PENTATONIC])
    beat = 60.0 / rng.uniform(70, 120)
    idx = int(rng.integers(len(scale) // 4, 3 * len(scale) // 4))
    t = float(rng.uniform(0.0, 0.15))
    pitch, onset, dur = [], [], []
    phrase_left = int(rng.integers(4, 9))
    while t < total:
        step = rng.choice([-2, -1, -1, 0, 1, 1, 2, 3, -3])
        idx = int(np.clip(idx + step, 0, len(scale) - 1))
        d = beat * float(rng.choice([0.5, 0.5, 1.0, 1.0, 1.5, 2.0]))
        pitch.append(float(scale[idx]))
        onset.append(t)
        dur.append(d)
        t += d
        phrase_left -= 1
        if phrase_left == 0:  # breath between phrases
            t += float(rng.uniform(0.08, 0.35))
            phrase_left = int(rng.integers(4, 9))
    return Melody(np.array(pitch), np.array(onset), np.array(dur))


def _lowpassed_noise(rng, n, cutoff_hz, sr):
    b, a = signal.butter(2, cutoff_hz / (sr / 2))
    x = signal.lfilter(b, a, rng.standard_normal(n))
    return x / (np.std(x) + 1e-12)


def render(mel: Melody, total: float, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """Additive synthesis of ``mel`` (module docstring), float32, peak 0.9, ``round(total*sr)`` samples."""
    n = int(round(total * sr))
    t = np.arange(n) / sr
    # Per-sample note index (-1 in rests), time since onset, note frequency with glides.
    note_f = np.zeros(n)
    since = np.zeros(n)
    env = np.zeros(n)
    chiff = np.zeros(n)
    vib_rate = rng.uniform(4.5, 6.5)
    vib_depth = rng.uniform(10.0, 35.0)
    prev_f = None
    for p, on, d in zip(mel.pitch, mel.onset, mel.duration):
        a, b = int(on * sr), min(n, int((on + d) * sr))
        if a >= n:
            break
        f = float(midi_to_hz(p))
        seg_t = t[a:b] - on
        glide = 0.02
        if prev_f is not None:
            w = np.clip(seg_t / glide, 0.0, 1.0)
            note_f[a:b] = np.exp(np.log(prev_f) * (1 - w) + np.log(f) * w)
        else:
            note_f[a:b] = f
        since[a:b] = seg_t
        att = rng.uniform(0.025, 0.07)
        rel = min(rng.uniform(0.04, 0.09), 0.4 * d)
        vel = rng.uniform(0.6, 1.0)
        e = np.minimum(1.0, seg_t / att) * (1.0 - 0.1 * np.minimum(1.0, seg_t / 0.3))
        e *= np.clip((d - seg_t) / rel, 0.0, 1.0)
        env[a:b] = vel * e
        cl = rng.uniform(0.02, 0.04)
        chiff[a:b] = vel * np.exp(-seg_t / cl) * (seg_t < 4 * cl)
        prev_f = f
    # Fill rests with the previous note's frequency (phase stays continuous; the envelope is 0 there).
    if not np.any(note_f):
        raise ValueError("melody has no note inside the rendered duration")
    first = int(np.argmax(note_f > 0))
    note_f[:first] = note_f[first]
    idx = np.where(note_f > 0, np.arange(n), 0)
    note_f = note_f[np.maximum.accumulate(idx)]
    ramp = np.minimum(1.0, since / 0.25)
    cents = vib_depth * ramp * np.sin(2 * np.pi * vib_rate * since) + 5.0 * _lowpassed_noise(rng, n, 2.0, sr)
    f0 = note_f * 2.0 ** (cents / 1200.0)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    rho = rng.uniform(1.2, 2.0)
    tremolo = 1.0 + 0.06 * ramp * np.sin(2 * np.pi * vib_rate * since + 0.5)
    tone = np.zeros(n)
    nyq = sr / 2
    for k in range(1, int(0.95 * nyq / DIZI_RANGE_HZ_LO) + 1):
        fk = k * f0
        a_k = k ** -rho * (1.41 if k % 2 else 1.0) * (1.0 + 1.5 * np.exp(-((fk - 6000.0) / 1500.0) ** 2))
        a_k = np.where(fk < 0.95 * nyq, a_k, 0.0)
        if not np.any(a_k):
            break
        jitter = 1.0 + 0.05 * _lowpassed_noise(rng, n, 8.0, sr)
        tone += a_k * jitter * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    tone *= env * tremolo
    b, a = signal.butter(2, [1000.0 / nyq, 7000.0 / nyq], btype="band")
    breath = signal.lfilter(b, a, rng.standard_normal(n))
    breath /= np.std(breath) + 1e-12
    floor_db = rng.uniform(-28.0, -20.0)
    tone_rms = np.sqrt(np.mean(tone[env > 0.3] ** 2)) if np.any(env > 0.3) else 1.0
    breath *= tone_rms * 10 ** (floor_db / 20) * (env + 3.0 * chiff)
    x = tone + breath
    # -70 dB dither: no exact digital silence in rests (zero power bins break IS divergences).
    x += 10 ** (-70 / 20) * np.max(np.abs(x)) * rng.standard_normal(n)
    return (0.9 * x / np.max(np.abs(x))).astype(np.float32)


DIZI_RANGE_HZ_LO = float(midi_to_hz(DIZI_RANGE[0]))


def flute_melody(seed: int, index: int = 0, duration: float = 8.0, sr: int = SR) -> tuple[np.ndarray, Melody]:
    """One melody (waveform, notes), deterministic in ``(seed, index)``."""
    rng = np.random.default_rng([seed, index])
    mel = melody(rng, duration)
    return render(mel, duration, rng, sr), mel


def _cache_root(config: FluteConfig, cache_dir) -> Path:
    from vdvae_jax.data.corpus import default_cache_dir

    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tag = json.dumps({**dataclasses.asdict(config), "version": _VERSION}, sort_keys=True)
    return base / "flute" / hashlib.sha1(tag.encode()).hexdigest()[:12]


def flute_set(config: FluteConfig = FluteConfig(), split: str = "train", *,
              cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """``(n_melodies, duration*sr)`` float32 waveforms of ``split``, built once and cached as npy.

    Splits draw disjoint melody indices (train 0.., val 1e6.., test 2e6..).
    """
    if split not in FLUTE_SPLITS:
        raise ValueError(f"split must be one of {FLUTE_SPLITS}, got {split!r}")
    root = _cache_root(config, cache_dir)
    path = root / f"{split}.npy"
    if path.is_file():
        return np.load(path)
    count = config.counts[FLUTE_SPLITS.index(split)]
    waves = np.stack([flute_melody(config.seed, _SPLIT_OFFSET[split] + i, config.duration, config.sr)[0]
                      for i in range(count)])
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{split}.{os.getpid()}.npy"
    np.save(tmp, waves)
    os.replace(tmp, path)
    (root / "config.json").write_text(json.dumps(dataclasses.asdict(config)))
    return waves
