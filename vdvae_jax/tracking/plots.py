"""Trajectory plots of tracking windows (matplotlib, Agg backend; functions return Figures)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["trajectories", "coordinates"]


def _centre(b):
    return (b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2


def trajectories(gt, obs=None, tracks: dict | None = None, title: str = ""):
    """Box-centre trajectories in the image plane (normalised units, y up as in x1x2 boxes).

    gt: (T, N, 4); obs: (T, K, 4) detections (NaN = missing) drawn as dots; tracks: ``{name: (T, S, 4)}``.
    """
    fig, ax = plt.subplots(figsize=(6, 5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if obs is not None:
        cx, cy = _centre(np.asarray(obs))
        ax.plot(cx.ravel(), cy.ravel(), ".", color="0.6", ms=3, label="detections")
    cx, cy = _centre(np.asarray(gt))
    for n in range(cx.shape[1]):
        ax.plot(cx[:, n], cy[:, n], "-", color=colors[n % len(colors)], lw=3, alpha=0.35,
                label="ground truth" if n == 0 else None)
    styles = ["-", "--", ":", "-."]
    for j, (name, tr) in enumerate((tracks or {}).items()):
        tx, ty = _centre(np.asarray(tr))
        for s in range(tx.shape[1]):
            ax.plot(tx[:, s], ty[:, s], styles[j % 4], color=colors[s % len(colors)], lw=1.2,
                    label=f"{name}" if s == 0 else None)
    ax.set_xlabel("x (normalised)")
    ax.set_ylabel("y (normalised)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def coordinates(gt, obs=None, tracks: dict | None = None, title: str = ""):
    """The 4 box coordinates against time: ground truth, detections and tracks."""
    fig, axes = plt.subplots(4, 1, figsize=(8, 7), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    gt = np.asarray(gt)
    t = np.arange(gt.shape[0])
    for d, ax in enumerate(axes):
        if obs is not None:
            ax.plot(np.repeat(t, np.asarray(obs).shape[1]), np.asarray(obs)[..., d].ravel(), ".", color="0.6",
                    ms=2)
        for n in range(gt.shape[1]):
            ax.plot(t, gt[:, n, d], color=colors[n % len(colors)], lw=3, alpha=0.35)
        for j, (name, tr) in enumerate((tracks or {}).items()):
            for s in range(np.asarray(tr).shape[1]):
                ax.plot(t, np.asarray(tr)[:, s, d], ["-", "--", ":"][j % 3], color=colors[s % len(colors)], lw=1)
        ax.set_ylabel(("x1", "y1", "x2", "y2")[d])
    axes[-1].set_xlabel("frame")
    axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    return fig
