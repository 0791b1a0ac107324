"""Speech-quality metrics with the DVAE / DVAE-SE conventions.

Two kinds of functions live here:

* **Jittable** (``jax.numpy``, batched over leading dimensions, time on the last
  axis): :func:`si_sdr`, :func:`neg_si_sdr_loss`, :func:`rmse_scaled`. They never
  truncate: ``ref`` and ``est`` must have the same length (broadcastable leading
  dimensions). Callers cut both signals to the shorter length first, e.g. with
  :func:`align` (the DVAE evaluation scores the first ``min(len)`` samples).
* **Host** wrappers (numpy in, Python ``float`` out) around the reference packages:
  :func:`pesq_wb`, :func:`pesq_nb`, :func:`pesq_nb_raw` (``pesq`` package),
  :func:`stoi`, :func:`estoi` (``pystoi``), plus :func:`evaluate_pair`, which
  computes several metrics for one utterance and turns a per-utterance failure
  into ``NaN`` plus a recorded message instead of an exception.

PESQ variants (never mix them in one column):

* ``pesq_wb``: ITU-T P.862.2 wide-band MOS-LQO (``pesq(fs, ref, deg, 'wb')``).
* ``pesq_nb``: ITU-T P.862.1 narrow-band MOS-LQO (``pesq(fs, ref, deg, 'nb')``).
* ``pesq_nb_raw``: raw narrow-band P.862 MOS, i.e. what the unmaintained
  ``pypesq`` package returned and what the DVAE papers/README report as "PESQ".
  It is recovered from the P.862.1 score by inverting the P.862.1 mapping
  ``lqo = 0.999 + 4 / (1 + exp(-1.4945 raw + 4.6607))``, i.e.
  ``raw = (4.6607 - ln(4 / (lqo - 0.999) - 1)) / 1.4945``.

Aggregation follows the DVAE convention: median with a confidence half-width
``1.57 * IQR / sqrt(n)`` (:func:`aggregate`), and the mean.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np

__all__ = [
    "DEFAULT_METRICS",
    "MetricResult",
    "aggregate",
    "aggregate_table",
    "align",
    "estoi",
    "evaluate_pair",
    "neg_si_sdr_loss",
    "p862_1_inverse",
    "p862_1_mapping",
    "pesq_nb",
    "pesq_nb_raw",
    "pesq_wb",
    "rmse_scaled",
    "rtf",
    "si_sdr",
    "stoi",
]

DEFAULT_METRICS: tuple[str, ...] = (
    "rmse",
    "si_sdr",
    "pesq_wb",
    "pesq_nb",
    "pesq_nb_raw",
    "stoi",
    "estoi",
)

# P.862.1 mapping constants (raw P.862 MOS -> MOS-LQO).
_P862_1_A = 1.4945
_P862_1_B = 4.6607


# --------------------------------------------------------------------------- #
# Jittable metrics                                                            #
# --------------------------------------------------------------------------- #
def _si_sdr_impl(xp: Any, ref: Any, est: Any, eps: float) -> Any:
    dot = xp.sum(ref * est, axis=-1, keepdims=True)
    ref_energy = xp.sum(ref * ref, axis=-1, keepdims=True)
    a = (eps + dot) / (ref_energy + eps)
    e_target = a * ref
    e_res = est - e_target
    num = eps + xp.sum(e_target * e_target, axis=-1)
    den = eps + xp.sum(e_res * e_res, axis=-1)
    return 10.0 * xp.log10(num / den)


def _rmse_scaled_impl(xp: Any, ref: Any, est: Any) -> Any:
    alpha = xp.sum(est * ref, axis=-1, keepdims=True) / xp.sum(est * est, axis=-1, keepdims=True)
    return xp.sqrt(xp.mean((alpha * est - ref) ** 2, axis=-1))


def si_sdr(ref: Any, est: Any, *, eps: float | None = None) -> Any:
    r"""Scale-invariant signal-to-distortion ratio in dB (DVAE reference formula).

    With :math:`s` = ``ref`` and :math:`\hat s` = ``est`` (last axis = time)::

        a   = (eps + <s, ŝ>) / (<s, s> + eps)
        e_t = a s                      # target (projection of ŝ onto s)
        e_r = ŝ - e_t                  # residual
        SI-SDR = 10 log10((eps + ||e_t||²) / (eps + ||e_r||²))

    The reference (not the estimate) is scaled, no zero-mean pre-processing is
    applied, and ``eps`` in numerator and denominator keeps a silent reference
    finite (as in DVAE's ``compute_sisdr``). Higher is better.

    Jittable and differentiable; leading dimensions are batch dimensions (they
    broadcast). Nothing is truncated: both inputs must have the same length on the
    last axis — cut them first (:func:`align`).

    Args:
      ref: Reference signal(s), shape ``(..., T)``.
      est: Estimated signal(s), shape ``(..., T)``.
      eps: Regulariser. Defaults to the machine epsilon of the result dtype
        (``jnp.finfo(dtype).eps``; ``2.2e-16`` in float64 as in DVAE, ``1.2e-7``
        in float32).

    Returns:
      SI-SDR in dB, shape ``(...)``.
    """
    ref = jnp.asarray(ref)
    est = jnp.asarray(est)
    dtype = jnp.result_type(ref.dtype, est.dtype, jnp.float32)
    ref = ref.astype(dtype)
    est = est.astype(dtype)
    if eps is None:
        eps = float(jnp.finfo(dtype).eps)
    return _si_sdr_impl(jnp, ref, est, eps)


def neg_si_sdr_loss(ref: Any, est: Any, *, eps: float | None = None) -> Any:
    """Negative SI-SDR averaged over all leading dimensions (a loss: lower is better).

    ``loss = -mean(si_sdr(ref, est, eps=eps))``. Negative values are normal (they
    mean a positive SI-SDR). Jittable and differentiable.

    Args:
      ref: Reference signal(s), shape ``(..., T)``.
      est: Estimated signal(s), shape ``(..., T)``.
      eps: See :func:`si_sdr`.

    Returns:
      Scalar loss.
    """
    return -jnp.mean(si_sdr(ref, est, eps=eps))


def rmse_scaled(ref: Any, est: Any) -> Any:
    r"""Root-mean-square error after optimally scaling the estimate (DVAE ``RMSE``).

    ::

        α    = <ŝ, s> / <ŝ, ŝ>
        RMSE = sqrt(mean_t((α ŝ_t − s_t)²))

    Invariant to a (non-zero) rescaling of ``est``. An all-zero estimate gives
    ``NaN`` (``0/0``). Jittable; leading dimensions are batch dimensions. Nothing
    is truncated: inputs must have the same length (see :func:`align`).

    Args:
      ref: Reference signal(s) ``s``, shape ``(..., T)``.
      est: Estimated signal(s) ``ŝ``, shape ``(..., T)``.

    Returns:
      RMSE, shape ``(...)``.
    """
    ref = jnp.asarray(ref)
    est = jnp.asarray(est)
    dtype = jnp.result_type(ref.dtype, est.dtype, jnp.float32)
    return _rmse_scaled_impl(jnp, ref.astype(dtype), est.astype(dtype))


# --------------------------------------------------------------------------- #
# Host helpers                                                                #
# --------------------------------------------------------------------------- #
def align(ref: Any, est: Any) -> tuple[np.ndarray, np.ndarray]:
    """Cut two signals to their common (minimum) length on the last axis.

    This is the DVAE evaluation convention: metrics are computed on the first
    ``min(len(ref), len(est))`` samples (an iSTFT without ``length`` may return a
    few samples more or fewer than the input).

    Args:
      ref: Reference signal(s), shape ``(..., T1)``.
      est: Estimated signal(s), shape ``(..., T2)``.

    Returns:
      ``(ref[..., :T], est[..., :T])`` as numpy arrays with ``T = min(T1, T2)``.
    """
    ref = np.asarray(ref)
    est = np.asarray(est)
    n = min(ref.shape[-1], est.shape[-1])
    return ref[..., :n], est[..., :n]


def _as_pair(ref: Any, est: Any, *, need_signal: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Validate a single-utterance pair for the host metrics (1-D, same length, finite).

    With ``need_signal`` an all-zero reference is rejected (PESQ/STOI are undefined
    there; pystoi would silently return 0).
    """
    ref = np.asarray(ref, dtype=np.float64)
    est = np.asarray(est, dtype=np.float64)
    if ref.ndim != 1 or est.ndim != 1:
        raise ValueError(f"expected 1-D signals, got shapes {ref.shape} and {est.shape}")
    if ref.shape != est.shape:
        raise ValueError(
            f"length mismatch {ref.shape[0]} vs {est.shape[0]}; cut to the minimum length "
            "first (metrics.align)"
        )
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(est))):
        raise ValueError("non-finite (NaN/inf) samples in the input")
    if need_signal and not np.any(ref):
        raise ValueError("silent (all-zero) reference")
    return ref, est


def p862_1_mapping(raw: Any) -> Any:
    """ITU-T P.862.1 mapping from raw P.862 MOS to narrow-band MOS-LQO.

    ``lqo = 0.999 + 4 / (1 + exp(−1.4945 · raw + 4.6607))``.

    Args:
      raw: Raw P.862 score(s) (scalar or numpy array).

    Returns:
      MOS-LQO, same shape as ``raw``.
    """
    raw = np.asarray(raw, dtype=np.float64)
    out = 0.999 + 4.0 / (1.0 + np.exp(-_P862_1_A * raw + _P862_1_B))
    return float(out) if out.ndim == 0 else out


def p862_1_inverse(lqo: Any) -> Any:
    """Inverse of the P.862.1 mapping: narrow-band MOS-LQO → raw P.862 MOS.

    ``raw = (4.6607 − ln(4 / (lqo − 0.999) − 1)) / 1.4945``, defined for
    ``0.999 < lqo < 4.999`` (``NaN`` outside).

    Args:
      lqo: P.862.1 MOS-LQO score(s).

    Returns:
      Raw P.862 MOS, same shape as ``lqo``.
    """
    lqo = np.asarray(lqo, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        raw = (_P862_1_B - np.log(4.0 / (lqo - 0.999) - 1.0)) / _P862_1_A
    raw = np.where((lqo > 0.999) & (lqo < 4.999), raw, np.nan)
    return float(raw) if raw.ndim == 0 else raw


def _pesq(ref: Any, est: Any, sr: int, mode: str) -> float:
    from pesq import pesq as _pesq_fn  # imported lazily: optional C extension

    ref, est = _as_pair(ref, est, need_signal=True)
    # NB: the pesq package's argument order is (fs, ref, deg); pypesq's was (ref, deg, fs).
    return float(_pesq_fn(int(sr), ref, est, mode))


def pesq_wb(ref: Any, est: Any, sr: int) -> float:
    """Wide-band PESQ, ITU-T P.862.2 MOS-LQO (``pesq`` package, mode ``'wb'``).

    Args:
      ref: Clean reference, 1-D.
      est: Degraded / enhanced signal, 1-D, same length as ``ref``.
      sr: Sample rate; must be 16000 (no wide-band mode at 8 kHz). Resample
        other rates before calling.

    Returns:
      MOS-LQO (about 1.04 … 4.64).

    Raises:
      ValueError: Bad shapes, non-finite samples, all-zero reference or
        unsupported ``sr``.
      pesq.NoUtterancesError: No speech found (e.g. silent reference).
    """
    return _pesq(ref, est, sr, "wb")


def pesq_nb(ref: Any, est: Any, sr: int) -> float:
    """Narrow-band PESQ, ITU-T P.862.1 MOS-LQO (``pesq`` package, mode ``'nb'``).

    Args:
      ref: Clean reference, 1-D.
      est: Degraded / enhanced signal, 1-D, same length as ``ref``.
      sr: Sample rate, 8000 or 16000.

    Returns:
      MOS-LQO (about 1.02 … 4.55).

    Raises:
      ValueError: Bad shapes, non-finite samples, all-zero reference or
        unsupported ``sr``.
      pesq.NoUtterancesError: No speech found (e.g. silent reference).
    """
    return _pesq(ref, est, sr, "nb")


def pesq_nb_raw(ref: Any, est: Any, sr: int) -> float:
    """Raw narrow-band P.862 MOS (the "PESQ" of the DVAE papers, formerly ``pypesq``).

    Computed as :func:`p862_1_inverse` of :func:`pesq_nb`::

        raw = (4.6607 − ln(4 / (lqo − 0.999) − 1)) / 1.4945

    ``pypesq`` (which returned this number directly) no longer builds on current
    Python/numpy; the inversion reproduces it to about 1e-3.

    Args:
      ref: Clean reference, 1-D.
      est: Degraded / enhanced signal, 1-D, same length as ``ref``.
      sr: Sample rate, 8000 or 16000.

    Returns:
      Raw P.862 MOS (about −0.5 … 4.5).
    """
    return p862_1_inverse(pesq_nb(ref, est, sr))


class _TooFewFramesError(RuntimeError):
    pass


def _stoi(ref: Any, est: Any, sr: int, extended: bool) -> float:
    from pystoi import stoi as _stoi_fn

    ref, est = _as_pair(ref, est, need_signal=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(_stoi_fn(ref, est, int(sr), extended=extended))
    for w in caught:
        if "Not enough STFT frames" in str(w.message):
            # pystoi returns a meaningless 1e-5 in this case (mostly silent reference).
            raise _TooFewFramesError(f"pystoi: {w.message}")
    return value


def stoi(ref: Any, est: Any, sr: int) -> float:
    """Short-time objective intelligibility (classic STOI, ``pystoi`` ``extended=False``).

    Args:
      ref: Clean reference, 1-D.
      est: Degraded / enhanced signal, 1-D, same length as ``ref``.
      sr: Sample rate (pystoi resamples internally to 10 kHz).

    Returns:
      STOI in [0, 1] (roughly).

    Raises:
      ValueError: Bad shapes or non-finite samples.
      RuntimeError: Too few non-silent frames (pystoi would return 1e-5).

    An all-zero reference raises ``ValueError`` (pystoi would return 0).
    """
    return _stoi(ref, est, sr, extended=False)


def estoi(ref: Any, est: Any, sr: int) -> float:
    """Extended STOI (``pystoi`` ``extended=True``; the DVAE code's "STOI" default).

    Args:
      ref: Clean reference, 1-D.
      est: Degraded / enhanced signal, 1-D, same length as ``ref``.
      sr: Sample rate.

    Returns:
      ESTOI (can be slightly negative for very poor signals).

    Raises:
      ValueError: Bad shapes, non-finite samples or an all-zero reference.
      RuntimeError: Too few non-silent frames.
    """
    return _stoi(ref, est, sr, extended=True)


def _np_rmse(ref: np.ndarray, est: np.ndarray, sr: int) -> float:
    ref, est = _as_pair(ref, est)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(_rmse_scaled_impl(np, ref, est))


def _np_si_sdr(ref: np.ndarray, est: np.ndarray, sr: int) -> float:
    ref, est = _as_pair(ref, est)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(_si_sdr_impl(np, ref, est, float(np.finfo(np.float64).eps)))


_METRIC_FNS: dict[str, Callable[[np.ndarray, np.ndarray, int], float]] = {
    "rmse": _np_rmse,
    "si_sdr": _np_si_sdr,
    "pesq_wb": pesq_wb,
    "pesq_nb": pesq_nb,
    "pesq_nb_raw": pesq_nb_raw,
    "stoi": stoi,
    "estoi": estoi,
}


class MetricResult(NamedTuple):
    """Per-utterance metric values and the failures that turned some into ``NaN``.

    Attributes:
      values: ``{metric name: float}``; a failed metric is ``NaN``.
      failures: Human-readable messages, ``"<metric>: <ExceptionType>: <message>"``.
    """

    values: dict[str, float]
    failures: list[str]


def evaluate_pair(
    ref: Any,
    est: Any,
    sr: int,
    metrics: Sequence[str] = DEFAULT_METRICS,
) -> MetricResult:
    """Compute several metrics for one (reference, estimate) utterance pair.

    Both signals are first cut to their common length (:func:`align`). ``rmse``
    and ``si_sdr`` are computed in float64 with the float64 machine epsilon, as in
    the DVAE evaluation scripts. A metric that fails on this utterance (e.g.
    ``pesq.NoUtterancesError`` on a silent reference, too few frames for STOI,
    NaN input, a non-finite result) yields ``NaN`` and a message in
    ``failures``; this function never raises for a per-utterance failure.
    ``pesq_nb_raw`` reuses the ``pesq_nb`` score when both are requested.
    ``rmse`` and ``si_sdr`` stay finite on an all-zero reference (DVAE ``eps``
    behaviour: ``rmse = 0``, ``si_sdr`` very negative, e.g. −186 dB), whereas
    PESQ/STOI/ESTOI fail.

    Args:
      ref: Clean reference, 1-D.
      est: Estimate, 1-D.
      sr: Sample rate (PESQ needs 8000 or 16000, wide-band PESQ 16000).
      metrics: Names among :data:`DEFAULT_METRICS`.

    Returns:
      :class:`MetricResult` ``(values, failures)``.

    Raises:
      ValueError: An unknown metric name (a caller error, not a per-utterance one).
    """
    unknown = [m for m in metrics if m not in _METRIC_FNS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; choose from {sorted(_METRIC_FNS)}")
    ref, est = align(ref, est)
    values: dict[str, float] = {}
    failures: list[str] = []
    for name in metrics:
        try:
            if name == "pesq_nb_raw" and "pesq_nb" in values and math.isfinite(values["pesq_nb"]):
                value = p862_1_inverse(values["pesq_nb"])
            else:
                value = float(_METRIC_FNS[name](ref, est, sr))
            if not math.isfinite(value):
                raise FloatingPointError(f"non-finite result {value}")
        except Exception as exc:  # noqa: BLE001 - per-utterance failures are recorded
            value = float("nan")
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
        values[name] = value
    return MetricResult(values, failures)


# --------------------------------------------------------------------------- #
# Aggregation                                                                 #
# --------------------------------------------------------------------------- #
def aggregate(values: Iterable[float]) -> dict[str, float]:
    """Summarise per-utterance values: mean, median and the DVAE confidence interval.

    Over the finite values ``x_1..x_m`` (``m = n − n_failed``)::

        ci = 1.57 · (Q3 − Q1) / sqrt(m)        # "median ± ci" (DVAE compute_median)

    with linearly interpolated quartiles (``np.quantile``). Non-finite values
    (``NaN`` from failed metrics, ±inf) are counted in ``n_failed`` and excluded.

    Args:
      values: Per-utterance values.

    Returns:
      ``{"n", "n_failed", "mean", "median", "ci"}``; the statistics are ``NaN``
      when no finite value is left.
    """
    x = np.asarray(list(values), dtype=np.float64).reshape(-1)
    finite = x[np.isfinite(x)]
    m = finite.size
    out: dict[str, float] = {"n": int(x.size), "n_failed": int(x.size - m)}
    if m == 0:
        out.update(mean=float("nan"), median=float("nan"), ci=float("nan"))
        return out
    q75, q25 = np.quantile(finite, [0.75, 0.25])
    out.update(
        mean=float(np.mean(finite)),
        median=float(np.median(finite)),
        ci=float(1.57 * (q75 - q25) / np.sqrt(m)),
    )
    return out


def aggregate_table(rows: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Aggregate a list of per-utterance metric dicts, metric by metric.

    A metric missing from a row counts as a failure (``NaN``) for that row.

    Args:
      rows: E.g. ``[evaluate_pair(r, e, sr).values for r, e in pairs]``.

    Returns:
      ``{metric: aggregate(column)}``, metrics in first-seen order.
    """
    rows = list(rows)
    names: list[str] = []
    for row in rows:
        names.extend(k for k in row if k not in names)
    return {k: aggregate(row.get(k, float("nan")) for row in rows) for k in names}


def rtf(processing_seconds: float, audio_seconds: float) -> float:
    """Real-time factor ``RTF = processing time / audio duration`` (< 1: faster than real time).

    Args:
      processing_seconds: Wall-clock processing time.
      audio_seconds: Duration of the processed audio.

    Returns:
      The real-time factor.

    Raises:
      ValueError: ``audio_seconds <= 0``.
    """
    if audio_seconds <= 0:
        raise ValueError(f"audio_seconds must be positive, got {audio_seconds}")
    return float(processing_seconds) / float(audio_seconds)
