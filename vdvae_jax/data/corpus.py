"""Embedded default speech corpus: multi-speaker synthetic English built offline with espeak-ng.

The corpus is generated deterministically from a seed (text, voices, dither) and cached in
``$VDVAE_JAX_CACHE`` (default ``~/.cache/vdvae_jax``) under a folder whose name hashes the
build parameters; it is never part of the repository. Speakers are espeak-ng accent × variant
voices with bounded random pitch, pitch range and rate; splits ``train``/``val``/``test`` are
speaker-disjoint and ``babble`` speakers are reserved for babble noise. Each utterance keeps its
text, IPA phoneme starts and word starts (samples at 16 kHz). Audio: 16 kHz float32 WAV, peak
0.9, plus seeded white dither at -70 dB so that no sample is exactly zero (espeak emits digital
silence, which would give zero-power STFT bins and an infinite Itakura–Saito loss).

The sentences come from templates and word lists written for this module.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import multiprocessing
import os
import struct
import time
from ctypes import CFUNCTYPE, POINTER, c_char, c_char_p, c_int, c_short, c_uint, c_void_p
from pathlib import Path

import numpy as np

from vdvae_jax.data.audio import load_wav

__all__ = ["SPLITS", "Utterance", "Corpus", "build_default_corpus", "default_cache_dir", "manifest_complete"]

SPLITS = ("train", "val", "test", "babble")
SR = 16000
_VERSION = 4  # bump when the generator changes (invalidates caches)
_ACCENTS = ("en-US", "en-GB-x-rp", "en-GB-scotland", "en-029", "en-US-nyc",
            "en-GB-x-gbclan", "en-GB-x-gbcwmd", "en")
_MALE = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
_FEMALE = ("f1", "f2", "f3", "f4", "f5")
# Per-sex bounds (espeak units 0-100, rate in wpm); wider than default ranges give less
# monotone F0, lower female pitch avoids the ~400 Hz voices that pitch 35-75 produces.
_BOUNDS = {"m": dict(pitch=(30, 62), range_=(55, 90)), "f": dict(pitch=(25, 50), range_=(55, 85))}
_RATE = (140, 185)
_MIN_DUR, _MAX_DUR = 2.0, 5.0
_DITHER_DB = -70.0
_PEAK = 0.9

# ---------------------------------------------------------------------------- sentence generator
_ADJ = ("old young quiet busy tired clever careful happy patient curious honest polite brave "
        "friendly nervous cheerful").split()
_PERSON = ("farmer teacher doctor sailor painter baker driver student neighbour pilot gardener "
           "writer singer tailor nurse fisherman").split()
_THING = ("box window letter bicycle basket ladder lamp kettle blanket map wallet jacket bucket "
          "camera piano carpet mirror notebook umbrella bottle").split()
_THING_ADJ = "red heavy small broken wooden empty new dusty green shiny".split()
_VERB = ("carried painted found opened cleaned moved checked borrowed repaired described sold "
         "dropped washed hid wrapped measured").split()
_PLACE = ("near the station", "in the kitchen", "behind the school", "on the hill",
          "by the river", "at the market", "under the bridge", "in the garden",
          "across the street", "next to the library", "inside the barn", "on the top shelf")
_TIME = ("this morning", "after lunch", "last winter", "on Sunday", "before dinner",
         "at midnight", "every evening", "two days ago")
_NUM = "two three four five six seven eight nine ten twelve twenty forty".split()
_TEMPLATES = (
    "{S} {V} {O} {P}.",
    "{S} {V} {O} {T}.",
    "{T}, {s} {V} {O} {P}.",
    "Why did {s} leave {o} {P}?",
    "Please bring {o} {P} {T}.",
    "I think {s} {V} {O} {P}.",
    "{S} said that {s} {V} {O}.",
    "There were {N} {Os} {P} {T}.",
    "{S} {V} {O} and {s} {V} {O}.",
    "Did you know that {s} {V} {O} {T}?",
)


def _sentence(rng: np.random.Generator) -> str:
    pick = lambda seq: seq[int(rng.integers(len(seq)))]
    person = lambda: f"the {pick(_ADJ)} {pick(_PERSON)}"
    thing = lambda: f"{pick(('the', 'a', 'my', 'her', 'his'))} {pick(_THING_ADJ)} {pick(_THING)}"
    fill = dict(S=lambda: person().capitalize(), s=person, V=lambda: pick(_VERB), O=thing,
                o=lambda: f"the {pick(_THING)}", P=lambda: pick(_PLACE), T=lambda: pick(_TIME),
                N=lambda: pick(_NUM), Os=lambda: f"{pick(_THING_ADJ)} {pick(_THING)}s")
    out, tmpl = [], pick(_TEMPLATES)
    for part in tmpl.replace("{", "}").split("}"):
        out.append(fill[part]() if part in fill else part)
    s = "".join(out)
    return s[0].upper() + s[1:]


# ------------------------------------------------------------------ espeak-ng through ctypes
ESPEAK_SR = 22050
_EV_END_OF_LIST, _EV_WORD, _EV_PHONEME = 0, 1, 7
_P_RATE, _P_PITCH, _P_RANGE = 1, 3, 4



def manifest_complete(root: str | os.PathLike, entries: str) -> bool:
    """True if ``root/manifest.json`` exists, parses, and every file of its list ``entries`` exists
    (``entry["path"]`` relative to ``root``): a build that was killed half-way is not complete."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        return False
    try:
        items = json.loads(path.read_text())[entries]
    except (ValueError, KeyError):
        return False
    return all((Path(root) / item["path"]).is_file() for item in items)

class _Id(ctypes.Union):
    _fields_ = [("number", c_int), ("name", c_char_p), ("string", c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", c_int), ("unique_identifier", c_uint), ("text_position", c_int),
                ("length", c_int), ("audio_position", c_int), ("sample", c_int),
                ("user_data", c_void_p), ("id", _Id)]


_CALLBACK = CFUNCTYPE(c_int, POINTER(c_short), c_int, POINTER(_Event))
_STATE: dict = {}


def _fresh_lib():
    """(Re)loads and initialises the library.

    espeak-ng keeps static synthesis state (e.g. waveform phase) across calls, even across
    ``espeak_Terminate``; unloading the library before each utterance makes every utterance
    depend only on its own arguments (a reload costs a few ms).
    """
    if "lib" in _STATE:
        import _ctypes

        _STATE["lib"].espeak_Terminate()
        _ctypes.dlclose(_STATE["lib"]._handle)
        _STATE.clear()
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Synth.argtypes = [c_char_p, ctypes.c_size_t, c_uint, c_int, c_uint, c_uint,
                                 POINTER(c_uint), c_void_p]
    data_dir = os.path.dirname(espeakng_loader.get_data_path()).encode()
    # AUDIO_OUTPUT_SYNCHRONOUS = 2; options: PHONEME_EVENTS | PHONEME_IPA.
    sr = lib.espeak_Initialize(2, 0, data_dir, 1 | 2)
    if sr != ESPEAK_SR:
        raise RuntimeError(f"espeak_Initialize failed or unexpected rate ({sr})")
    chunks: list[np.ndarray] = []
    events: list[tuple] = []

    def callback(wav, n, ev):
        if n > 0:
            chunks.append(np.ctypeslib.as_array(wav, (n,)).copy())
        i = 0
        while ev[i].type != _EV_END_OF_LIST:
            e = ev[i]
            if e.type == _EV_PHONEME:
                events.append(("ph", e.id.string.decode("utf-8", "replace"), e.sample))
            elif e.type == _EV_WORD:
                events.append(("w", e.text_position, e.length, e.sample))
            i += 1
        return 0

    cb = _CALLBACK(callback)
    lib.espeak_SetSynthCallback(cb)
    _STATE.update(lib=lib, cb=cb, chunks=chunks, events=events, libc=ctypes.CDLL(None))
    return lib


def synthesize(text: str, voice: str, pitch: int, range_: int, rate: int, seed: int = 0):
    """Synthesises ``text`` with an espeak-ng voice.

    Args:
      text: ASCII sentence.
      voice: voice name, e.g. ``"en-US+f3"`` (language file name + variant).
      pitch: base pitch 0–100 (espeak default 50).
      range_: pitch range 0–100 (default 50).
      rate: speaking rate in words per minute.
      seed: seed of espeak-ng's internal random generator (voicing noise, flutter); set before
        every call so that the output does not depend on earlier calls.

    Returns:
      ``(audio int16 at 22.05 kHz, phonemes [(ipa, sample)], words [(word, sample)])``.
    """
    lib = _fresh_lib()
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise ValueError(f"espeak-ng voice {voice!r} not found")
    lib.espeak_SetParameter(_P_PITCH, int(pitch), 0)
    lib.espeak_SetParameter(_P_RANGE, int(range_), 0)
    lib.espeak_SetParameter(_P_RATE, int(rate), 0)
    lib.espeak_ng_SetRandSeed(ctypes.c_long(int(seed) & 0x7FFFFFFF))
    _STATE["libc"].srand(ctypes.c_uint(int(seed) & 0xFFFFFFFF))  # espeak also calls libc rand()
    chunks, events = _STATE["chunks"], _STATE["events"]
    chunks.clear()
    events.clear()
    raw = text.encode("utf-8")
    # position_type POS_CHARACTER = 1, flags espeakCHARS_AUTO = 0.
    err = lib.espeak_Synth(raw, len(raw) + 1, 0, 1, 0, 0, None, None)
    lib.espeak_Synchronize()
    if err != 0:
        raise RuntimeError(f"espeak_Synth failed with code {err} for {text!r}")
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
    phonemes = [(e[1], e[2]) for e in events if e[0] == "ph" and e[1].strip()]
    words = [(text[e[1] - 1 : e[1] - 1 + e[2]], e[3]) for e in events if e[0] == "w"]
    return audio, phonemes, words


# ------------------------------------------------------------------------------ build and cache
def default_cache_dir() -> Path:
    """``$VDVAE_JAX_CACHE`` if set, else ``~/.cache/vdvae_jax``."""
    return Path(os.environ.get("VDVAE_JAX_CACHE", Path.home() / ".cache" / "vdvae_jax"))


def _voices(seed: int, counts: dict[str, int]) -> list[dict]:
    """Distinct accent × variant voices with per-voice random pitch/range/rate, per split."""
    rng = np.random.default_rng([seed, 0])
    combos = [(a, v) for a in _ACCENTS for v in _MALE + _FEMALE]
    need = sum(counts.values())
    if need > len(combos):
        raise ValueError(f"at most {len(combos)} distinct voices available, asked for {need}")
    order = rng.permutation(len(combos))[:need]
    voices, k = [], 0
    for split in SPLITS:
        for _ in range(counts[split]):
            accent, variant = combos[order[k]]
            b = _BOUNDS[variant[0]]
            voices.append(dict(
                id=f"s{k:02d}", split=split, voice=f"{accent}+{variant}",
                pitch=int(rng.integers(*b["pitch"], endpoint=True)),
                range_=int(rng.integers(*b["range_"], endpoint=True)),
                rate=int(rng.integers(*_RATE, endpoint=True)), index=k))
            k += 1
    return voices


def _write_float_wav(path: Path, x: np.ndarray) -> None:
    """Mono 32-bit float WAV with a minimal header (libsndfile adds a time-stamped PEAK chunk
    to float files, which would make identical audio give different bytes)."""
    data = np.asarray(x, "<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, SR, 4 * SR, 4, 32)  # WAVE_FORMAT_IEEE_FLOAT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(data)) + b"WAVE"
                     + b"fmt " + struct.pack("<I", len(fmt)) + fmt
                     + b"data" + struct.pack("<I", len(data)) + data)


def _render_speaker(job: tuple) -> list[dict]:
    """Synthesises all utterances of one speaker (runs in a worker process)."""
    import soxr

    seed, spk, n_utts, root = job
    text_rng = np.random.default_rng([seed, spk["index"], 1])
    utts = []
    for u in range(n_utts):
        es_seed = int(np.random.default_rng([seed, spk["index"], u, 3]).integers(2**31))
        for _ in range(30):  # resample the sentence until the duration is in range
            text = _sentence(text_rng)
            raw, phonemes, words = synthesize(text, spk["voice"], spk["pitch"], spk["range_"],
                                              spk["rate"], seed=es_seed)
            if _MIN_DUR <= raw.size / ESPEAK_SR <= _MAX_DUR:
                break
        # 22050 -> 16000 Hz with soxr "HQ" (= librosa.resample's default soxr_hq).
        x = soxr.resample(raw.astype(np.float64) / 32768.0, ESPEAK_SR, SR, quality="HQ")
        x = x / np.max(np.abs(x))
        x = x + 10 ** (_DITHER_DB / 20) * np.random.default_rng([seed, spk["index"], u, 2]
                                                                 ).standard_normal(x.size)
        x = (_PEAK * x / np.max(np.abs(x))).astype(np.float32)
        rel = f"{spk['split']}/{spk['id']}/{spk['id']}_{u:03d}.wav"
        _write_float_wav(Path(root) / rel, x)
        to16k = lambda s: min(int(round(s * SR / ESPEAK_SR)), x.size - 1)
        utts.append(dict(path=rel, speaker=spk["id"], split=spk["split"], text=text,
                         duration=x.size / SR, phonemes=[[p, to16k(s)] for p, s in phonemes],
                         words=[[w, to16k(s)] for w, s in words]))
    return utts


def build_default_corpus(seed: int = 0, *, cache_dir: str | os.PathLike | None = None,
                         n_train: int = 16, n_val: int = 4, n_test: int = 4, n_babble: int = 6,
                         utts_per_speaker: int = 20, progress: bool = True,
                         num_workers: int | None = None) -> "Corpus":
    """Builds (or reopens from the cache) the default synthetic speech corpus.

    Args:
      seed: controls voices, sentences and dither; same seed → identical audio bytes.
      cache_dir: parent folder (default :func:`default_cache_dir`).
      n_train, n_val, n_test, n_babble: speakers per split (speaker-disjoint).
      utts_per_speaker: utterances of 2–5 s per speaker.
      progress: show a tqdm bar and print the build time.
      num_workers: processes (default ``min(2, cpu_count)``; 1 = in-process).

    Returns:
      The :class:`Corpus`.
    """
    counts = dict(train=n_train, val=n_val, test=n_test, babble=n_babble)
    if n_train < 1 or min(counts.values()) < 0 or utts_per_speaker < 1:
        raise ValueError(f"need n_train >= 1, counts >= 0, utts_per_speaker >= 1: {counts}")
    params = dict(version=_VERSION, seed=int(seed), utts=int(utts_per_speaker), **counts)
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"speech_{digest}"
    if Corpus.is_complete(root):
        return Corpus(root)
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    voices = _voices(seed, counts)
    jobs = [(int(seed), v, int(utts_per_speaker), str(root)) for v in voices]
    root.mkdir(parents=True, exist_ok=True)
    workers = num_workers or min(2, os.cpu_count() or 1)
    bar = tqdm(total=len(jobs), desc="speech corpus", unit="spk", disable=not progress)
    utts: list[dict] = []
    if workers > 1 and len(jobs) > 1:
        # "spawn": the parent may already run JAX threads, which fork() does not copy safely.
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for res in pool.imap(_render_speaker, jobs):
                utts += res
                bar.update()
    else:
        for job in jobs:
            utts += _render_speaker(job)
            bar.update()
    bar.close()
    elapsed = time.perf_counter() - t0
    manifest = dict(params=params, sr=SR, build_seconds=round(elapsed, 3),
                    speakers={v["id"]: {k: v[k] for k in ("split", "voice", "pitch", "range_",
                                                           "rate")} for v in voices},
                    utterances=utts)
    tmp = root / f"manifest.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(manifest, ensure_ascii=False, indent=0))
    os.replace(tmp, root / "manifest.json")  # written last and atomically
    if progress:
        minutes = sum(u["duration"] for u in utts) / 60
        print(f"built speech corpus: {len(utts)} utterances, {len(voices)} speakers, "
              f"{minutes:.1f} min of audio in {elapsed:.1f} s -> {root}")
    return Corpus(root)


# ---------------------------------------------------------------------------------- access
@dataclasses.dataclass(frozen=True)
class Utterance:
    """One corpus utterance; ``phonemes``/``words`` are ``(label, start sample at 16 kHz)``."""

    path: Path
    speaker: str
    split: str
    text: str
    duration: float
    phonemes: tuple[tuple[str, int], ...]
    words: tuple[tuple[str, int], ...]


class Corpus:
    """Read access to a built corpus folder (``manifest.json`` + WAVs)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: corpus manifest missing (build incomplete?)")
        self.manifest = json.loads(path.read_text())
        self.sr = int(self.manifest["sr"])
        self._utts = [Utterance(path=self.root / u["path"], speaker=u["speaker"],
                                split=u["split"], text=u["text"], duration=u["duration"],
                                phonemes=tuple((p, s) for p, s in u["phonemes"]),
                                words=tuple((w, s) for w, s in u["words"]))
                      for u in self.manifest["utterances"]]

    @staticmethod
    def is_complete(root: str | os.PathLike) -> bool:
        """True if ``root`` has a manifest and every WAV it lists."""
        return manifest_complete(root, "utterances")

    @staticmethod
    def _check(split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")

    def speakers(self, split: str) -> list[str]:
        """Sorted speaker ids of ``split``."""
        self._check(split)
        return sorted(k for k, v in self.manifest["speakers"].items() if v["split"] == split)

    def voice(self, speaker: str) -> dict:
        """espeak voice name, pitch, range and rate of a speaker."""
        return dict(self.manifest["speakers"][speaker])

    def utterances(self, split: str | None = None) -> list[Utterance]:
        """Utterances of ``split`` (all splits if ``None``) in build order."""
        if split is None:
            return list(self._utts)
        self._check(split)
        return [u for u in self._utts if u.split == split]

    def load(self, utt: Utterance) -> np.ndarray:
        """The waveform of ``utt``, float32 at 16 kHz."""
        return load_wav(utt.path, self.sr)

    def __repr__(self) -> str:
        return f"Corpus({str(self.root)!r}, {len(self._utts)} utterances)"
