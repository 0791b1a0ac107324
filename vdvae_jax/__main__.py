"""Command line: ``python -m vdvae_jax {enhance,evaluate,track,evaluate-mot} ...``.

    python -m vdvae_jax enhance --prior PRIOR --noisy DIR --out DIR [--method nmf] [--config default]
    python -m vdvae_jax evaluate --clean DIR --estimate DIR [--noisy DIR] --out FILE.json [--allow-unpaired]

``enhance`` writes one WAV per input WAV (same relative name). ``--config default`` (the default) is
the "do no harm" enhancer of :data:`vdvae_jax.enhance.DEFAULT`; ``vb``, ``wsj`` and
``enhance-defaults`` run the reference SE-VEM with its authors' settings. A file that fails (wrong
sample rate, NaN samples, silence, unreadable) is reported on stderr with its name and the rest of the
folder is still processed; the exit status is 1 if any file failed. A prior that cannot be used
(missing, corrupt, weights that do not fit its config) stops the command with status 2 and a message
naming the first mismatching parameter.

``evaluate`` pairs files by relative path and writes per-file and aggregate SI-SDR, RMSE, PESQ (wb, nb,
nb raw), STOI and ESTOI, plus improvements over the noisy input when ``--noisy`` is given. Folders
that do not pair up are an error (status 2) listing the unmatched names per folder, unless
``--allow-unpaired``: then the pairs present in every folder are evaluated and the unmatched names are
listed on stderr and under ``"unmatched"`` in the JSON. A file that cannot be evaluated (unreadable,
clean and estimate at different sample rates, NaN samples...) is listed under ``"failures"`` and the
others are still evaluated; the exit status is then 1.

``track`` and ``evaluate-mot`` (multi-object tracking with MixDVAE) are documented in
:mod:`vdvae_jax.tracking.cli`.

Subcommands are registered in :data:`COMMANDS` (``name -> (help, add_arguments, run)``); add new ones there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

__all__ = ["main", "COMMANDS"]


def _fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


# ------------------------------------------------------------------------------------- enhance
def _add_enhance(e: argparse.ArgumentParser) -> None:
    from vdvae_jax.enhance import METHODS, PRESETS

    e.add_argument("--prior", required=True, help="published DVAE_SE folder/.pt or a model.npz")
    e.add_argument("--noisy", required=True, help="folder of noisy 16 kHz WAVs")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--method", default="nmf", choices=METHODS,
                   help="noise model: nmf (SE-VEM), or a deep noise model lv/no/nolv fitted per file (U-NA)")
    e.add_argument("--config", default=None, choices=sorted(PRESETS),
                   help="--method nmf only. default: do-no-harm settings; vb/wsj/enhance-defaults: the "
                        "reference SE-VEM")
    e.add_argument("--niter", type=int, default=None,
                   help="override the number of VEM iterations (nmf) or Adam steps (lv/no/nolv)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--quiet", action="store_true")


def _enhance(args) -> int:
    import jax
    from tqdm.auto import tqdm

    from vdvae_jax.data.audio import load_wav, save_wav
    from vdvae_jax.data.datasets import wav_folder
    from vdvae_jax.enhance import DDGM_DEFAULT, PRESETS, EnhanceConfig, enhance, load_prior

    if args.method != "nmf" and args.config is not None:
        return _fail(f"--config {args.config} is for --method nmf; {args.method} uses DDGM_DEFAULT "
                     "(change its steps with --niter)")
    config = DDGM_DEFAULT if args.method != "nmf" else PRESETS[args.config or "default"]
    if args.niter is not None:
        if isinstance(config, EnhanceConfig):
            config = dataclasses.replace(config, vem=dataclasses.replace(config.vem, n_iter=args.niter))
        else:
            config = dataclasses.replace(config, n_iter=args.niter)
    try:
        prior = load_prior(args.prior)
        root = Path(args.noisy)
        files = wav_folder(root)
    except (OSError, ValueError) as err:  # FileNotFoundError, PriorError
        return _fail(str(err))
    failures = []
    for i, path in enumerate(tqdm(files, desc="enhance", unit="file", disable=args.quiet)):
        rel = path.relative_to(root)
        try:
            x = load_wav(path)
            y = enhance(x, 16000, prior, method=args.method, config=config, name=str(path),
                        key=jax.random.fold_in(jax.random.key(args.seed), i))
            save_wav(Path(args.out) / rel, y)
        except (ValueError, OSError, RuntimeError) as err:  # AudioError is a ValueError
            failures.append(f"{rel}: {err}")
    print(f"enhanced {len(files) - len(failures)} of {len(files)} files into {args.out}")
    for line in failures:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failures else 0


# ------------------------------------------------------------------------------------ evaluate
def _add_evaluate(v: argparse.ArgumentParser) -> None:
    v.add_argument("--clean", required=True)
    v.add_argument("--estimate", required=True)
    v.add_argument("--noisy", default=None)
    v.add_argument("--out", required=True)
    v.add_argument("--allow-unpaired", action="store_true",
                   help="evaluate the pairs that exist instead of failing on unmatched names")


def _load_pair(paths: dict[str, Path]):
    """Loads the 16 kHz files of one name; different sample rates are an error naming both."""
    import soundfile as sf

    from vdvae_jax.data.audio import AudioError, load_wav

    rates = {}
    for role, p in paths.items():
        try:
            rates[role] = sf.info(str(p)).samplerate
        except Exception as err:  # noqa: BLE001 - soundfile's errors vary by format
            raise AudioError(f"{p}: unreadable audio file ({err})") from None
    if len(set(rates.values())) > 1:
        raise AudioError("sample rates differ: " + ", ".join(f"{role} {paths[role]} at {r} Hz"
                                                             for role, r in rates.items()))
    return {role: load_wav(p) for role, p in paths.items()}


def _evaluate(args) -> int:
    from vdvae_jax.data.datasets import wav_folder
    from vdvae_jax.metrics import aggregate, evaluate_pair

    try:
        folders = {"clean": Path(args.clean), "estimate": Path(args.estimate)}
        if args.noisy:
            folders["noisy"] = Path(args.noisy)
        index = {role: {p.relative_to(f).as_posix(): p for p in wav_folder(f)} for role, f in folders.items()}
    except OSError as err:
        return _fail(str(err))
    common = set.intersection(*(set(v) for v in index.values()))
    unmatched = {role: sorted(set(v) - common) for role, v in index.items() if set(v) - common}
    if unmatched:
        listing = "; ".join(f"only in {role} ({folders[role]}): {names[:10]}"
                            f"{' ...' if len(names) > 10 else ''}" for role, names in unmatched.items())
        if not args.allow_unpaired or not common:
            return _fail(f"{'/'.join(folders)} folders do not pair up ({len(common)} common names); "
                         f"{listing}" + ("" if args.allow_unpaired else "; use --allow-unpaired to "
                                         "evaluate the common names only"))
        print(f"warning: evaluating {len(common)} common names; {listing}", file=sys.stderr)
    rows, failures, warnings = [], [], []
    for name in sorted(common):
        try:
            wav = _load_pair({role: index[role][name] for role in folders})
            res = evaluate_pair(wav["clean"], wav["estimate"], 16000)
            row = {"file": name, **res.values}
            if "noisy" in wav:
                base = evaluate_pair(wav["clean"], wav["noisy"], 16000, ("si_sdr", "pesq_wb", "estoi"))
                row.update({f"{k}_input": v for k, v in base.values.items()})
                row.update({f"{k}_improvement": row[k] - v for k, v in base.values.items()})
            warnings += [f"{name}: {f}" for f in res.failures]
            rows.append(row)
        except (ValueError, OSError, RuntimeError) as err:
            failures.append(f"{name}: {err}")
    keys = [k for k in (rows[0] if rows else {}) if k != "file"]
    summary = {k: aggregate([r[k] for r in rows]) for k in keys}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows, "failures": failures,
                                          "metric_failures": warnings, "unmatched": unmatched}, indent=2))
    for k in ("si_sdr", "si_sdr_improvement", "pesq_wb", "estoi"):
        if k in summary:
            print(f"{k:20s} median {summary[k]['median']:8.3f} ± {summary[k]['ci']:.3f} (n={summary[k]['n']})")
    print(f"evaluated {len(rows)} of {len(common)} files into {args.out}")
    for line in failures:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failures else 0


#: ``name -> (help, add_arguments(parser), run(args) -> exit status)``.
COMMANDS = {
    "enhance": ("enhance every WAV of a folder with a DVAE prior", _add_enhance, _enhance),
    "evaluate": ("metrics of enhanced files against clean references", _add_evaluate, _evaluate),
}


def main(argv=None) -> int:
    from vdvae_jax.runtime import configure_cpu

    configure_cpu()   # before the first JAX computation (see vdvae_jax.runtime)
    ap = argparse.ArgumentParser(prog="python -m vdvae_jax", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    for name, (help_, add, _) in COMMANDS.items():
        add(sub.add_parser(name, help=help_))
    from vdvae_jax.tracking.cli import add_subcommands as add_tracking

    add_tracking(sub)  # track, evaluate-mot (each sets ``func``)
    args = ap.parse_args(argv)
    if getattr(args, "func", None) is not None:
        return args.func(args)
    return COMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
