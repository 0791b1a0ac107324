"""Figures: spectrogram comparisons and training curves (matplotlib, Agg backend, return Figures)."""

from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vdvae_jax.data.stft import StftConfig, stft_librosa  # noqa: E402

__all__ = ["spectrograms", "training_curves"]


def spectrograms(waves: Sequence[np.ndarray], titles: Sequence[str], *,
                 stft_cfg: StftConfig = StftConfig(pad_mode="constant"), dynamic_range_db: float = 80.0):
    """Stacked log-power spectrograms (dB re. the loudest bin of the first signal)."""
    specs = [np.abs(stft_librosa(np.asarray(w, np.float32), stft_cfg)).T ** 2 for w in waves]
    ref = max(float(specs[0].max()), 1e-12)
    fig, axes = plt.subplots(len(specs), 1, figsize=(9, 2.4 * len(specs)), sharex=True, squeeze=False)
    dur = len(waves[0]) / stft_cfg.sr
    for ax, spec, title in zip(axes[:, 0], specs, titles):
        db = 10 * np.log10(np.maximum(spec, 1e-12) / ref)
        im = ax.imshow(db, origin="lower", aspect="auto", vmin=-dynamic_range_db, vmax=0,
                       extent=(0, dur, 0, stft_cfg.sr / 2000), cmap="magma")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("kHz")
    axes[-1, 0].set_xlabel("time (s)")
    fig.colorbar(im, ax=axes[:, 0].tolist(), label="dB", shrink=0.9)
    return fig


def training_curves(histories: dict[str, list[dict]], keys: Sequence[str] = ("train_loss", "val_loss")):
    """One panel per key, one line per run (histories as written by :func:`vdvae_jax.train.fit`)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, hist in histories.items():
            ax.plot([h["epoch"] for h in hist], [h[key] for h in hist], label=name)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
