"""Analysis-resynthesis of held-out speech through a trained DVAE (the DVAE papers' benchmark).

    python experiments/eval_resynthesis.py --workdir runs/train_rvae            # default corpus, test
    python experiments/eval_resynthesis.py --workdir runs/train_srnn --data /path/to/wavs --max-utts 50

Each test utterance is trimmed, peak-normalised, run whole through the model (stochastic z; SRNN
teacher-forced as the reference evaluates it, ``--use-pred 1`` for generation mode) and resynthesised
with the original phase. Writes ``resynthesis/metrics.json`` (per-file rows + mean, median ± 1.57 IQR/sqrt(n)
of RMSE, SI-SDR, PESQ (wb, nb MOS-LQO, nb raw P.862), STOI, ESTOI), ``resynthesis/spectrograms.png`` and
the first WAVs.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from common import load_split_waves, run_info, write_json  # noqa: E402
from vdvae_jax.data.audio import save_wav  # noqa: E402
from vdvae_jax.evaluation import prepare_utterance, resynthesize  # noqa: E402
from vdvae_jax.metrics import aggregate, evaluate_pair  # noqa: E402
from vdvae_jax.models.io import load_model  # noqa: E402
from vdvae_jax.plots import spectrograms  # noqa: E402

METRICS = ("rmse", "si_sdr", "pesq_wb", "pesq_nb", "pesq_nb_raw", "stoi", "estoi")


def evaluate(workdir: Path, *, data: str = "default", split: str = "test", max_utts: int | None = None,
             seed: int = 0, use_pred: float | None = None, metrics=METRICS, n_wavs: int = 3,
             progress: bool = True) -> dict:
    model, params = load_model(workdir / "model.npz")
    mode = {"use_pred": use_pred} if use_pred is not None else {}
    if model.name == "srnn_ss" and use_pred is None:
        mode = {"use_pred": 1.0}
    waves = [prepare_utterance(w) for w in load_split_waves(data, split, seed=seed, max_files=max_utts)]
    t0 = time.perf_counter()
    estimates = resynthesize(model, params, waves, jax.random.key(seed), **mode)
    seconds = time.perf_counter() - t0
    rows, failures = [], []
    for i, (ref, est) in enumerate(tqdm(list(zip(waves, estimates)), desc="metrics", disable=not progress)):
        res = evaluate_pair(ref, est, 16000, metrics)
        rows.append({"index": i, **res.values})
        failures += [f"utterance {i}: {f}" for f in res.failures]
    summary = {m: aggregate([r[m] for r in rows]) for m in metrics}
    out = workdir / "resynthesis"
    for i in range(min(n_wavs, len(waves))):
        save_wav(out / f"{i:03d}_original.wav", waves[i])
        save_wav(out / f"{i:03d}_resynth.wav", estimates[i])
    if waves:
        spectrograms([waves[0], estimates[0]], ["original", f"{model.name} resynthesis"]).savefig(
            out / "spectrograms.png", dpi=100)
    audio_s = sum(len(w) for w in waves) / 16000
    result = {"model": model.name, "mode": mode, "n_utterances": len(waves), "summary": summary,
              "failures": failures, "resynthesis_seconds": seconds, "audio_seconds": audio_s,
              "rows": rows, **run_info(seed)}
    write_json(out / "metrics.json", result)
    return result


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True, help="a train_dvae.py workdir (model.npz)")
    ap.add_argument("--data", default="default")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-utts", type=int, default=None)
    ap.add_argument("--use-pred", type=float, default=None, help="SRNN-ss: 1 = generation mode")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if not (args.workdir / "model.npz").is_file():
        raise SystemExit(f"{args.workdir}/model.npz not found: train first with experiments/train_dvae.py")
    res = evaluate(args.workdir, data=args.data, split=args.split,
                   max_utts=2 if args.smoke else args.max_utts, seed=args.seed, use_pred=args.use_pred,
                   progress=not args.smoke)
    for m, agg in res["summary"].items():
        print(f"{m:12s} mean {agg['mean']:8.3f}  median {agg['median']:8.3f} ± {agg['ci']:.3f}  "
              f"(n={agg['n']}, failed={agg['n_failed']})")


if __name__ == "__main__":
    main()
