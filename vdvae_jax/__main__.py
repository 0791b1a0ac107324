"""Command line: ``python -m vdvae_jax enhance ...`` and ``python -m vdvae_jax evaluate ...``.

    python -m vdvae_jax enhance --prior PRIOR --noisy DIR --out DIR [--method nmf] [--config vb]
    python -m vdvae_jax evaluate --clean DIR --estimate DIR [--noisy DIR] --out FILE.json

``enhance`` writes one WAV per input WAV (same relative name); a file that fails (wrong sample rate,
NaN samples, silence, unreadable) is reported and the rest of the folder is still processed; the exit
status is 1 if any file failed. ``evaluate`` pairs files by relative path and writes per-file and
aggregate SI-SDR, RMSE, PESQ (wb, nb, nb raw), STOI and ESTOI, plus improvements over the noisy input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _enhance(args) -> int:
    import jax
    from tqdm.auto import tqdm

    from vdvae_jax.data.audio import load_wav, save_wav
    from vdvae_jax.data.datasets import wav_folder
    from vdvae_jax.enhance import PRESETS, enhance, load_prior

    config = PRESETS[args.config]
    if args.niter is not None:
        config = dataclasses.replace(config, n_iter=args.niter)
    prior = load_prior(args.prior)
    root = Path(args.noisy)
    files = wav_folder(root)
    failures = []
    for i, path in enumerate(tqdm(files, desc="enhance", unit="file", disable=args.quiet)):
        rel = path.relative_to(root)
        try:
            x = load_wav(path)
            y = enhance(x, 16000, prior, method=args.method, config=config,
                        key=jax.random.fold_in(jax.random.key(args.seed), i))
            save_wav(Path(args.out) / rel, y)
        except (ValueError, OSError) as err:  # AudioError is a ValueError
            failures.append(f"{rel}: {err}")
    print(f"enhanced {len(files) - len(failures)} of {len(files)} files into {args.out}")
    for line in failures:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failures else 0


def _evaluate(args) -> int:
    from vdvae_jax.data.audio import load_wav
    from vdvae_jax.data.datasets import wav_folder
    from vdvae_jax.metrics import aggregate, evaluate_pair

    def index(folder):
        return {p.relative_to(folder).as_posix(): p for p in wav_folder(folder)}

    clean, est = index(Path(args.clean)), index(Path(args.estimate))
    noisy = index(Path(args.noisy)) if args.noisy else None
    missing = sorted(set(clean) ^ set(est)) + (sorted(set(clean) ^ set(noisy)) if noisy else [])
    if missing:
        raise SystemExit(f"clean/estimate{'/noisy' if noisy else ''} folders do not pair up; "
                         f"unmatched: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    rows, failures = [], []
    for name in sorted(clean):
        try:
            ref = load_wav(clean[name])
            res = evaluate_pair(ref, load_wav(est[name]), 16000)
            row = {"file": name, **res.values}
            if noisy:
                base = evaluate_pair(ref, load_wav(noisy[name]), 16000, ("si_sdr", "pesq_wb", "estoi"))
                row.update({f"{k}_input": v for k, v in base.values.items()})
                row.update({f"{k}_improvement": row[k] - v for k, v in base.values.items()})
            failures += [f"{name}: {f}" for f in res.failures]
            rows.append(row)
        except ValueError as err:
            failures.append(f"{name}: {err}")
    keys = [k for k in (rows[0] if rows else {}) if k != "file"]
    summary = {k: aggregate([r[k] for r in rows]) for k in keys}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows, "failures": failures}, indent=2))
    for k in ("si_sdr", "si_sdr_improvement", "pesq_wb", "estoi"):
        if k in summary:
            print(f"{k:20s} median {summary[k]['median']:8.3f} ± {summary[k]['ci']:.3f} (n={summary[k]['n']})")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vdvae_jax", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    e = sub.add_parser("enhance", help="enhance every WAV of a folder with a DVAE prior")
    e.add_argument("--prior", required=True, help="published DVAE_SE folder/.pt or a model.npz")
    e.add_argument("--noisy", required=True, help="folder of noisy 16 kHz WAVs")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--method", default="nmf", help="noise model (nmf)")
    e.add_argument("--config", default="vb", choices=["vb", "wsj", "enhance-defaults"])
    e.add_argument("--niter", type=int, default=None, help="override the number of VEM iterations")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--quiet", action="store_true")
    v = sub.add_parser("evaluate", help="metrics of enhanced files against clean references")
    v.add_argument("--clean", required=True)
    v.add_argument("--estimate", required=True)
    v.add_argument("--noisy", default=None)
    v.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    return _enhance(args) if args.command == "enhance" else _evaluate(args)


if __name__ == "__main__":
    sys.exit(main())
