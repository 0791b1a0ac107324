"""Multi-object tracking with MixDVAE: data (synthetic trajectories, TUD windows, MOTChallenge files),
the tracker, baselines (nearest neighbour, VKF), motmetrics evaluation, CLI subcommands and plots.

Modules: :mod:`~vdvae_jax.tracking.io`, :mod:`~vdvae_jax.tracking.synthetic`,
:mod:`~vdvae_jax.tracking.windows`, :mod:`~vdvae_jax.tracking.baselines`,
:mod:`~vdvae_jax.tracking.tracker`, :mod:`~vdvae_jax.tracking.evaluate`,
:mod:`~vdvae_jax.tracking.pretrain`, :mod:`~vdvae_jax.tracking.cli`, :mod:`~vdvae_jax.tracking.plots`.
"""

from vdvae_jax.tracking.baselines import (DEFAULT_KALMAN, KalmanParams, fit_kalman_params,
                                          kalman_source_update, nearest_neighbour_track)
from vdvae_jax.tracking.evaluate import accumulate, evaluate_windows, iou_xywh, summarize
from vdvae_jax.tracking.io import MOTFormatError, detections_to_array, read_mot, write_mot
from vdvae_jax.tracking.synthetic import generate_trajectories, synthetic_dataset
from vdvae_jax.tracking.tracker import TrackOptions, track
from vdvae_jax.tracking.windows import DetectionNoise, Window, synthetic_windows, tud_windows

__all__ = [
    "DEFAULT_KALMAN", "KalmanParams", "fit_kalman_params", "kalman_source_update", "nearest_neighbour_track",
    "accumulate", "evaluate_windows", "iou_xywh", "summarize",
    "MOTFormatError", "detections_to_array", "read_mot", "write_mot",
    "generate_trajectories", "synthetic_dataset", "TrackOptions", "track",
    "DetectionNoise", "Window", "synthetic_windows", "tud_windows",
]
