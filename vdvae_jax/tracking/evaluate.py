"""Tracking metrics: our own numpy-2-safe IoU distance fed to motmetrics accumulators.

``motmetrics.distances.iou_matrix`` calls ``np.asfarray``, removed in numpy 2, so the distance matrix
is computed here: for pixel boxes :math:`a, b` in (x, y, w, h),

.. math::
    \\mathrm{IoU}(a, b) = \\frac{|a \\cap b|}{|a| + |b| - |a \\cap b|}, \\qquad
    d(a, b) = 1 - \\mathrm{IoU}(a, b),\\ \\text{NaN (no match allowed) where } d > d_{max},

with :math:`d_{max}` = ``max_iou`` = 0.5 as in MixDVAE (motmetrics' own default is 1). A NaN box
gives NaN distances (and is left out of the frame).

Metrics (motmetrics' ``compute_many`` with an overall row): MOTA, MOTP in both conventions
(``motp`` = motmetrics' mean matched distance 1 - IoU, lower is better; ``motp_iou`` = 1 - motp, the
MOTChallenge convention, higher is better), IDF1, IDS (``num_switches``), FP, FN, MT, ML.

Hypothesis identities: ``"standard"`` (hypothesis n = source n, position m_tn, every frame) or
``"reference"`` (MixDVAE's ``tracking_evaluation_onebatch``: positions are the source means but the id of
column j is :math:`\\arg\\max_n \\eta_{tjn}`, the assignment of *observation* j, 0 for a missing
detection; ids may repeat and source swaps are undercounted, spec §7 item 10).
"""

from __future__ import annotations

import numpy as np

from vdvae_jax.tracking.io import REFERENCE_SIZE, x1x2_to_xywh

__all__ = [
    "METRICS",
    "iou_xywh",
    "iou_x1x2",
    "iou_distance",
    "reference_hyp_ids",
    "accumulate",
    "summarize",
    "evaluate_windows",
]

# motmetrics names -> our keys
METRICS = {
    "mota": "mota",
    "motp": "motp",
    "idf1": "idf1",
    "num_switches": "ids",
    "num_false_positives": "fp",
    "num_misses": "fn",
    "mostly_tracked": "mt",
    "mostly_lost": "ml",
    "num_objects": "gt",
}


def iou_xywh(a, b) -> np.ndarray:
    """IoU of pixel boxes ``a`` (M, 4) and ``b`` (N, 4) in (x, y, w, h) -> (M, N); NaN for NaN boxes."""
    a = np.asarray(a, np.float64).reshape(-1, 4)[:, None]
    b = np.asarray(b, np.float64).reshape(-1, 4)[None]
    ix = np.clip(np.minimum(a[..., 0] + a[..., 2], b[..., 0] + b[..., 2]) - np.maximum(a[..., 0], b[..., 0]),
                 0, None)
    iy = np.clip(np.minimum(a[..., 1] + a[..., 3], b[..., 1] + b[..., 3]) - np.maximum(a[..., 1], b[..., 1]),
                 0, None)
    inter = ix * iy
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    bad = np.isnan(a).any(-1) | np.isnan(b).any(-1)
    return np.where(bad, np.nan, out)


def iou_x1x2(a, b) -> np.ndarray:
    """IoU of normalised x1x2 boxes (any positive scale gives the same IoU)."""
    return iou_xywh(x1x2_to_xywh(a, (1.0, 1.0)), x1x2_to_xywh(b, (1.0, 1.0)))


def iou_distance(gt, hyp, max_iou: float = 0.5) -> np.ndarray:
    """motmetrics distance ``1 - IoU`` of pixel xywh boxes, NaN where ``> max_iou`` (no match)."""
    d = 1.0 - iou_xywh(gt, hyp)
    return np.where(d > max_iou, np.nan, d)


def reference_hyp_ids(eta) -> np.ndarray:
    """MixDVAE's hypothesis ids: argmax over sources of :math:`\\eta_{tk\\cdot}`, 0 for missing/NaN rows.

    eta: (T, K, N) -> (T, K) int.
    """
    eta = np.asarray(eta, np.float64)
    ok = np.all(np.isfinite(eta), axis=-1) & (np.sum(np.nan_to_num(eta), axis=-1) > 0)
    return np.where(ok, np.argmax(np.nan_to_num(eta, nan=-1.0), axis=-1), 0)


def accumulate(gt, hyp, *, size=REFERENCE_SIZE, max_iou: float = 0.5, hyp_ids=None, gt_ids=None):
    """A ``motmetrics.MOTAccumulator`` (auto frame ids) for one window.

    Args:
      gt: (T, N, 4) normalised x1x2 ground truth (NaN rows = absent object).
      hyp: (T, S, 4) hypotheses (NaN rows = no hypothesis).
      size: the normalisation size, to measure IoU in pixels (IoU is scale-invariant per axis anyway).
      hyp_ids: None (standard: id s for column s) or (T, S) ints (reference convention).
      gt_ids: optional (N,) ids.
    """
    import motmetrics as mm

    gt = np.asarray(gt, np.float64)
    hyp = np.asarray(hyp, np.float64)
    if gt.ndim != 3 or hyp.ndim != 3 or gt.shape[0] != hyp.shape[0]:
        raise ValueError(f"gt {gt.shape} and hyp {hyp.shape} must be (T, ., 4) with the same T "
                         f"(mismatched frame ranges)")
    gt_ids = np.arange(gt.shape[1]) if gt_ids is None else np.asarray(gt_ids)
    acc = mm.MOTAccumulator(auto_id=True)
    g_px, h_px = x1x2_to_xywh(gt, size), x1x2_to_xywh(hyp, size)
    for t in range(gt.shape[0]):
        g_ok = np.isfinite(g_px[t]).all(-1)
        h_ok = np.isfinite(h_px[t]).all(-1)
        ids = np.arange(hyp.shape[1]) if hyp_ids is None else np.asarray(hyp_ids[t])
        dist = iou_distance(g_px[t][g_ok], h_px[t][h_ok], max_iou)
        acc.update(gt_ids[g_ok].tolist(), ids[h_ok].tolist(), dist)
    return acc


def summarize(accs, names=None) -> dict:
    """``{name: {mota, motp, motp_iou, idf1, ids, fp, fn, mt, ml, gt}, ..., "OVERALL": {...}}``."""
    import motmetrics as mm

    names = names or [f"w{i}" for i in range(len(accs))]
    mh = mm.metrics.create()
    df = mh.compute_many(accs, metrics=list(METRICS), names=names, generate_overall=True)
    out = {}
    for name, row in df.iterrows():
        rec = {METRICS[k]: float(row[k]) for k in METRICS}
        for k in ("ids", "fp", "fn", "mt", "ml", "gt"):
            rec[k] = int(rec[k])
        rec["motp_iou"] = 1.0 - rec["motp"] if np.isfinite(rec["motp"]) else float("nan")
        out[str(name)] = rec
    return out


def evaluate_windows(gts, hyps, *, names=None, size=REFERENCE_SIZE, max_iou: float = 0.5,
                     hyp_ids=None) -> dict:
    """:func:`summarize` over windows (lists or stacked arrays of (T, ., 4)); ``hyp_ids`` per window."""
    accs = [accumulate(g, h, size=size, max_iou=max_iou, hyp_ids=None if hyp_ids is None else hyp_ids[i])
            for i, (g, h) in enumerate(zip(gts, hyps))]
    return summarize(accs, names)
