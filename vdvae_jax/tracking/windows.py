"""k-target tracking windows: from MOTChallenge ground truth (real TUD data shipped with motmetrics) or
from synthetic trajectories, with detections read from ``det.txt`` or simulated.

A :class:`Window` holds T frames of N ground-truth tracks and K = N detection slots per frame, all in
normalised x1x2 boxes (see :mod:`vdvae_jax.tracking.io`); a missing detection is a NaN row, and the slot
order within a frame is shuffled, so it carries no identity (only frame 0 is guaranteed complete,
since MixDVAE seeds one source per first-frame detection).

**Windows from ground truth** (:func:`windows_from_gt`, after MixDVAE's MOT17-3T recipe, spec §2.5):
frames [s, s + T) for s = first, first + stride, ... while the window fits; eligible tracks have a GT
row (with non-zero flag) on all T frames; up to ``subsets_per_window`` random N-subsets of the eligible
ids (all of them when there are fewer combinations). With ``det`` rows (a real ``det.txt``) each frame's
detections are matched one-to-one to the N GT boxes (Hungarian on 1 - IoU, IoU >= ``det_min_iou``);
unmatched GT boxes are misses, unmatched detections are dropped (the model has no clutter class); a
subset without a detection of every target in the first frame is skipped.

**Simulated detections** (:func:`simulate_detections`, :class:`DetectionNoise`): for every target and
frame independently,

* box noise: each coordinate gets Gaussian noise of standard deviation ``box_noise`` times the box
  width (x1, x2) or height (y1, y2);
* misses: each detection is dropped with probability ``miss_rate``;
* occlusion bursts: each frame starts a burst with probability ``burst_prob`` per target; a burst drops
  that target's detections for a length drawn uniformly in ``burst_len`` (inclusive);
* the first ``protect_first`` frames are never dropped;
* ``shuffle``: the K slots of every frame are randomly permuted.

The defaults (6 % box noise, 15 % misses, bursts of 5-12 frames at 1 % per frame, shuffled) are the
settings of the "MixDVAE" issue's TUD evaluation.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import itertools
from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

from vdvae_jax.tracking.io import REFERENCE_SIZE, MOTRows, parse_mot, xywh_to_x1x2
from vdvae_jax.tracking.synthetic import SyntheticConfig, generate_trajectories

__all__ = [
    "Window",
    "DetectionNoise",
    "TUD_SEQUENCES",
    "load_tud_gt",
    "simulate_detections",
    "windows_from_gt",
    "tud_windows",
    "synthetic_windows",
    "stack_windows",
]

TUD_SEQUENCES = ("TUD-Campus", "TUD-Stadtmitte")


class Window(NamedTuple):
    """One tracking window.

    Attributes:
      obs: (T, K, 4) detections, normalised x1x2, NaN rows where missing, slot order shuffled.
      gt: (T, N, 4) ground truth, same units.
      gt_ids: (N,) ground-truth identities.
      frames: (T,) frame numbers.
      name: e.g. ``"TUD-Stadtmitte:s011:ids2-3-7:d0"``.
    """

    obs: np.ndarray
    gt: np.ndarray
    gt_ids: np.ndarray
    frames: np.ndarray
    name: str


@dataclasses.dataclass(frozen=True)
class DetectionNoise:
    """Parameters of :func:`simulate_detections` (see module docstring)."""

    box_noise: float = 0.06
    miss_rate: float = 0.15
    burst_prob: float = 0.01
    burst_len: tuple[int, int] = (5, 12)
    protect_first: int = 1
    shuffle: bool = True


def load_tud_gt(name: str) -> MOTRows:
    """Ground truth of ``TUD-Campus`` or ``TUD-Stadtmitte`` (640 x 480), read from the motmetrics wheel."""
    if name not in TUD_SEQUENCES:
        raise ValueError(f"unknown TUD sequence {name!r}; choose from {TUD_SEQUENCES}")
    try:
        res = importlib.resources.files("motmetrics") / "data" / name / "gt.txt"
        text = res.read_text()
    except (ModuleNotFoundError, FileNotFoundError) as err:
        raise FileNotFoundError(f"{name} ground truth not found in the motmetrics package ({err})") from err
    return parse_mot(text, f"motmetrics/data/{name}/gt.txt")


def simulate_detections(gt: np.ndarray, rng: np.random.Generator,
                        noise: DetectionNoise = DetectionNoise()) -> np.ndarray:
    """Noisy, incomplete, shuffled detections (T, N, 4) of ground truth ``gt`` (T, N, 4) x1x2."""
    gt = np.asarray(gt, np.float64)
    T, N, _ = gt.shape
    w = gt[..., 2] - gt[..., 0]
    h = np.abs(gt[..., 1] - gt[..., 3])
    scale = np.stack([w, h, w, h], axis=-1)
    obs = gt + noise.box_noise * scale * rng.standard_normal(gt.shape)
    missing = rng.random((T, N)) < noise.miss_rate
    lo, hi = noise.burst_len
    starts = rng.random((T, N)) < noise.burst_prob
    for t, n in zip(*np.nonzero(starts)):
        missing[t:t + int(rng.integers(lo, hi + 1)), n] = True
    missing[:noise.protect_first] = False
    obs[missing] = np.nan
    if noise.shuffle:
        perm = np.argsort(rng.random((T, N)), axis=1)
        obs = np.take_along_axis(obs, perm[..., None], axis=1)
    return obs


def _match_detections(gt_t: np.ndarray, det_t: np.ndarray, min_iou: float) -> np.ndarray:
    """Detections (x1x2) matched to each GT box of one frame by Hungarian IoU; NaN where unmatched."""
    from vdvae_jax.tracking.evaluate import iou_x1x2

    out = np.full_like(gt_t, np.nan)
    if len(det_t) == 0:
        return out
    iou = iou_x1x2(gt_t, det_t)
    rows, cols = linear_sum_assignment(-np.nan_to_num(iou, nan=-1.0))
    for r, c in zip(rows, cols):
        if iou[r, c] >= min_iou:
            out[r] = det_t[c]
    return out


def windows_from_gt(gt_rows: MOTRows, length: int, *, num_targets: int = 3, stride: int = 10,
                    subsets_per_window: int = 4, draws: int = 1, seed: int = 0, det_rows: MOTRows | None = None,
                    noise: DetectionNoise = DetectionNoise(), size=REFERENCE_SIZE, name: str = "seq",
                    det_min_iou: float = 0.5) -> list[Window]:
    """k-target windows of ``length`` frames from MOTChallenge ground truth (see module docstring).

    ``draws`` independent detection simulations are made per (window, subset) when ``det_rows`` is None.
    """
    if length < 2:
        raise ValueError(f"window length must be >= 2, got {length}")
    rng = np.random.default_rng(seed)
    keep = gt_rows.conf != 0
    gt_rows = gt_rows.select(keep)
    first, last = int(gt_rows.frame.min()), int(gt_rows.frame.max())
    ids = np.unique(gt_rows.ids)
    table = np.full((last - first + 1, len(ids), 4), np.nan)
    table[gt_rows.frame - first, np.searchsorted(ids, gt_rows.ids)] = xywh_to_x1x2(gt_rows.boxes, size)
    dets = None
    if det_rows is not None:
        dets = {f: xywh_to_x1x2(det_rows.boxes[det_rows.frame == f], size) for f in np.unique(det_rows.frame)}
    out = []
    for s in range(first, last - length + 2, stride):
        block = table[s - first:s - first + length]
        eligible = np.flatnonzero(np.all(np.isfinite(block[..., 0]), axis=0))
        if len(eligible) < num_targets:
            continue
        combos = list(itertools.combinations(eligible.tolist(), num_targets))
        if len(combos) > subsets_per_window:
            pick = rng.choice(len(combos), size=subsets_per_window, replace=False)
            combos = [combos[i] for i in sorted(pick)]
        for combo in combos:
            gt = block[:, list(combo)]
            frames = np.arange(s, s + length)
            tag = f"{name}:s{s:03d}:ids{'-'.join(str(int(ids[c])) for c in combo)}"
            if dets is not None:
                obs = np.stack([_match_detections(gt[t], dets.get(int(f), np.zeros((0, 4))), det_min_iou)
                                for t, f in enumerate(frames)])
                if not np.all(np.isfinite(obs[0])):
                    continue
                if noise.shuffle:
                    perm = np.argsort(rng.random(obs.shape[:2]), axis=1)
                    obs = np.take_along_axis(obs, perm[..., None], axis=1)
                out.append(Window(obs, gt, ids[list(combo)], frames, tag + ":det"))
            else:
                for d in range(draws):
                    out.append(Window(simulate_detections(gt, rng, noise), gt, ids[list(combo)], frames,
                                      f"{tag}:d{d}"))
    return out


def tud_windows(length: int, *, num_targets: int = 3, stride: int = 10, subsets_per_window: int = 4,
                draws: int = 1, seed: int = 0, noise: DetectionNoise = DetectionNoise(),
                size=REFERENCE_SIZE, sequences=TUD_SEQUENCES) -> list[Window]:
    """Windows of the real TUD-Campus and TUD-Stadtmitte ground truth (simulated detections).

    TUD-Campus has 71 frames and TUD-Stadtmitte 179, so T = 300 yields no window (an empty list).
    """
    out = []
    for i, name in enumerate(sequences):
        out += windows_from_gt(load_tud_gt(name), length, num_targets=num_targets, stride=stride,
                               subsets_per_window=subsets_per_window, draws=draws, seed=seed + 7919 * i,
                               noise=noise, size=size, name=name)
    return out


def synthetic_windows(length: int, n_windows: int, *, num_targets: int = 3, seed: int = 0,
                      spread: float = 0.08, noise: DetectionNoise = DetectionNoise(),
                      config: SyntheticConfig | None = None) -> list[Window]:
    """Windows of N synthetic trajectories (:mod:`~vdvae_jax.tracking.synthetic`, length T) moved so that
    their first-frame boxes lie within ``spread`` (normalised units) of each other, so targets meet."""
    config = config or SyntheticConfig(length=length)
    rng = np.random.default_rng(seed)
    pool = np.zeros((0, length, 4))
    attempt = 0
    while len(pool) < n_windows * num_targets:
        pool = np.concatenate([pool, generate_trajectories(max(200, 3 * n_windows * num_targets),
                                                           seed + 31 * attempt, config)])
        attempt += 1
        if attempt > 50:
            raise RuntimeError(f"synthetic generator accepts too few trajectories of length {length}")
    out = []
    for i in range(n_windows):
        tr = pool[i * num_targets:(i + 1) * num_targets].copy()
        anchor = np.array([rng.uniform(0.2, 0.6), rng.uniform(0.3, 0.8)])
        for n in range(num_targets):
            shift = anchor + rng.uniform(-spread, spread, 2) - tr[n, 0, :2]
            tr[n] += np.array([shift[0], shift[1], shift[0], shift[1]])
        gt = np.swapaxes(tr, 0, 1)
        out.append(Window(simulate_detections(gt, rng, noise), gt, np.arange(1, num_targets + 1),
                          np.arange(1, length + 1), f"synthetic:T{length}:{i:03d}"))
    return out


def stack_windows(windows: list[Window]) -> tuple[np.ndarray, np.ndarray]:
    """``(obs (B, T, K, 4), gt (B, T, N, 4))`` of windows with equal shapes."""
    if not windows:
        raise ValueError("no windows")
    return np.stack([w.obs for w in windows]), np.stack([w.gt for w in windows])
