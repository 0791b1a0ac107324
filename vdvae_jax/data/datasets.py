"""Speech file lists (WSJ0, VoiceBank), noisy/clean pairs (VoiceBank-DEMAND folders, the reference
SE test lists used for WSJ0-QUT and VB-DMD), the reference spectrogram-dataset recipe, batching.

``build_spectrogram_dataset`` follows the reference training loader (spec §2.4): trim the
whole file (``top_db`` 30), cut contiguous segments of ``(T - 1) hop`` samples, divide each by
its own ``max |x|``, reflect-padded float64 STFT with the sine window, ``|X|^2`` as float32.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from vdvae_jax.data.audio import AudioError, load_wav, segment_waveform, trim_silence
from vdvae_jax.data.stft import StftConfig, power_spectrogram_reference

__all__ = [
    "wav_folder",
    "wsj0_splits",
    "voicebank_splits",
    "VOICEBANK_VAL_SPEAKERS",
    "paired_folders",
    "voicebank_demand_pairs",
    "se_test_list",
    "build_spectrogram_dataset",
    "batch_iterator",
]

VOICEBANK_VAL_SPEAKERS = ("p226", "p287")


def wav_folder(path: str | os.PathLike) -> list[Path]:
    """All ``.wav`` files under ``path`` (recursive, case-insensitive extension), sorted.

    Raises:
      FileNotFoundError: if ``path`` is not a folder or holds no WAV file.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: audio folder does not exist")
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() == ".wav" and p.is_file())
    if not files:
        raise FileNotFoundError(f"{path}: no .wav files found (searched recursively)")
    return files


def _find_dirs(root: Path, name: str) -> list[Path]:
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset root does not exist")
    found = sorted(p for p in [root, *root.rglob(name)] if p.name == name and p.is_dir())
    if not found:
        raise FileNotFoundError(f"{root}: no '{name}' folder found (searched recursively)")
    return found


def _files_in(root: Path, name: str) -> list[Path]:
    return sorted({f for d in _find_dirs(root, name) for f in wav_folder(d)})


def wsj0_splits(root: str | os.PathLike) -> dict[str, list[Path]]:
    """WSJ0 (CHiME2 subset) file lists: train ``si_tr_s``, val ``si_dt_05``, test ``si_et_05``.

    Each subfolder is searched for recursively below ``root``; files must be 16 kHz.
    """
    root = Path(root)
    names = dict(train="si_tr_s", val="si_dt_05", test="si_et_05")
    return {split: _files_in(root, name) for split, name in names.items()}


def voicebank_splits(
    root: str | os.PathLike, val_speakers: Sequence[str] = VOICEBANK_VAL_SPEAKERS
) -> dict[str, list[Path]]:
    """VoiceBank-DEMAND clean file lists (48 kHz; resample at load time).

    train = ``clean_trainset_28spk_wav`` minus ``val_speakers`` (p226, p287), val = those
    speakers, test = ``clean_testset_wav``. The speaker is the file-name prefix (``p226_001``).
    """
    root = Path(root)
    train_all = _files_in(root, "clean_trainset_28spk_wav")
    is_val = lambda p: p.name.split("_")[0] in set(val_speakers)
    splits = dict(train=[p for p in train_all if not is_val(p)],
                  val=[p for p in train_all if is_val(p)],
                  test=_files_in(root, "clean_testset_wav"))
    for split, files in splits.items():
        if not files:
            raise FileNotFoundError(f"{root}: VoiceBank split {split!r} is empty")
    return splits


def paired_folders(clean_dir: str | os.PathLike, noisy_dir: str | os.PathLike) -> list[dict]:
    """``[{"name", "clean", "noisy"}]`` for the WAVs of two folders paired by relative path.

    Raises:
      FileNotFoundError: a folder is missing / empty, or names do not pair up (the message lists
        the unmatched names of each folder).
    """
    idx = {}
    for role, d in (("clean", Path(clean_dir)), ("noisy", Path(noisy_dir))):
        idx[role] = {p.relative_to(d).as_posix(): p for p in wav_folder(d)}
    only = {role: sorted(set(v) - set(idx["noisy" if role == "clean" else "clean"]))
            for role, v in idx.items()}
    if only["clean"] or only["noisy"]:
        raise FileNotFoundError(f"{clean_dir} / {noisy_dir} do not pair up: only clean "
                                f"{only['clean'][:10]}, only noisy {only['noisy'][:10]}")
    return [{"name": n, "clean": idx["clean"][n], "noisy": idx["noisy"][n]} for n in sorted(idx["clean"])]


def voicebank_demand_pairs(root: str | os.PathLike, split: str = "test") -> list[dict]:
    """VoiceBank-DEMAND (Valentini) noisy/clean pairs: ``clean_testset_wav`` + ``noisy_testset_wav``
    (``split="test"``) or ``clean_trainset_28spk_wav`` + ``noisy_trainset_28spk_wav``
    (``"train"``), searched for below ``root``; files are 48 kHz (load with ``resample=True``).
    """
    sub = {"test": "testset", "train": "trainset_28spk"}
    if split not in sub:
        raise ValueError(f"split must be one of {sorted(sub)}, got {split!r}")
    root = Path(root)
    clean = _find_dirs(root, f"clean_{sub[split]}_wav")[0]
    noisy = _find_dirs(root, f"noisy_{sub[split]}_wav")[0]
    return paired_folders(clean, noisy)


def se_test_list(list_json: str | os.PathLike, noisy_root: str | os.PathLike,
                 clean_root: str | os.PathLike) -> list[dict]:
    """Entries of a reference SE test list (``vb_test.json`` / ``wsj_test.json``, the way the
    WSJ0-QUT mixtures are distributed): each entry's ``noisy_wav`` / ``clean_wav`` templates are
    filled with ``{noisy_root}`` / ``{clean_root}``; other fields (``snr``, ``noise_type``,
    ``length``, ``noise_start``) are kept.

    Raises:
      FileNotFoundError: the list or a file it names is missing (the first missing files are named).
    """
    import json

    list_json = Path(list_json)
    if not list_json.is_file():
        raise FileNotFoundError(f"{list_json}: test list not found")
    entries = json.loads(list_json.read_text())
    if isinstance(entries, dict):
        entries = list(entries.values())
    out, missing = [], []
    for e in entries:
        row = dict(e)
        for key in ("noisy_wav", "clean_wav"):
            row[key] = Path(str(e[key]).format(noisy_root=noisy_root, clean_root=clean_root))
            if not row[key].is_file():
                missing.append(str(row[key]))
        out.append(row)
    if missing:
        raise FileNotFoundError(f"{list_json}: {len(missing)} listed files missing, e.g. {missing[:5]}")
    return out


def build_spectrogram_dataset(
    waveforms: Iterable[np.ndarray | str | os.PathLike],
    stft_cfg: StftConfig = StftConfig(),
    seq_len: int = 50,
    top_db: float = 30.0,
    *,
    resample: bool = True,
) -> np.ndarray:
    """Power-spectrogram training sequences with the reference recipe.

    For each waveform: trim silence of the whole file, cut ``n = floor((1 + floor(L/hop)) /
    seq_len)`` segments of ``(seq_len - 1) hop`` samples, peak-normalise each, and compute
    ``|STFT|^2`` (float64, padding ``stft_cfg.pad_mode``, reflect in the reference) → float32.
    Files too short for one segment contribute nothing, as in the reference.

    Args:
      waveforms: arrays at ``stft_cfg.sr`` or WAV paths (loaded with :func:`load_wav`; other
        rates are resampled when ``resample``, e.g. VoiceBank 48 kHz).
      stft_cfg: STFT parameters.
      seq_len: frames per sequence T.
      top_db: silence threshold for trimming.
      resample: see ``waveforms``.

    Returns:
      float32 ``(N, seq_len, F)``, segments in input order (shuffle with
      :func:`batch_iterator`).
    """
    out = []
    seg_len = (seq_len - 1) * stft_cfg.hop
    for w in waveforms:
        if isinstance(w, (str, os.PathLike)):
            x = load_wav(w, stft_cfg.sr, resample=resample)
        else:
            x = np.asarray(w)
        y, _ = trim_silence(x, top_db=top_db)
        if y.shape[0] < seg_len:
            continue
        segs = segment_waveform(y.astype(np.float64), seq_len, stft_cfg.hop)
        out.append(power_spectrogram_reference(segs, stft_cfg))
    if not out:
        raise AudioError(f"no waveform was long enough for one {seq_len}-frame segment")
    data = np.concatenate(out, axis=0)
    assert data.shape[1:] == (seq_len, stft_cfg.n_freq), data.shape
    return data


def batch_iterator(
    data: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    drop_last: bool = True,
    start_batch: int = 0,
    axis: int = 0,
) -> Iterator[np.ndarray]:
    """Yields shuffled batches ``data[perm[i B:(i + 1) B]]``; the permutation depends only on
    ``(seed, epoch)``, so training can resume exactly (``start_batch`` skips batches).

    Args:
      data: array ``(N, ...)``.
      batch_size: B.
      seed: base seed.
      epoch: epoch index.
      drop_last: drop the final incomplete batch.
      start_batch: index of the first batch to yield.
      axis: the sequence axis of ``data`` (1 for time-major ``(T, N, F)`` data, which then yields
        time-major batches ``(T, B, F)``).
    """
    n = data.shape[axis]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    perm = np.random.default_rng([int(seed), int(epoch)]).permutation(n)
    n_batches = n // batch_size if drop_last else -(-n // batch_size)
    for i in range(start_batch, n_batches):
        yield np.take(data, perm[i * batch_size : (i + 1) * batch_size], axis=axis)
