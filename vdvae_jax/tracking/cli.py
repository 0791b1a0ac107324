"""Command-line subcommands ``track`` and ``evaluate-mot`` (wired into ``python -m vdvae_jax``).

``track --det DET.txt --num-targets N --out TRACKS.txt [--image-size W H] [--prior PATH]
[--method mixdvae|mixdvae-reference|vkf|nn] [--iterations I] [--seed S]``

reads MOTChallenge detections of one window with N targets (frames first..last of the file; order
within a frame carries no identity), seeds the N sources with the N most confident detections of the
first frame, tracks, and writes one row per source and frame (id n+1 for source n). ``--image-size``
is the normalisation of pixel boxes (default 1920 1080: the frame the default prior's synthetic
training data lives in; keep it for any image size unless the prior was trained otherwise). Without
``--prior`` the default prior of :func:`vdvae_jax.tracking.pretrain.default_prior` is used (trained on
first use, cached); ``--prior`` takes a ``save_model`` ``.npz`` or a published ``model_mot.pt``.

``evaluate-mot --gt GT.txt --tracks TRACKS.txt --out FILE.json [--image-size W H] [--max-iou D]``
writes motmetrics MOTA, MOTP (both conventions), IDF1, IDS, FP, FN, MT, ML. Frames of the tracks must
lie within the ground truth's frame range (else a "frame range mismatch" error).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["add_subcommands", "run_track", "run_evaluate_mot", "load_prior", "METHODS"]

METHODS = ("mixdvae", "mixdvae-reference", "vkf", "nn")


def add_subcommands(subparsers) -> None:
    """Add ``track`` and ``evaluate-mot`` to an ``argparse`` subparsers object (each sets ``func``)."""
    t = subparsers.add_parser("track", help="multi-object tracking of MOTChallenge detections (MixDVAE)")
    t.add_argument("--det", required=True, help="MOTChallenge detections of one window")
    t.add_argument("--num-targets", type=int, required=True, help="number of targets N")
    t.add_argument("--out", required=True, help="output MOTChallenge tracks file")
    t.add_argument("--image-size", type=float, nargs=2, metavar=("W", "H"), default=None,
                   help="normalisation size of pixel boxes (default 1920 1080)")
    t.add_argument("--prior", default=None, help="MOT SRNN (.npz from save_model or published .pt)")
    t.add_argument("--method", default="mixdvae", choices=METHODS)
    t.add_argument("--iterations", type=int, default=None, help="VEM iterations (default per method)")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=run_track)
    e = subparsers.add_parser("evaluate-mot", help="CLEAR-MOT / ID metrics of tracks against ground truth")
    e.add_argument("--gt", required=True)
    e.add_argument("--tracks", required=True)
    e.add_argument("--out", required=True, help="JSON file")
    e.add_argument("--image-size", type=float, nargs=2, metavar=("W", "H"), default=None)
    e.add_argument("--max-iou", type=float, default=0.5, help="largest 1 - IoU distance matched")
    e.set_defaults(func=run_evaluate_mot)


def load_prior(path=None, log=print):
    """``(model, params)`` of the MOT SRNN at ``path`` (``.npz``/``.pt``) or the cached default prior."""
    if path is None:
        from vdvae_jax.tracking.pretrain import default_prior
        return default_prior(log=log)
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no prior at {path}")
    if path.suffix == ".pt":
        from vdvae_jax.models.published import load_published_mixdvae
        return load_published_mixdvae(path)
    from vdvae_jax.models.io import load_model
    model, params = load_model(path)
    if model.name != "srnn_mot":
        raise ValueError(f"{path}: a {model.name!r} model, the tracker needs 'srnn_mot'")
    return model, params


def _size(args):
    from vdvae_jax.tracking.io import REFERENCE_SIZE
    size = tuple(args.image_size) if args.image_size else REFERENCE_SIZE
    if min(size) <= 0:
        raise ValueError(f"--image-size must be positive, got {size}")
    return size


def run_track(args) -> int:
    import jax

    from vdvae_jax.tracking.baselines import nearest_neighbour_track
    from vdvae_jax.tracking.io import detections_to_array, read_mot, tracks_to_rows, write_mot
    from vdvae_jax.tracking.tracker import TrackOptions, track

    size = _size(args)
    obs, frames = detections_to_array(read_mot(args.det), args.num_targets, size=size, source=args.det)
    if args.method == "nn":
        tracks = nearest_neighbour_track(obs, args.num_targets)
    else:
        options = {"mixdvae": TrackOptions(), "vkf": TrackOptions.vkf(),
                   "mixdvae-reference": TrackOptions.reference()}[args.method]
        if args.iterations is not None:
            options = dataclasses.replace(options, n_iter=args.iterations)
        if args.method == "vkf":
            model_config, params = None, None
        else:
            model, params = load_prior(args.prior, log=lambda m: print(m, file=sys.stderr))
            model_config = model.config
        out = track(params, model_config, obs, num_sources=args.num_targets, options=options,
                    key=jax.random.key(args.seed))
        tracks = out.tracks[0]
    if not np.all(np.isfinite(tracks)):
        raise RuntimeError("the tracker produced non-finite boxes")
    rows = tracks_to_rows(tracks, frames, size)
    write_mot(args.out, rows.frame, rows.ids, rows.boxes, rows.conf)
    print(f"wrote {len(rows)} rows ({len(frames)} frames x {args.num_targets} tracks) to {args.out}")
    return 0


def run_evaluate_mot(args) -> int:
    from vdvae_jax.tracking.evaluate import accumulate, summarize
    from vdvae_jax.tracking.io import MOTFormatError, read_mot, rows_to_tracks

    size = _size(args)
    gt_rows, hyp_rows = read_mot(args.gt), read_mot(args.tracks)
    first, last = int(gt_rows.frame.min()), int(gt_rows.frame.max())
    outside = (hyp_rows.frame < first) | (hyp_rows.frame > last)
    if np.any(outside):
        raise MOTFormatError(f"frame range mismatch: {args.tracks} has frames "
                             f"{np.unique(hyp_rows.frame[outside])[:5].tolist()} outside the ground truth's "
                             f"{first}..{last}")
    frames = np.arange(first, last + 1)
    gt, gt_ids = rows_to_tracks(gt_rows.select(gt_rows.conf != 0), frames, size)
    hyp, _ = rows_to_tracks(hyp_rows, frames, size)
    acc = accumulate(gt, hyp, size=size, max_iou=args.max_iou, gt_ids=gt_ids)
    result = summarize([acc], [Path(args.tracks).name])
    report = {"gt": str(args.gt), "tracks": str(args.tracks), "max_iou": args.max_iou,
              "frames": [first, last], "metrics": result["OVERALL"]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    m = result["OVERALL"]
    print(f"MOTA {m['mota']:.3f}  IDF1 {m['idf1']:.3f}  IDS {m['ids']}  FP {m['fp']}  FN {m['fn']}  "
          f"MOTP(IoU) {m['motp_iou']:.3f}")
    return 0
