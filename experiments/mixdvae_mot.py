"""MixDVAE multi-object tracking: pre-train the MOT SRNN on synthetic trajectories (cached), then compare
MixDVAE, VKF and nearest neighbour on synthetic windows and on real TUD windows for T = 60 / 120 / 300.

    PYTHONPATH=. python experiments/mixdvae_mot.py --out runs/mixdvae_mot          # full run
    PYTHONPATH=. python experiments/mixdvae_mot.py --smoke --out /tmp/mot_smoke      # < 60 s

Methods (``--methods``):

* ``nn``: Hungarian nearest neighbour on box centres (:func:`~vdvae_jax.tracking.baselines.nearest_neighbour_track`);
* ``vkf``: the tracking VEM with the constant-velocity Kalman smoother as source model;
* ``mixdvae``: the default ``track`` (:class:`~vdvae_jax.tracking.tracker.TrackOptions`: exclusive E-W,
  filter initialisation, estimated Φ, DVAE x constant-velocity source prior);
* ``mixdvae_es``: the same VEM with MixDVAE's own E-S (DVAE decoder recursion only) and Φ fixed (with the
  ρ M-step, this forward-only E-S and Φ inflate each other: TUD T = 60 MOTA fell below 0);
* ``mixdvae_ref``: the published algorithm (``TrackOptions.reference()``: generic VEM, E-W temperature
  0.008, chunked piecewise-constant initialisation, Φ of frame 0 fixed, 70 iterations, sampled z),
  evaluated with the standard ids and with the reference's ids (``mixdvae_ref/refids``).

Windows: synthetic (3 generated trajectories started close together, simulated detections) and TUD
(:func:`~vdvae_jax.tracking.windows.tud_windows`: real TUD-Campus / TUD-Stadtmitte ground truth, 3
targets, 6 % box noise, 15 % misses, occlusion bursts of 5-12 frames, shuffled detections). TUD has at
most 179 frames, so T = 300 has synthetic windows only. Writes ``results.json``, ``results.md`` and a
trajectory plot into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vdvae_jax.runtime import configure_cpu  # noqa: E402
from vdvae_jax.tracking.baselines import nearest_neighbour_track  # noqa: E402
from vdvae_jax.tracking.evaluate import evaluate_windows, reference_hyp_ids  # noqa: E402
from vdvae_jax.tracking.pretrain import PretrainConfig, default_prior  # noqa: E402
from vdvae_jax.tracking.tracker import TrackOptions, track  # noqa: E402
from vdvae_jax.tracking.windows import stack_windows, synthetic_windows, tud_windows  # noqa: E402

METHODS = ("nn", "vkf", "mixdvae", "mixdvae_es", "mixdvae_ref")
SMOKE_PRETRAIN = PretrainConfig(n_train_attempts=800, n_val_attempts=300, epochs=2, batch_size=64,
                                warmup_epochs=1, ss_start=1, ss_end=2)


def options_for(method: str, n_iter: int | None) -> TrackOptions:
    opt = {"vkf": TrackOptions.vkf(), "mixdvae": TrackOptions(),
           "mixdvae_es": TrackOptions(source_model="dvae", phi_update="fixed"),
           "mixdvae_ref": TrackOptions.reference()}[method]
    return opt if n_iter is None else dataclasses.replace(opt, n_iter=n_iter)


def run_method(method, windows, model, params, n_iter, seed):
    obs, gt = stack_windows(windows)
    names = [w.name for w in windows]
    t0 = time.perf_counter()
    if method == "nn":
        tracks = np.stack([nearest_neighbour_track(w.obs) for w in windows])
        eta = None
    else:
        out = track(params, model.config, obs, options=options_for(method, n_iter), key=jax.random.key(seed))
        tracks, eta = out.tracks, out.eta
    seconds = time.perf_counter() - t0
    res = {method: {**evaluate_windows(gt, tracks, names=names)["OVERALL"], "seconds": seconds}}
    if method == "mixdvae_ref":
        ids = [reference_hyp_ids(e) for e in eta]
        res[method + "/refids"] = {**evaluate_windows(gt, tracks, names=names, hyp_ids=ids)["OVERALL"],
                                   "seconds": seconds}
    return res, tracks


def prior_diagnostics(model, params, windows_by_name: dict) -> dict:
    """How well the DVAE explains clean trajectories: mean |error| per coordinate of its reconstruction
    (encoder mean z from the true boxes, decoder on teacher-forced h, frames >= 1), its predicted std, and
    the one-step constant-velocity prediction error 2 x_{t-1} - x_{t-2} - x_t for comparison."""
    import jax.numpy as jnp

    from vdvae_jax.models.srnn_mixdvae import decoder_from_h, encoder_for

    out = {}
    for name, trajs in windows_by_name.items():
        x = jnp.asarray(np.swapaxes(trajs, 0, 1), jnp.float32)                 # (T, M, 4)
        z, _, h = encoder_for(model.config)(params, x, {"z": jnp.zeros(x.shape[:-1] + (model.config.z_dim,))})
        dec = decoder_from_h(params, model.config, z, h)
        out[name] = {
            "dvae_recon_abs_err": np.asarray(jnp.abs(dec.mean - x)[1:].mean((0, 1))).round(6).tolist(),
            "dvae_std": np.asarray(jnp.exp(0.5 * dec.logvar)[1:].mean((0, 1))).round(6).tolist(),
            "cv_pred_abs_err": np.asarray(jnp.abs(2 * x[1:-1] - x[:-2] - x[2:]).mean((0, 1))).round(6).tolist(),
            "trajectories": int(x.shape[1]),
        }
    return out


def markdown(results: dict) -> str:
    lines = []
    for data_name, per_t in results.items():
        lines += [f"### {data_name}", "",
                  "| T | windows | method | MOTA | IDF1 | IDS | FP | FN | MOTP (IoU) | MT | ML | s |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for T, block in per_t.items():
            for method, m in block["methods"].items():
                lines.append(f"| {T} | {block['windows']} | {method} | {m['mota']:.3f} | {m['idf1']:.3f} | "
                             f"{m['ids']} | {m['fp']} | {m['fn']} | {m['motp_iou']:.3f} | {m['mt']} | {m['ml']} | "
                             f"{m['seconds']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    configure_cpu()   # before the first JAX computation (see vdvae_jax.runtime)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/mixdvae_mot"))
    ap.add_argument("--lengths", type=int, nargs="+", default=[60, 120, 300])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--synthetic-windows", type=int, default=32, help="synthetic windows per T")
    ap.add_argument("--tud-draws", type=int, default=1, help="detection simulations per TUD window")
    ap.add_argument("--iterations", type=int, default=None, help="override VEM iterations of every method")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prior", default=None,
                    help="MOT SRNN to use instead of the default pre-trained one (.npz from save_model, or "
                         "the published model_mot.pt)")
    ap.add_argument("--smoke", action="store_true", help="tiny prior, few windows, T = 60, < 60 s")
    ap.add_argument("--diagnostics-only", action="store_true",
                    help="only the prior's reconstruction error vs constant velocity (T = 60 windows)")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    if args.smoke:
        args.lengths, args.synthetic_windows = [60], 4
        args.methods = [m for m in args.methods if m != "mixdvae_ref"]
        args.iterations = 2 if args.iterations is None else args.iterations
    if args.prior:
        from vdvae_jax.tracking.cli import load_prior
        model, params = load_prior(args.prior)
    else:
        model, params = default_prior(SMOKE_PRETRAIN if args.smoke else PretrainConfig())
    tud60 = tud_windows(60, draws=1, seed=args.seed)
    trajs = {"TUD": np.concatenate([np.swapaxes(w.gt, 0, 1) for w in tud60]),
             "synthetic": np.concatenate([np.swapaxes(w.gt, 0, 1) for w in synthetic_windows(60, 16, seed=1)])}
    diagnostics = prior_diagnostics(model, params, trajs)
    print("prior diagnostics (x1, y1, x2, y2):", json.dumps(diagnostics))
    if args.diagnostics_only:
        return 0
    results: dict = {"synthetic": {}, "TUD": {}}
    plotted = False
    for T in args.lengths:
        sets = {"synthetic": synthetic_windows(T, args.synthetic_windows, seed=args.seed + T),
                "TUD": tud_windows(T, draws=args.tud_draws, seed=args.seed)}
        if args.smoke:
            sets["TUD"] = sets["TUD"][:4]
        for data_name, windows in sets.items():
            if not windows:
                print(f"{data_name} T={T}: no window (sequence too short)")
                continue
            block = {"windows": len(windows), "methods": {}}
            tracks_by = {}
            for method in args.methods:
                res, tr = run_method(method, windows, model, params, args.iterations, args.seed)
                block["methods"].update(res)
                tracks_by[method] = tr
                m = res[method]
                print(f"{data_name:9s} T={T:3d} {method:12s} MOTA {m['mota']:.3f} IDF1 {m['idf1']:.3f} "
                      f"IDS {m['ids']:4d} FP {m['fp']:5d} FN {m['fn']:5d} ({m['seconds']:.1f} s)", flush=True)
            results[data_name][T] = block
            if data_name == "TUD" and not plotted:
                from vdvae_jax.tracking.plots import trajectories
                w = windows[0]
                fig = trajectories(w.gt, w.obs, {k: v[0] for k, v in tracks_by.items() if k in ("nn", "mixdvae")},
                                   title=w.name)
                args.out.mkdir(parents=True, exist_ok=True)
                fig.savefig(args.out / "tud_window.png", dpi=110)
                plotted = True
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"argv": sys.argv, "prior": args.prior or "default", "jax": jax.__version__,
            "seconds": time.perf_counter() - t_start,
            "pretrain": dataclasses.asdict(SMOKE_PRETRAIN if args.smoke else PretrainConfig()),
            "prior_diagnostics": diagnostics}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))
    print(f"total {time.perf_counter() - t_start:.1f} s; wrote {args.out}/results.json and results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
