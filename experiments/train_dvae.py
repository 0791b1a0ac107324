"""Train any registered DVAE on power spectrograms of clean speech.

    python experiments/train_dvae.py --model rvae                       # default corpus, speech sizes
    python experiments/train_dvae.py --model srnn --data /path/to/wavs --epochs 100
    python experiments/train_dvae.py --model vae --smoke                # seconds, for the test suite

Writes into ``--workdir``: ``config.json``, ``metrics.jsonl`` (one line per epoch), ``checkpoints/``
(orbax; a killed run resumes from the last one when started again with the same workdir),
``model.npz`` (best parameters + config, loadable with ``vdvae_jax.models.io.load_model``),
``metrics.json`` and ``training.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import optax  # noqa: E402

from common import preset_overrides, run_info, spectrogram_split, write_json  # noqa: E402
from vdvae_jax import models  # noqa: E402
from vdvae_jax.models.io import save_model  # noqa: E402
from vdvae_jax.plots import training_curves  # noqa: E402
from vdvae_jax.train import TrainConfig, fit, init_train_state, make_eval_step, make_train_step  # noqa: E402


def train(model_name: str, workdir: Path, *, data: str = "default", preset: str = "speech",
          train_cfg: TrainConfig = TrainConfig(), seq_len: int = 50, max_files: int | None = None,
          time_budget_s: float | None = None, progress: bool = True, datasets=None) -> dict:
    """Train one model; returns a summary dict (also written to ``workdir/metrics.json``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    model = models.build(model_name, **preset_overrides(model_name, preset))
    if datasets is None:
        datasets = (spectrogram_split(data, "train", seq_len, seed=train_cfg.seed, max_files=max_files),
                    spectrogram_split(data, "val", seq_len, seed=train_cfg.seed, max_files=max_files))
    train_x, val_x = datasets
    key = jax.random.key(train_cfg.seed)
    params = model.init(jax.random.fold_in(key, 0), train_x[0])
    print(f"{model_name}: {models.count_params(params):,} parameters; {len(train_x)} train / "
          f"{len(val_x)} val sequences of {seq_len} frames; config {model.config}", flush=True)
    write_json(workdir / "config.json", {"model": model_name, "model_config": model.config,
                                         "train_config": train_cfg, "data": data, **run_info(train_cfg.seed)})
    optimizer = optax.adam(train_cfg.lr)
    state = init_train_state(params, optimizer)
    train_step = jax.jit(make_train_step(model, optimizer, time_major=True), donate_argnums=(0,))
    eval_step = jax.jit(make_eval_step(model, time_major=True))
    t0 = time.perf_counter()
    state, stopper, history = fit(train_step=train_step, eval_step=eval_step, state=state,
                                  train_data=train_x, val_data=val_x, config=train_cfg,
                                  key=jax.random.fold_in(key, 1), workdir=workdir,
                                  use_ss=getattr(model.config, "scheduled_sampling", False), progress=progress,
                                  time_budget_s=time_budget_s, time_major=True)
    seconds = time.perf_counter() - t0
    save_model(workdir / "model.npz", model, stopper.best_params)
    training_curves({model_name: history}).savefig(workdir / "training.png", dpi=100)
    summary = {"model": model_name, "epochs": len(history), "best_epoch": stopper.best_epoch,
               "best_val_loss": stopper.best_loss, "train_seconds": seconds,
               "params": models.count_params(params), "steps": int(state.step)}
    write_json(workdir / "metrics.json", summary)
    return summary


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="rvae", choices=sorted(models.REGISTRY))
    ap.add_argument("--data", default="default",
                    help="'default' corpus, a WAV folder, 'wsj0:ROOT' or 'voicebank:ROOT'")
    ap.add_argument("--preset", default="speech",
                    help="speech (reference sizes), small, log (log-power network inputs); combine with +")
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--beta", type=float, default=0.01)
    ap.add_argument("--kl-warmup", default="linear", choices=["linear", "steps", "none"])
    ap.add_argument("--warmup-epochs", type=int, default=50)
    ap.add_argument("--patience", type=int, default=30)
    ap.add_argument("--seq-len", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny run (a few files, 2 epochs)")
    args = ap.parse_args(argv)
    workdir = args.workdir or Path("runs") / f"train_{args.model}"
    cfg = TrainConfig(lr=args.lr, beta=args.beta, batch_size=args.batch_size, epochs=args.epochs,
                      patience=args.patience, kl_warmup=args.kl_warmup, warmup_epochs=args.warmup_epochs,
                      seed=args.seed)
    max_files = None
    if args.smoke:
        cfg = dataclasses.replace(cfg, batch_size=8, epochs=2, warmup_epochs=1, checkpoint_every=5)
        max_files, args.preset = 6, "small"
    summary = train(args.model, workdir, data=args.data, preset=args.preset, train_cfg=cfg,
                    seq_len=args.seq_len, max_files=max_files, progress=not args.smoke)
    print(summary)


if __name__ == "__main__":
    main()
