"""Synthetic box trajectories for pre-training the MOT SRNN (MixDVAE's generator, spec §2.4).

Each coordinate c in {x, y, w} of a trajectory of ``length`` frames is piecewise in the frame index:
``n_seg ~ U{0, 1, 2}`` distinct cut points drawn from {3, 6, ..., length - 3} (the reference hard-codes
length 60), and every segment, with local time t = 0, 1, ..., starts at the previous segment's last
value s (so one value repeats at each boundary) and follows one function type:

* static :math:`f(t) = s`; line :math:`f(t) = v t + s`; parabola :math:`f(t) = a t^2 + v t + s`;
  sine :math:`f(t) = s \\sin(\\omega t + \\varphi) / \\sin\\varphi`,
  with :math:`v \\sim N(0, \\sigma_v^2), a \\sim N(0, \\sigma_a^2), \\omega \\sim N(0, \\sigma_\\omega^2),
  \\varphi \\sim N(0, \\sigma_\\varphi^2)`.
* type probabilities: x and y static/line/parabola/sine 0.15/0.30/0.30/0.25; w static/line/parabola
  0.25/0.60/0.15, and w is never cut.

Starts :math:`x_0, y_0 \\sim U(0, 1)`, :math:`w_0 \\sim \\mathrm{LogNormal}(-3.8, 0.7)`; a constant
height/width ratio :math:`r \\sim N(5.26, 0.77)` gives :math:`h = r w` and the box
:math:`(x, y, x + w, y - h)` (normalised "x1x2", see :mod:`vdvae_jax.tracking.io`). A trajectory is
rejected if at any frame :math:`x_1 < -0.5, x_2 < 0, x_1 > 1, x_2 > 0.8, y_1 < 0, y_2 < -1.5,
y_1 > 1.5, y_2 > 1` or :math:`w < 0` (the reference's thresholds, including the odd 0.8).
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["SyntheticConfig", "generate_trajectories", "synthetic_dataset"]


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Generator constants (the reference's values). ``sigma_*`` are per coordinate (x, y, w)."""

    length: int = 60
    cut_step: int = 3
    max_cuts: int = 2
    probs_xy: tuple[float, float, float, float] = (0.15, 0.30, 0.30, 0.25)   # static, line, parabola, sine
    probs_w: tuple[float, float, float] = (0.25, 0.60, 0.15)                 # static, line, parabola
    sigma_v: tuple[float, float, float] = (0.00125, 0.0006, 0.00032)
    sigma_a: tuple[float, float, float] = (3.7e-5, 2e-5, 1e-5)
    sigma_omega: tuple[float, float] = (0.003, 0.001)
    sigma_phi: tuple[float, float] = (3.2, 3.2)
    w0_lognormal: tuple[float, float] = (-3.8, 0.7)
    ratio: tuple[float, float] = (5.26, 0.77)


def _coordinate(rng, cfg: SyntheticConfig, c: int, start: float) -> np.ndarray:
    L = cfg.length
    n_cut = 0 if c == 2 else int(rng.integers(0, cfg.max_cuts + 1))
    grid = np.arange(cfg.cut_step, L, cfg.cut_step)
    cuts = sorted(rng.choice(grid, size=n_cut, replace=False).tolist()) + [L]
    out = np.empty(L)
    begin, s = 0, start
    for end in cuts:
        t = np.arange(end - begin, dtype=np.float64)
        if c == 2:
            kind = rng.choice(3, p=cfg.probs_w)
        else:
            kind = rng.choice(4, p=cfg.probs_xy)
        if kind == 0:
            f = np.full_like(t, s)
        elif kind in (1, 2):
            v = rng.normal(0.0, cfg.sigma_v[c])
            a = rng.normal(0.0, cfg.sigma_a[c]) if kind == 2 else 0.0
            f = a * t * t + v * t + s
        else:
            omega = rng.normal(0.0, cfg.sigma_omega[c])
            phi = rng.normal(0.0, cfg.sigma_phi[c])
            with np.errstate(all="ignore"):
                f = s * np.sin(omega * t + phi) / np.sin(phi)
        out[begin:end] = f
        begin, s = end, f[-1]
    return out


def _accept(box: np.ndarray, w: np.ndarray) -> bool:
    x1, y1, x2, y2 = box.T
    bad = ((x1 < -0.5) | (x2 < 0) | (x1 > 1) | (x2 > 0.8) | (y1 < 0) | (y2 < -1.5) | (y1 > 1.5)
           | (y2 > 1) | (w < 0) | ~np.isfinite(box).all(axis=1))
    return not bool(np.any(bad))


def generate_trajectories(n_attempts: int, seed: int = 0,
                          config: SyntheticConfig = SyntheticConfig()) -> np.ndarray:
    """Accepted trajectories of ``n_attempts`` draws, (M, length, 4) float64 normalised x1x2 boxes."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_attempts):
        x = _coordinate(rng, config, 0, rng.uniform(0.0, 1.0))
        y = _coordinate(rng, config, 1, rng.uniform(0.0, 1.0))
        w = _coordinate(rng, config, 2, rng.lognormal(*config.w0_lognormal))
        ratio = rng.normal(*config.ratio)
        box = np.stack([x, y, x + w, y - ratio * w], axis=-1)
        if _accept(box, w):
            out.append(box)
    return np.asarray(out, np.float64).reshape(-1, config.length, 4)


def synthetic_dataset(n_train_attempts: int = 20000, n_val_attempts: int = 5000, seed: int = 0,
                      config: SyntheticConfig = SyntheticConfig()) -> tuple[np.ndarray, np.ndarray]:
    """``(train, val)`` trajectories (float32, (M, length, 4)), independent seeds for the two splits."""
    train = generate_trajectories(n_train_attempts, seed, config)
    val = generate_trajectories(n_val_attempts, seed + 1_000_003, config)
    return train.astype(np.float32), val.astype(np.float32)
