"""MOTChallenge text files and the box conventions of MixDVAE tracking.

A MOTChallenge row is ``frame, id, x, y, w, h, conf, X, Y, Z`` (1-based frames, pixel boxes with top-left
corner ``(x, y)``; only the first six columns are required, ``conf`` defaults to 1). Detection files
carry no identity: their ``id`` column is ignored and the order of the rows within a frame means nothing.

Inside the library boxes are **"x1x2" normalised** as in the reference (spec §1.2/§2.5): with a
normalisation size ``(W, H)`` (1920 x 1080 unless told otherwise, the frame the MOT SRNN's synthetic
training data lives in),

.. math::
    (x_1, y_1, x_2, y_2) = (x / W,\\ y / H,\\ (x + w) / W,\\ (y - h) / H),

so :math:`y_2 = y_1 - h/H` (the reference's y flip; IoU is unaffected as long as it is undone the same
way). Missing detections are NaN rows in arrays handed to numpy code and an explicit mask in JAX code.

Bad input raises :class:`MOTFormatError` (a ``ValueError``) naming the file and line: malformed rows
(fewer than 6 fields, non-numeric fields), NaN or infinite boxes, non-positive widths/heights,
non-integer frames or frames < 1; :func:`detections_to_array` also rejects a first frame with fewer
detections than targets and detections outside a requested frame range.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = [
    "MOTFormatError",
    "MOTRows",
    "REFERENCE_SIZE",
    "read_mot",
    "parse_mot",
    "write_mot",
    "xywh_to_x1x2",
    "x1x2_to_xywh",
    "detections_to_array",
    "tracks_to_rows",
    "rows_to_tracks",
]

REFERENCE_SIZE = (1920.0, 1080.0)


class MOTFormatError(ValueError):
    """A MOTChallenge file or array that cannot be used (the message says where and why)."""


class MOTRows(NamedTuple):
    """Rows of a MOTChallenge file: ``frame`` (R,) int, ``ids`` (R,) int, ``boxes`` (R, 4) pixel xywh,
    ``conf`` (R,) float."""

    frame: np.ndarray
    ids: np.ndarray
    boxes: np.ndarray
    conf: np.ndarray

    def __len__(self):
        return int(self.frame.shape[0])

    def select(self, keep: np.ndarray) -> "MOTRows":
        return MOTRows(self.frame[keep], self.ids[keep], self.boxes[keep], self.conf[keep])


def parse_mot(text: str, source: str = "<string>") -> MOTRows:
    """Parse MOTChallenge CSV text (comma- or whitespace-separated); see the module docstring for errors."""
    frames, ids, boxes, conf = [], [], [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f for f in line.replace(",", " ").split()]
        if len(fields) < 6:
            raise MOTFormatError(f"{source}:{lineno}: malformed row (need at least 6 fields "
                                 f"frame,id,x,y,w,h; got {len(fields)}): {line!r}")
        try:
            values = [float(f) for f in fields[:7]]
        except ValueError:
            raise MOTFormatError(f"{source}:{lineno}: malformed row (non-numeric field): {line!r}") from None
        frame, ident, box = values[0], values[1], values[2:6]
        if not math.isfinite(frame) or frame != int(frame) or frame < 1:
            raise MOTFormatError(f"{source}:{lineno}: frame must be an integer >= 1, got {fields[0]!r}")
        if not all(math.isfinite(v) for v in box):
            raise MOTFormatError(f"{source}:{lineno}: NaN or infinite box {fields[2:6]}")
        if box[2] <= 0 or box[3] <= 0:
            raise MOTFormatError(f"{source}:{lineno}: box width and height must be > 0, got {fields[4:6]}")
        frames.append(int(frame))
        ids.append(int(ident) if math.isfinite(ident) else -1)
        boxes.append(box)
        c = values[6] if len(values) > 6 else 1.0
        conf.append(c if math.isfinite(c) else 1.0)
    if not frames:
        raise MOTFormatError(f"{source}: no rows")
    return MOTRows(np.asarray(frames, np.int64), np.asarray(ids, np.int64),
                   np.asarray(boxes, np.float64).reshape(-1, 4), np.asarray(conf, np.float64))


def read_mot(path) -> MOTRows:
    """Read a MOTChallenge file (``gt.txt``, ``det.txt`` or tracker output)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no MOTChallenge file at {path}")
    return parse_mot(path.read_text(), str(path))


def write_mot(path, frame, ids, boxes, conf=None) -> None:
    """Write rows ``frame, id, x, y, w, h, conf, -1, -1, -1`` (boxes pixel xywh, (R, 4))."""
    frame = np.asarray(frame, np.int64)
    ids = np.asarray(ids, np.int64)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    conf = np.ones(len(frame)) if conf is None else np.asarray(conf, np.float64)
    if not (len(frame) == len(ids) == len(boxes) == len(conf)):
        raise ValueError("frame, ids, boxes and conf must have the same number of rows")
    if not np.all(np.isfinite(boxes)):
        raise MOTFormatError("refusing to write NaN or infinite boxes")
    lines = [f"{f},{i},{b[0]:.3f},{b[1]:.3f},{b[2]:.3f},{b[3]:.3f},{c:.4g},-1,-1,-1"
             for f, i, b, c in zip(frame, ids, boxes, conf)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + ("\n" if lines else ""))


def xywh_to_x1x2(boxes, size=REFERENCE_SIZE) -> np.ndarray:
    """Pixel ``(x, y, w, h)`` -> normalised ``(x1, y1, x2, y2)`` with ``y2 = y1 - h/H`` (NaN passes)."""
    b = np.asarray(boxes, np.float64)
    W, H = float(size[0]), float(size[1])
    return np.stack([b[..., 0] / W, b[..., 1] / H, (b[..., 0] + b[..., 2]) / W,
                     (b[..., 1] - b[..., 3]) / H], axis=-1)


def x1x2_to_xywh(boxes, size=REFERENCE_SIZE) -> np.ndarray:
    """Inverse of :func:`xywh_to_x1x2`."""
    b = np.asarray(boxes, np.float64)
    W, H = float(size[0]), float(size[1])
    return np.stack([b[..., 0] * W, b[..., 1] * H, (b[..., 2] - b[..., 0]) * W,
                     (b[..., 1] - b[..., 3]) * H], axis=-1)


def detections_to_array(rows: MOTRows, num_targets: int, *, size=REFERENCE_SIZE, frames=None,
                        max_per_frame: int | None = None, source: str = "detections"):
    """Detections of one window as a padded array.

    Frames run from the first to the last frame present (or ``frames = (first, last)``, inclusive);
    frames without detections are all-missing. A frame with more than ``max_per_frame`` (default
    ``num_targets``) detections keeps the ones of highest confidence (the MixDVAE model has no clutter
    class). Within a frame the file order is kept.

    Returns:
      ``(obs, frame_numbers)``: obs (T, K, 4) normalised x1x2 with NaN rows for missing detections,
      K = ``max_per_frame``; frame_numbers (T,) int.

    Raises:
      MOTFormatError: fewer detections than ``num_targets`` in the first frame (the sources are
      initialised from it), or detections outside ``frames``.
    """
    if num_targets < 1:
        raise ValueError(f"num_targets must be >= 1, got {num_targets}")
    k = num_targets if max_per_frame is None else int(max_per_frame)
    if k < num_targets:
        raise ValueError(f"max_per_frame={k} < num_targets={num_targets}")
    first, last = (int(rows.frame.min()), int(rows.frame.max())) if frames is None else map(int, frames)
    if last < first:
        raise ValueError(f"empty frame range {first}..{last}")
    outside = (rows.frame < first) | (rows.frame > last)
    if np.any(outside):
        bad = np.unique(rows.frame[outside])
        raise MOTFormatError(f"{source}: frame range mismatch: detections on frames {bad[:5].tolist()} "
                             f"outside the window {first}..{last}")
    T = last - first + 1
    obs = np.full((T, k, 4), np.nan)
    t_idx = rows.frame - first
    n_first = int(np.sum(t_idx == 0))
    if n_first < num_targets:
        raise MOTFormatError(f"{source}: the first frame ({first}) has {n_first} detection(s) but "
                             f"{num_targets} targets; MixDVAE initialises one source per detection of "
                             f"the first frame (trim the window to start where every target is detected)")
    boxes = xywh_to_x1x2(rows.boxes, size)
    order = np.lexsort((-rows.conf, t_idx))          # by frame, then by decreasing confidence
    slot = np.zeros(T, np.int64)
    picked = np.zeros(len(rows), bool)
    for r in order:                                    # R rows; cheap bookkeeping, not numerics
        t = t_idx[r]
        if slot[t] < k:
            picked[r] = True
            slot[t] += 1
    for t in range(T):                                 # keep the file order inside a frame
        rows_t = np.flatnonzero(picked & (t_idx == t))
        obs[t, :len(rows_t)] = boxes[rows_t]
    return obs, np.arange(first, last + 1)


def tracks_to_rows(tracks, frame_numbers, size=REFERENCE_SIZE, ids=None) -> MOTRows:
    """(T, N, 4) normalised x1x2 tracks -> MOTChallenge rows (id n+1 for source n, every frame)."""
    tracks = np.asarray(tracks, np.float64)
    T, N, _ = tracks.shape
    ids = np.arange(1, N + 1) if ids is None else np.asarray(ids)
    frame = np.repeat(np.asarray(frame_numbers), N)
    boxes = x1x2_to_xywh(tracks, size).reshape(-1, 4)
    return MOTRows(frame.astype(np.int64), np.tile(ids, T).astype(np.int64), boxes, np.ones(T * N))


def rows_to_tracks(rows: MOTRows, frame_numbers, size=REFERENCE_SIZE):
    """MOTChallenge rows with identities -> ``(boxes (T, M, 4) x1x2 with NaN where absent, ids (M,))``."""
    frame_numbers = np.asarray(frame_numbers)
    ids = np.unique(rows.ids)
    out = np.full((len(frame_numbers), len(ids), 4), np.nan)
    t_idx = np.searchsorted(frame_numbers, rows.frame)
    ok = (t_idx < len(frame_numbers)) & (frame_numbers[np.minimum(t_idx, len(frame_numbers) - 1)] == rows.frame)
    col = np.searchsorted(ids, rows.ids)
    out[t_idx[ok], col[ok]] = xywh_to_x1x2(rows.boxes[ok], size)
    return out, ids
