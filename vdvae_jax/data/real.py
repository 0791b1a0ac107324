"""A small *real* noisy-speech set built from Debian packages (spec offline_data §1a, §2, §6.B).

Real voices (Fish Fillets NG Czech dialogue, Vorbis 22.05 kHz; Asterisk "Allison" English prompts,
16 kHz G.722) are mixed with real noise (MegaGlest ambience: rain, wind, day/night; sonic-pi
machine loops and drones; Asterisk music-on-hold) at fixed SNRs. Everything is resampled to 16 kHz
and is deterministic given the seed and the package versions (recorded in the manifest).

The packages are fetched with ``apt-get download`` into a cache folder and unpacked with
``dpkg-deb -x`` (no root install): this needs the network and Debian tools, so it only runs from
:func:`build_real_noisy_set` (``experiments/real_noisy.py``), never from library code or tests. The
mixing, selection and manifest logic (:func:`plan_mixtures`, :func:`mix_item`, :func:`write_set`) are
plain numpy and are unit-tested on synthetic arrays.

Mixture of item ``i``: a clean utterance ``s`` (2-5 s, high-passed at 60 Hz like the noise), a noise excerpt ``n`` at a random offset
(looped if the recording is shorter), ``x = s + a n`` with ``10 log10(|s|^2 / |a n|^2) = SNR``
(:func:`vdvae_jax.data.noise.mix_at_snr`); clean and noisy are then scaled by one common factor so
that ``max |x| = 0.9`` (scale-invariant metrics are unaffected).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np

from vdvae_jax.data.audio import AudioError, save_wav
from vdvae_jax.data.noise import mix_at_snr

__all__ = [
    "RealDataError",
    "VOICE_PACKAGES",
    "NOISE_PACKAGES",
    "SNRS",
    "fetch_debs",
    "decode_audio",
    "voice_sources",
    "noise_sources",
    "plan_mixtures",
    "mix_item",
    "write_set",
    "load_manifest",
    "highpass",
    "select_voices",
    "build_real_noisy_set",
]

SR = 16000
SNRS = (-5.0, 0.0, 5.0, 10.0)
HIGHPASS_HZ = 60.0
VOICE_PACKAGES = ("fillets-ng-data-cs", "asterisk-core-sounds-en-g722")
NOISE_PACKAGES = ("megaglest-data", "sonic-pi-samples", "asterisk-moh-opsound-g722")
# only these members of the 242 MB megaglest-data deb are unpacked
_PARTIAL = {"megaglest-data": "*/tilesets/*/sounds/*"}
_SONIC_PI = {"loop_industrial": "machine", "loop_3d_printer": "machine", "vinyl_hiss": "machine",
             "ambi_soft_buzz": "machine", "ambi_drone": "drone", "ambi_haunted_hum": "drone",
             "ambi_glass_hum": "drone", "loop_safari": "music", "loop_tabla": "music"}
_GLEST_KIND = {"rain": "rain", "wind": "wind", "day": "ambience", "desertday": "ambience",
               "sunny_day": "ambience", "night": "ambience", "nightime": "ambience",
               "hell": "ambience"}


class RealDataError(RuntimeError):
    """The real set cannot be built (no network, no Debian tools, package missing, no sources)."""


# ------------------------------------------------------------------------------------ packages
def fetch_debs(packages: Sequence[str], cache_dir: str | os.PathLike, *,
               apt_get: str = "apt-get", dpkg_deb: str = "dpkg-deb") -> Path:
    """Downloads ``packages`` (``apt-get download``, run inside ``cache_dir/debs``) and unpacks them
    into ``cache_dir/root`` (``dpkg-deb -x``); already unpacked packages are skipped.

    Returns:
      ``cache_dir/root``, the unpacked file-system tree (``usr/share/...``).

    Raises:
      RealDataError: the tools are missing, or a download / unpacking failed (message names the
        package and the tool's output).
    """
    cache = Path(cache_dir)
    debs, root = cache / "debs", cache / "root"
    debs.mkdir(parents=True, exist_ok=True)
    root.mkdir(parents=True, exist_ok=True)
    for tool in (apt_get, dpkg_deb):
        if shutil.which(tool) is None:
            raise RealDataError(f"{tool!r} not found: building the real noisy set needs Debian's "
                                f"apt-get and dpkg-deb (and network access to a Debian mirror)")
    for pkg in packages:
        stamp = root / f".{pkg}.unpacked"
        if stamp.exists():
            continue
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            res = subprocess.run([apt_get, "download", pkg], cwd=debs, capture_output=True, text=True)
            found = sorted(debs.glob(f"{pkg}_*.deb"))
            if res.returncode != 0 or not found:
                raise RealDataError(
                    f"apt-get download {pkg} failed (exit {res.returncode}); is the network / a Debian "
                    f"mirror reachable and the package in the apt lists (apt-get update)? "
                    f"{(res.stderr or res.stdout).strip()[-500:]}")
        deb = found[-1]
        if pkg in _PARTIAL:
            cmd = f"{dpkg_deb} --fsys-tarfile '{deb}' | tar x -C '{root}' --wildcards '{_PARTIAL[pkg]}'"
            res = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True)
        else:
            res = subprocess.run([dpkg_deb, "-x", str(deb), str(root)], capture_output=True, text=True)
        if res.returncode != 0:
            raise RealDataError(f"unpacking {deb.name} failed: {res.stderr.strip()[-500:]}")
        stamp.write_text(deb.name)
    return root


def package_versions(cache_dir: str | os.PathLike) -> dict[str, str]:
    """``{package: deb file name}`` of the unpacked packages (recorded in the manifest)."""
    root = Path(cache_dir) / "root"
    return {p.name[1:-len(".unpacked")]: p.read_text().strip() for p in sorted(root.glob(".*.unpacked"))}


# --------------------------------------------------------------------------------------- audio
def decode_audio(path: str | os.PathLike, sr: int = SR) -> np.ndarray:
    """Mono float32 waveform at ``sr`` from an ogg/flac/wav file (soundfile) or a raw ``.g722``
    file (PyAV, ``pip install av``); channels are averaged, rates converted with ``resample_poly``.
    """
    from math import gcd

    from scipy.signal import resample_poly

    path = Path(path)
    if path.suffix.lower() == ".g722":
        try:
            import av
        except ImportError as err:
            raise RealDataError(f"{path}: decoding G.722 needs PyAV (pip install av)") from err
        with av.open(str(path), format="g722") as c:
            frames = [f.to_ndarray() for f in c.decode(audio=0)]
            file_sr = c.streams.audio[0].rate
        x = np.concatenate(frames, axis=-1).astype(np.float64)
        x = x.mean(axis=0) / 32768.0 if x.ndim == 2 else x / 32768.0
    else:
        import soundfile as sf

        try:
            x, file_sr = sf.read(str(path), dtype="float64", always_2d=True)
        except Exception as err:
            raise AudioError(f"{path}: unreadable audio file ({err})") from err
        x = x.mean(axis=1)
    if file_sr != sr:
        g = gcd(int(file_sr), int(sr))
        x = resample_poly(x, sr // g, int(file_sr) // g)
    return x.astype(np.float32)


def _speaker(path: Path) -> str:
    if path.suffix == ".g722":
        return "allison"
    parts = path.stem.split("-")
    role = parts[1] if len(parts) >= 3 else ""
    return {"v": "fillets-big", "m": "fillets-small"}.get(role, "fillets-other")


def voice_sources(root: str | os.PathLike) -> list[dict]:
    """Clean-voice files under an unpacked tree: ``{"path", "speaker"}`` with speaker in
    ``fillets-big`` (M), ``fillets-small`` (F, high-pitched), ``fillets-other``, ``allison``."""
    root = Path(root)
    files = sorted(root.glob("usr/share/games/fillets-ng/sound/*/cs/*.ogg"))
    files += sorted(p for p in root.glob("usr/share/asterisk/sounds/en_US_f_Allison/**/*.g722")
                    if "silence" not in p.parts)
    return [{"path": str(p), "speaker": _speaker(p)} for p in files]


def noise_sources(root: str | os.PathLike) -> list[dict]:
    """Real noise recordings: ``{"path", "noise_type"}``; symlinked duplicates appear once."""
    root = Path(root)
    out, seen = [], set()
    for p in sorted(root.glob("usr/share/games/megaglest/tilesets/*/sounds/*")):
        kind = _GLEST_KIND.get(p.stem)
        if kind and p.resolve() not in seen:
            seen.add(p.resolve())
            out.append({"path": str(p), "noise_type": kind})
    for stem, kind in _SONIC_PI.items():
        p = root / "usr/share/sonic-pi/samples" / f"{stem}.flac"
        if p.exists():
            out.append({"path": str(p), "noise_type": kind})
    for p in sorted(root.glob("usr/share/asterisk/moh/*.g722")):
        out.append({"path": str(p), "noise_type": "music"})
    return out


# ------------------------------------------------------------------------------ plan and mixing
def plan_mixtures(voices: Sequence[dict], noises: Sequence[dict], n_files: int = 32, *,
                  snrs: Sequence[float] = SNRS, seed: int = 0) -> list[dict]:
    """Deterministic choice of (voice file, noise file, SNR) per item.

    Speakers and noise types are taken round-robin (so each appears about equally often), the SNRs
    cycle so that every SNR has ``n_files / len(snrs)`` items, and files are drawn without repetition
    within a speaker / noise type by ``np.random.default_rng(seed)``. ``voices`` entries need
    ``path`` and ``speaker`` (plus optional ``duration``); ``noises`` need ``path`` and ``noise_type``.

    Returns:
      ``[{"file", "voice", "speaker", "noise", "noise_type", "snr_db", "seed"}]`` with
      ``file = "{i:03d}_{speaker}_{noise_type}_{snr}dB.wav"``.
    """
    if n_files < 1:
        raise ValueError(f"n_files must be >= 1, got {n_files}")
    if not voices or not noises:
        raise RealDataError(f"no {'voice' if not voices else 'noise'} sources to mix")
    rng = np.random.default_rng(seed)

    def groups(items, key):
        g: dict[str, list] = {}
        for it in items:
            g.setdefault(it[key], []).append(it)
        return {k: [v[i] for i in rng.permutation(len(v))] for k, v in sorted(g.items())}

    by_spk, by_noise = groups(voices, "speaker"), groups(noises, "noise_type")
    spk_names, noise_names = list(by_spk), list(by_noise)
    noise_names = [noise_names[i] for i in rng.permutation(len(noise_names))]
    plan = []
    for i in range(n_files):
        spk = spk_names[i % len(spk_names)]
        kind = noise_names[i % len(noise_names)]
        v = by_spk[spk][(i // len(spk_names)) % len(by_spk[spk])]
        nz = by_noise[kind][(i // len(noise_names)) % len(by_noise[kind])]
        snr = float(snrs[(i + i // len(spk_names)) % len(snrs)])
        plan.append({"file": f"{i:03d}_{spk}_{kind}_{snr:+g}dB.wav", "voice": v["path"],
                     "speaker": spk, "noise": nz["path"], "noise_type": kind, "snr_db": snr,
                     "seed": int(seed) * 100003 + i})
    return plan


def mix_item(speech: np.ndarray, noise: np.ndarray, snr_db: float, seed: int, *,
             peak: float = 0.9) -> tuple[np.ndarray, np.ndarray, int]:
    """``(clean, noisy, offset)``: a noise excerpt starting at a random ``offset`` (the recording is
    looped when shorter than the speech) mixed at ``snr_db`` with :func:`mix_at_snr`; both outputs
    scaled by one factor so that ``max |noisy| = peak``.

    Raises:
      AudioError: silent or non-finite speech/noise.
    """
    s = np.asarray(speech, np.float64)
    n = np.asarray(noise, np.float64)
    for name, a in (("speech", s), ("noise", n)):
        if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)) or not np.any(a):
            raise AudioError(f"mix_item: {name} must be a finite, non-silent 1-D signal")
    rng = np.random.default_rng(seed)
    offset = int(rng.integers(0, n.size))
    reps = -(-(offset + s.size) // n.size)
    excerpt = np.tile(n, reps)[offset:offset + s.size]
    noisy, _ = mix_at_snr(s, excerpt, snr_db)
    scale = peak / float(np.max(np.abs(noisy)))
    return (s * scale).astype(np.float32), (noisy * scale).astype(np.float32), offset


def highpass(x: np.ndarray, cutoff: float = HIGHPASS_HZ, sr: int = SR) -> np.ndarray:
    """Zero-phase 4th-order Butterworth high-pass (``sosfiltfilt``): removes DC offsets and
    sub-audio rumble (some fillets recordings hold more energy below 60 Hz than above)."""
    from scipy.signal import butter, sosfiltfilt

    sos = butter(4, cutoff, btype="highpass", fs=sr, output="sos")
    return sosfiltfilt(sos, np.asarray(x, np.float64)).astype(np.float32)


def _trim(x: np.ndarray, top_db: float = 40.0) -> np.ndarray:
    from vdvae_jax.data.audio import trim_silence

    return trim_silence(x, top_db=top_db)[0]


def write_set(out_dir: str | os.PathLike, plan: Sequence[dict], *, loader=decode_audio,
              min_s: float = 2.0, max_s: float = 5.0, extra: dict | None = None) -> Path:
    """Renders ``plan`` into ``out_dir/clean/NAME`` and ``out_dir/noisy/NAME`` (float WAV, 16 kHz)
    and writes ``out_dir/manifest.json``.

    Voices and noises are high-passed at 60 Hz (:func:`highpass`: the reference must be speech, not
    a recording's DC offset or rumble); each voice is trimmed (40 dB) and cut to at most ``max_s``
    seconds; an item whose voice is
    shorter than ``min_s`` is an error (choose voices with :func:`select_voices`). ``loader(path)``
    returns a 16 kHz waveform (tests pass synthetic arrays through it).

    Returns:
      The manifest path. Its ``items`` hold the plan entries plus ``duration_s``, ``noise_offset``.
    """
    out = Path(out_dir)
    items, cache = [], {}
    for entry in plan:
        s = _trim(highpass(loader(entry["voice"])))[: int(max_s * SR)]
        if s.size < min_s * SR:
            raise AudioError(f"{entry['voice']}: {s.size / SR:.2f} s after trimming, need {min_s} s")
        if entry["noise"] not in cache:
            cache[entry["noise"]] = highpass(loader(entry["noise"]))
        clean, noisy, offset = mix_item(s, cache[entry["noise"]], entry["snr_db"], entry["seed"])
        save_wav(out / "clean" / entry["file"], clean)
        save_wav(out / "noisy" / entry["file"], noisy)
        items.append({**entry, "duration_s": round(s.size / SR, 4), "noise_offset": offset})
    manifest = {"sr": SR, "highpass_hz": HIGHPASS_HZ, **(extra or {}), "items": items}
    path = out / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1))
    return path


def load_manifest(root: str | os.PathLike) -> dict:
    """The manifest of a built set (``root/manifest.json``), with a clear error when absent."""
    path = Path(root) / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no real noisy set here; build it with "
                                f"`python experiments/real_noisy.py --build`")
    return json.loads(path.read_text())


def select_voices(voices: Sequence[dict], *, min_s: float = 2.0, max_s: float = 5.0) -> list[dict]:
    """Voices whose file lasts between ``min_s`` and ``max_s + 1`` seconds (header only, fast for
    Vorbis; G.722 is 8000 bytes/s)."""
    import soundfile as sf

    out = []
    for v in voices:
        p = Path(v["path"])
        dur = p.stat().st_size / 8000.0 if p.suffix == ".g722" else sf.info(str(p)).duration
        if min_s + 0.3 <= dur <= max_s + 1.0:
            out.append({**v, "duration": dur})
    return out


def build_real_noisy_set(cache_dir: str | os.PathLike | None = None, *, seed: int = 0,
                         n_files: int = 32, snrs: Sequence[float] = SNRS,
                         force: bool = False) -> Path:
    """Fetches the packages, plans and renders the set into ``cache_dir`` (default
    ``~/.cache/vdvae_jax/real_noisy``); returns the folder holding ``clean/``, ``noisy/`` and
    ``manifest.json``. An existing set with the same seed / size is reused unless ``force``.
    """
    from vdvae_jax.data.corpus import default_cache_dir

    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "real_noisy"
    out = cache / f"set_seed{seed}_n{n_files}"
    if (out / "manifest.json").is_file() and not force:
        return out
    root = fetch_debs(VOICE_PACKAGES + NOISE_PACKAGES, cache)
    voices = select_voices(voice_sources(root))
    noises = noise_sources(root)
    plan = plan_mixtures(voices, noises, n_files, snrs=snrs, seed=seed)
    if out.exists():
        shutil.rmtree(out)
    write_set(out, plan, extra={"seed": seed, "snrs": list(snrs), "packages": package_versions(cache)})
    return out
