"""Quickstart: build the embedded speech corpus, train three DVAEs briefly, compare their resynthesis.

    python experiments/quickstart.py                 # about 6 minutes on 2 CPU cores
    python experiments/quickstart.py --epochs 40     # longer training

Trains the frame-wise VAE, the non-causal RVAE and the teacher-forced SRNN (reference speech sizes,
networks reading log-power inputs; DVAE-master loss: IS divergence + KL with beta = 1 after a 5-epoch
linear warm-up; Adam 5e-3, batch 32) for the same number of epochs each on the default corpus's training
speakers (about four minutes of CPU in all), then evaluates analysis-resynthesis on all held-out test
speakers (SRNN teacher-forced, as the reference evaluates it) and prints a table (written to
``runs/quickstart/results.json`` with the per-model run folders: ``model.npz``, ``training.png``,
``resynthesis/``). ``--preset speech`` uses the reference's raw-power network inputs instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import spectrogram_split, write_json  # noqa: E402
from eval_resynthesis import evaluate  # noqa: E402
from train_dvae import train  # noqa: E402
from vdvae_jax.data import build_default_corpus  # noqa: E402
from vdvae_jax.train import TrainConfig  # noqa: E402

MODELS = ("vae", "rvae", "srnn")
COLUMNS = ("si_sdr", "rmse", "pesq_wb", "estoi")
METRICS = COLUMNS  # eval_resynthesis.py adds PESQ narrow-band (MOS-LQO and raw P.862) and STOI


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("runs/quickstart"))
    ap.add_argument("--epochs", type=int, default=20, help="training epochs per model (same for all)")
    ap.add_argument("--budget", type=float, default=None, help="optional wall-clock cap per model (s)")
    ap.add_argument("--max-utts", type=int, default=None, help="test utterances evaluated (default all)")
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--beta", type=float, default=1.0, help="KL weight (1: DVAE master, 0.01: DVAE_SE)")
    ap.add_argument("--preset", default="speech+log", help="model preset(s), see experiments/common.py")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="seconds-long run for the test suite")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    corpus = build_default_corpus(args.seed)
    print(f"corpus: {corpus.root} ({len(corpus.utterances())} utterances)", flush=True)
    max_files = 8 if args.smoke else None
    data = (spectrogram_split("default", "train", 50, seed=args.seed, max_files=max_files),
            spectrogram_split("default", "val", 50, seed=args.seed, max_files=max_files))
    cfg = TrainConfig(lr=args.lr, beta=args.beta, batch_size=32, epochs=args.epochs, warmup_epochs=5, patience=20,
                      seed=args.seed, checkpoint_every=500)
    if args.smoke:
        cfg = dataclasses.replace(cfg, batch_size=8, epochs=1, warmup_epochs=1)
    results = {}
    for name in MODELS:
        run = args.workdir / name
        shutil.rmtree(run, ignore_errors=True)  # the quickstart always trains afresh
        summary = train(name, run, preset=args.preset, train_cfg=cfg, datasets=data,
                        time_budget_s=None if args.smoke else args.budget, progress=not args.smoke)
        ev = evaluate(run, max_utts=2 if args.smoke else args.max_utts, seed=args.seed,
                      metrics=METRICS, progress=not args.smoke)
        results[name] = {"train": summary, "resynthesis": ev["summary"]}
    header = f"{'model':8s}" + "".join(f"{c:>14s}" for c in COLUMNS) + f"{'epochs':>8s}"
    lines = [header]
    for name, res in results.items():
        cells = "".join(f"{res['resynthesis'][c]['median']:9.3f}±{res['resynthesis'][c]['ci']:.2f}"
                        for c in COLUMNS)
        lines.append(f"{name:8s}{cells}{res['train']['epochs']:8d}")
    table = "\n".join(lines)
    print("\nresynthesis of held-out speakers (median ± 1.57 IQR/sqrt(n)):\n" + table)
    write_json(args.workdir / "results.json", {"results": results, "table": table,
                                               "seconds": time.perf_counter() - t0})
    print(f"total {time.perf_counter() - t0:.0f} s; results in {args.workdir}/results.json")


if __name__ == "__main__":
    main()
