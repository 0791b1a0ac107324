"""Do-no-harm check of speech enhancement on real recordings (issue "Unsupervised speech enhancement").

Builds (``--build``) the small real noisy set of :mod:`vdvae_jax.data.real` (fillets-ng Czech and
Asterisk English voices x MegaGlest / sonic-pi / music-on-hold noise at -5, 0, 5, 10 dB; needs
``apt-get download`` once, cached in ``~/.cache/vdvae_jax/real_noisy``), then enhances every file
with the published VoiceBank RVAE prior under

* ``reference``: the reference SE-VEM with its authors' VoiceBank settings (``PRESETS["vb"]``);
* ``smooth``: :data:`vdvae_jax.enhance.SMOOTH`, the previous default (smoothed NMF noise only);
* ``default``: :data:`vdvae_jax.enhance.DEFAULT`, the default of :func:`vdvae_jax.enhance.enhance`
  (``smooth`` plus tonal noise components, with the fall-back to ``smooth`` when one follows the voice);

and writes the per-file table (file, SNR, noise type, speaker, noisy SI-SDR, SI-SDR gain of each
setting) as ``real_noisy.md`` and ``real_noisy.json`` in ``--out``. Per-setting results are cached in
``--out/cache_<setting>.json`` (delete to recompute). ``--synthetic N`` also checks the settings on
``N`` test utterances of the default corpus mixed with white and babble noise at 0 and 5 dB.

    python experiments/real_noisy.py --build --out runs/real_noisy
    python experiments/real_noisy.py --out runs/real_noisy --synthetic 3
    # in parallel: --shard 0/3 ... --shard 2/3 (optionally --only default), then once without --shard
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vdvae_jax.data.audio import load_wav  # noqa: E402
from vdvae_jax.data.real import RealDataError, build_real_noisy_set, load_manifest  # noqa: E402
from vdvae_jax.enhance import PRESETS, enhance, load_prior  # noqa: E402
from vdvae_jax.metrics import si_sdr  # noqa: E402
from vdvae_jax.runtime import configure_cpu  # noqa: E402

SETTINGS = {"reference": "vb", "smooth": "smooth", "default": "default"}
VB_RVAE = Path(__file__).resolve().parents[2] / "shared/reference/checkpoints/dvae_se/vb_rvae"


def _gain(clean, noisy, est) -> tuple[float, float]:
    base = float(si_sdr(clean, noisy))
    return base, float(si_sdr(clean, est)) - base


def run_setting(name: str, items, load, prior, cache: Path, *, seed: int = 0,
                shard: tuple[int, int] = (0, 1)) -> dict:
    """``{file: {"noisy_si_sdr", "gain", "seconds"}}`` for one setting, cached in ``cache`` (and read
    from every ``cache*.json`` beside it, so shards ``(i, n)`` can run in separate processes)."""
    done = {}
    for f in sorted(cache.parent.glob(cache.stem + "*.json")):
        done.update(json.loads(f.read_text()))
    if shard != (0, 1):
        cache = cache.with_name(f"{cache.stem}_shard{shard[0]}of{shard[1]}.json")
    for i, it in enumerate(items):
        if it["file"] in done or i % shard[1] != shard[0]:
            continue
        clean, noisy = load(it)
        import jax

        t = time.perf_counter()
        est = enhance(noisy, 16000, prior, config=PRESETS[SETTINGS.get(name, name)],
                      key=jax.random.fold_in(jax.random.key(seed), i))
        base, gain = _gain(clean, noisy, est)
        done[it["file"]] = {"noisy_si_sdr": base, "gain": gain, "seconds": time.perf_counter() - t}
        print(f"  {name:9s} {it['file']:40s} noisy {base:6.2f} dB  gain {gain:+6.2f} dB", flush=True)
        cache.write_text(json.dumps(done, indent=1))
    return done


def summary(rows, settings) -> dict:
    out = {}
    for s in settings:
        g = np.array([r[f"gain_{s}"] for r in rows])
        out[s] = {"mean_gain": float(g.mean()), "min_gain": float(g.min()), "max_gain": float(g.max()),
                  "n_worse_than_1dB": int(np.sum(g < -1.0)), "n": int(g.size),
                  "mean_gain_by_snr": {str(snr): float(np.mean([r[f"gain_{s}"] for r in rows
                                                                 if r["snr_db"] == snr]))
                                       for snr in sorted({r["snr_db"] for r in rows})}}
    return out


def markdown(rows, summ, settings, title) -> str:
    head = ["file", "SNR (dB)", "noise", "speaker", "noisy SI-SDR"] + [f"gain {s}" for s in settings]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['file']} | {r['snr_db']:+g} | {r['noise_type']} | {r['speaker']} | "
                     f"{r['noisy_si_sdr']:.2f} | " + " | ".join(f"{r[f'gain_{s}']:+.2f}" for s in settings)
                     + " |")
    lines += ["", "| setting | mean gain | min gain | max gain | files > 1 dB worse | "
              + " | ".join(f"mean @ {k} dB" for k in summ[settings[0]]["mean_gain_by_snr"]) + " |",
              "|" + "---|" * (5 + len(summ[settings[0]]["mean_gain_by_snr"]))]
    for s in settings:
        v = summ[s]
        lines.append(f"| {s} | {v['mean_gain']:+.2f} | {v['min_gain']:+.2f} | {v['max_gain']:+.2f} | "
                     f"{v['n_worse_than_1dB']} / {v['n']} | "
                     + " | ".join(f"{x:+.2f}" for x in v["mean_gain_by_snr"].values()) + " |")
    return "\n".join(lines) + "\n"


def synthetic_items(n_utts: int, seed: int = 0):
    """Default-corpus test utterances x {white, babble} x {0, 5} dB (vdvae_jax.data.noise)."""
    from vdvae_jax.data.corpus import build_default_corpus
    from vdvae_jax.data.noise import make_noise, mix_at_snr

    corpus = build_default_corpus(seed)
    utts = list(corpus.utterances("test"))[:n_utts]
    items, audio = [], {}
    for k, u in enumerate(utts):
        s = corpus.load(u).astype(np.float32)
        for kind in ("white", "babble"):
            noise = make_noise(kind, s.size, seed=1000 + k, corpus=corpus)
            for snr in (0.0, 5.0):
                name = f"syn{k:02d}_{kind}_{snr:+g}dB"
                noisy, _ = mix_at_snr(s, noise, snr)
                audio[name] = (s, noisy)
                items.append({"file": name, "snr_db": snr, "noise_type": kind, "speaker": "synthetic"})
    return items, lambda it: audio[it["file"]]


def evaluate(items, load, prior, out: Path, tag: str, title: str, seed: int,
             shard: tuple[int, int] = (0, 1), settings=tuple(SETTINGS)) -> dict | None:
    results = {s: run_setting(s, items, load, prior, out / f"cache_{tag}_{s}.json", seed=seed,
                              shard=shard) for s in settings}
    if shard != (0, 1) or set(settings) != set(SETTINGS):
        return None  # partial run: tables are written by a run without --shard / --only
    rows = [{"file": it["file"], "snr_db": it["snr_db"], "noise_type": it["noise_type"],
             "speaker": it["speaker"], "noisy_si_sdr": results["reference"][it["file"]]["noisy_si_sdr"],
             **{f"gain_{s}": results[s][it["file"]]["gain"] for s in SETTINGS},
             **{f"seconds_{s}": results[s][it["file"]]["seconds"] for s in SETTINGS}} for it in items]
    summ = summary(rows, list(SETTINGS))
    (out / f"{tag}.json").write_text(json.dumps({"summary": summ, "rows": rows}, indent=1))
    md = markdown(rows, summ, list(SETTINGS), title)
    (out / f"{tag}.md").write_text(md)
    print(md)
    return summ


def main(argv=None) -> int:
    configure_cpu()   # before the first JAX computation (see vdvae_jax.runtime)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="output folder for the tables")
    ap.add_argument("--build", action="store_true", help="build the real set (apt-get download) if absent")
    ap.add_argument("--set", default=None, help="folder of a built set (default: the cached seed-0 set)")
    ap.add_argument("--prior", default=str(VB_RVAE), help="speech prior (default: published VB RVAE)")
    ap.add_argument("--n-files", type=int, default=32, help="size of the built set")
    ap.add_argument("--max-files", type=int, default=None, help="evaluate only its first N files")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--synthetic", type=int, default=0, help="also N default-corpus utterances")
    ap.add_argument("--shard", default="0/1", help="I/N: only files i with i %% N == I (parallel runs)")
    ap.add_argument("--no-real", action="store_true", help="skip the real set (with --synthetic)")
    ap.add_argument("--only", choices=sorted(SETTINGS), default=None, help="run one setting only")
    args = ap.parse_args(argv)
    shard = tuple(int(v) for v in args.shard.split("/"))
    settings = (args.only,) if args.only else tuple(SETTINGS)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        root = Path(args.set) if args.set else (
            build_real_noisy_set(seed=args.seed, n_files=args.n_files) if args.build else
            Path.home() / f".cache/vdvae_jax/real_noisy/set_seed{args.seed}_n{args.n_files}")
        manifest = load_manifest(root)
    except (RealDataError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    prior = load_prior(args.prior)

    def load(it):
        return load_wav(root / "clean" / it["file"]), load_wav(root / "noisy" / it["file"])

    items = manifest["items"][: args.max_files]
    res = {} if args.no_real else {"real": evaluate(items, load, prior, out, "real_noisy",
                            f"Real noisy set ({root.name}, prior {Path(args.prior).name})", args.seed,
                            shard, settings)}
    if args.synthetic:
        items, load_syn = synthetic_items(args.synthetic, args.seed)
        res["synthetic"] = evaluate(items, load_syn, prior, out, "synthetic",
                                    "Default corpus x white / babble noise", args.seed, shard, settings)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
