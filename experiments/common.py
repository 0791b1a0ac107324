"""Shared pieces of the experiment scripts: data sources, model presets, run bookkeeping."""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
from pathlib import Path

import jax
import numpy as np

from vdvae_jax.data import build_default_corpus, build_spectrogram_dataset, load_wav, wav_folder
from vdvae_jax.data.datasets import voicebank_splits, wsj0_splits
from vdvae_jax.data.stft import StftConfig
from vdvae_jax.runtime import configure_cpu

configure_cpu()   # before the first JAX computation of any experiment (see vdvae_jax.runtime)

# Reference speech sizes are each model's defaults; "small" halves widths for CPU quickstarts.
PRESETS: dict[str, dict[str, dict]] = {
    "speech": {},
    # "log": reference sizes, networks read log-power (faster training; see DVAEConfig.input_transform)
    "log": {name: {"input_transform": "log"} for name in
            ("vae", "rvae", "rvae_causal", "srnn", "srnn_ss", "dkf", "storn", "vrnn", "dsae")},
    "small": {
        "vae": {"dense_x_z": (128,)},
        "rvae": {"dim_rnn_g_x": 64, "dim_rnn_g_z": 64, "dim_rnn_h": 64},
        "rvae_causal": {"dim_rnn_g_x": 64, "dim_rnn_g_z": 64, "dim_rnn_h": 64},
        "srnn": {"dense_x_h": (128,), "dim_rnn_h": 64, "dense_hx_g": (128,), "dim_rnn_g": 64,
                 "dense_gz_z": (32,), "dense_hz_z": (32,), "dense_hz_x": (128,)},
        "srnn_ss": {"dense_x_h": (128,), "dim_rnn_h": 64, "dense_hx_g": (128,), "dim_rnn_g": 64,
                    "dense_gz_z": (32,), "dense_hz_z": (32,), "dense_hz_x": (128,)},
    },
}


def preset_overrides(model: str, preset: str) -> dict:
    """Config overrides of ``preset``; presets combine with '+' (e.g. ``small+log``)."""
    out = {}
    for name in preset.split("+"):
        if name not in PRESETS:
            raise SystemExit(f"unknown preset {name!r}; choose from {sorted(PRESETS)} (combine with '+')")
        out.update(PRESETS[name].get(model, {}))
    return out


def load_split_waves(data: str, split: str, *, seed: int = 0, max_files: int | None = None,
                     sr: int = 16000) -> list[np.ndarray]:
    """Waveforms of ``split`` from ``data``: "default" (embedded corpus), "wsj0:ROOT",
    "voicebank:ROOT", or a folder of WAVs (files split 80/10/10 by sorted order)."""
    if data == "default":
        corpus = build_default_corpus(seed)
        waves = [corpus.load(u) for u in corpus.utterances(split)]
    else:
        if data.startswith("wsj0:"):
            files = wsj0_splits(data[5:])[split]
        elif data.startswith("voicebank:"):
            files = voicebank_splits(data[10:])[split]
        else:
            files = wav_folder(data)
            n = len(files)
            cut = {"train": (0, int(0.8 * n)), "val": (int(0.8 * n), int(0.9 * n)), "test": (int(0.9 * n), n)}
            lo, hi = cut[split]
            files = files[lo:hi] or files[:1]
        waves = [load_wav(f, sr=sr, resample=True) for f in files[:max_files]]
    return waves[:max_files]


def spectrogram_split(data: str, split: str, seq_len: int, *, seed: int = 0,
                      max_files: int | None = None) -> np.ndarray:
    """(N, seq_len, 513) power-spectrogram segments of a split (reference training recipe)."""
    waves = load_split_waves(data, split, seed=seed, max_files=max_files)
    return build_spectrogram_dataset(waves, StftConfig(pad_mode="reflect"), seq_len=seq_len)


def run_info(seed: int) -> dict:
    import vdvae_jax

    return {"seed": seed, "jax": jax.__version__, "vdvae_jax": vdvae_jax.__version__,
            "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
            "python": platform.python_version(), "argv": sys.argv}


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=lambda o: dataclasses.asdict(o)
                               if dataclasses.is_dataclass(o) else str(o)))
