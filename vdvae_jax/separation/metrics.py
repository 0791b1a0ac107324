"""Per-source separation metrics (spec §3.2): RMSE after optimal scaling, SI-SDR, wide-band PESQ.

Thin wrappers over :func:`vdvae_jax.metrics.evaluate_pair` (float64 RMSE/SI-SDR with the DVAE epsilon,
``pesq`` wide-band at 16 kHz, computed for the flute too as the reference does; a per-item failure is
NaN plus a message, never an exception).
"""

from __future__ import annotations

import numpy as np

from vdvae_jax.metrics import aggregate, evaluate_pair

__all__ = ["SEPARATION_METRICS", "evaluate_sources", "summarise"]

SEPARATION_METRICS = ("si_sdr", "pesq_wb", "rmse")


def evaluate_sources(refs: np.ndarray, ests: np.ndarray, sr: int = 16000,
                     metrics=SEPARATION_METRICS) -> tuple[dict[str, np.ndarray], list[str]]:
    """Metrics of ``ests`` against ``refs``, both (M, S, L) time-domain.

    Returns ``({metric: (M, S) array}, failures)``; failures are ``"item m source n: message"``.
    """
    refs, ests = np.asarray(refs, np.float64), np.asarray(ests, np.float64)
    if refs.ndim != 3 or refs.shape[:2] != ests.shape[:2]:
        raise ValueError(f"refs and ests must be (M, S, L) with equal M, S; got {refs.shape}, {ests.shape}")
    out = {k: np.full(refs.shape[:2], np.nan) for k in metrics}
    failures = []
    for m in range(refs.shape[0]):
        for n in range(refs.shape[1]):
            res = evaluate_pair(refs[m, n], ests[m, n], sr, metrics)
            for k in metrics:
                out[k][m, n] = res.values[k]
            failures += [f"item {m} source {n}: {f}" for f in res.failures]
    return out, failures


def summarise(values: dict[str, np.ndarray], source_names) -> dict[str, dict[str, dict[str, float]]]:
    """``{source: {metric: aggregate(...)}}`` (n, n_failed, mean, median, CI half-width; NaNs excluded)."""
    return {name: {k: aggregate(values[k][:, n]) for k in values}
            for n, name in enumerate(source_names)}
