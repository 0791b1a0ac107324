"""Unsupervised speech enhancement on the noisy default corpus: NMF-VEM and the DDGM noise models.

    python experiments/enhance.py                        # the README table (see --help for sizes)
    python experiments/enhance.py --smoke                # < 60 s, for the test suite

1. Speech prior: a causal RVAE (reference speech sizes, networks reading log-power) trained briefly on
   the clean training speakers of the default corpus, cached under
   ``$VDVAE_JAX_CACHE/enhance_prior_<digest>/model.npz`` (retrained only when its settings change).
2. Noisy corpus (:mod:`vdvae_jax.data.noisy`): test = held-out speakers x a held-out noise type
   (amplitude-modulated coloured noise) at -5, 0, 5, 10 dB; train = training speakers x white, pink,
   brown and babble noise (``--noise-split recording``: and amplitude-modulated noise, other instances).
3. Methods, each on the same ``--utts`` test mixtures per SNR (one padded batch):
   NMF-VEM (the reference SE-VEM with NMF noise, batched: :mod:`vdvae_jax.inference.se_vem_batch`), the
   library's default enhancer (``vdvae_jax.enhance.enhance``, one utterance at a time), and
   LV / NO / NOLV x U-NA (per-utterance training from the pretrained encoder and a fresh noise net),
   U-ND (noise net trained on the noisy training mixtures, one forward pass), U-NDA (U-ND then
   the U-NA loop per utterance) (:mod:`vdvae_jax.inference.ddgm`). Defaults against the low-SNR role
   swap: a noise variance smoothed over 31 frames and 33 bins and a Wiener-gain floor of 0.25, as in the
   default NMF enhancer (``--noise-smooth``, ``--ddgm-gain-floor``; ``1 1`` and ``0`` = the reference),
   a debiased noise-floor init (``--floor-debias``), a profiled per-utterance speech gain
   (``--speech-gain``), U-ND and U-NDA with a per-utterance noise level per frequency bin profiled by
   maximum likelihood (``--noise-gain``; the noise net then learns the noise's shape, not the training
   noises' spectrum; U-NA keeps its floor-initialised level: ``--na-noise-gain none``), U-ND training
   encoder + noise net (``--nd-train all``, the reference), U-NDA from the U-ND parameters with the noise
   head re-centred on the utterance's noise floor (``--nda-recentre``), Adam 5e-4 for U-NA, U-ND and
   U-NDA; ``--noise-smooth 1 1 --ddgm-gain-floor 0 --noise-gain none --floor-debias off --speech-gain none
   --nda-recentre off --na-lr 2e-3 --nd-lr 2e-3 --nda-lr 2e-3`` gives the first measurement's settings
   (``--noise-gain none --nd-train noise --nda-encoder pretrained``: the previous defaults).
4. Metrics vs the clean utterance: SI-SDR (dB), PESQ wide-band (P.862.2 MOS-LQO) and ESTOI; median per
   SNR, mean over all; iterations per utterance; RTF = batched compute seconds (compilation excluded,
   reported separately) / seconds of audio. Writes ``results.json``, ``results.md`` and
   ``spectrograms.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import run_info, spectrogram_split, write_json  # noqa: E402
from vdvae_jax.data import build_default_corpus  # noqa: E402
from vdvae_jax.data.corpus import default_cache_dir  # noqa: E402
from vdvae_jax.data.noisy import build_noisy_corpus, noisy_segments  # noqa: E402
from vdvae_jax.data.stft import StftConfig, istft_librosa, stft_librosa  # noqa: E402
from vdvae_jax.inference import ddgm  # noqa: E402
from vdvae_jax.inference.se_vem import SEVEMConfig  # noqa: E402
from vdvae_jax.metrics import evaluate_pair  # noqa: E402
from vdvae_jax.models.io import load_model  # noqa: E402
from vdvae_jax.models.noise_models import NOISE_KINDS, NoiseModelConfig, make_noise_model  # noqa: E402
from vdvae_jax.train import TrainConfig  # noqa: E402

STFT = StftConfig(pad_mode="constant")
METRICS = ("si_sdr", "pesq_wb", "estoi")
PRIOR_MODEL = "rvae_causal"
NMF_DEFAULT = "NMF-VEM, enhance default"


def speech_prior(args, log=print):
    """Train (or reload from the cache) the clean-speech prior."""
    from train_dvae import train

    cfg = TrainConfig(lr=5e-3, beta=1.0, batch_size=32 if not args.smoke else 8, epochs=args.prior_epochs,
                      warmup_epochs=min(5, args.prior_epochs), patience=args.prior_epochs,
                      seed=args.seed, checkpoint_every=10**6)
    max_files = 8 if args.smoke else None
    spec = dict(model=PRIOR_MODEL, preset=args.prior_preset, cfg=dataclasses.asdict(cfg), max_files=max_files,
                seq_len=50, version=1)
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    run = default_cache_dir() / f"enhance_prior_{digest}"
    if not (run / "model.npz").is_file():
        log(f"training the {PRIOR_MODEL} speech prior ({args.prior_epochs} epochs) -> {run}")
        data = (spectrogram_split("default", "train", 50, seed=args.seed, max_files=max_files),
                spectrogram_split("default", "val", 50, seed=args.seed, max_files=max_files))
        train(PRIOR_MODEL, run, preset=args.prior_preset, train_cfg=cfg, datasets=data, progress=not args.smoke)
    else:
        log(f"speech prior from the cache: {run}")
    model, params = load_model(run / "model.npz")
    return model, params, str(run)


def test_batch(noisy, n_per_snr: int, snrs=None):
    """The evaluated mixtures: ``n_per_snr`` per SNR spread over the test speakers, padded to one batch."""
    mixes = []
    for snr in snrs or noisy.snrs:
        pool = noisy.mixtures("test", snr=snr)
        idx = np.linspace(0, len(pool) - 1, min(n_per_snr, len(pool))).round().astype(int)
        mixes += [pool[i] for i in idx]
    items = []
    for m in mixes:
        x, s = noisy.load(m)
        peak = float(np.max(np.abs(x)))
        items.append(dict(mix=m, noisy=x, clean=s, peak=peak, X=stft_librosa(x / peak, STFT)))
    n_max = max(it["X"].shape[0] for it in items)
    n_pad = -(-n_max // 16) * 16
    X = np.zeros((len(items), n_pad, STFT.n_freq), np.complex64)
    mask = np.zeros((len(items), n_pad), bool)
    for i, it in enumerate(items):
        X[i, : it["X"].shape[0]] = it["X"]
        mask[i, : it["X"].shape[0]] = True
    return items, X, mask


def timed(fn, *args):
    """``(outputs, compile seconds, run seconds)`` of a jitted function (AOT compile, then one run)."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, t1 - t0, time.perf_counter() - t1


def to_waves(items, S):
    """Enhanced STFTs (B, N, F) -> waveforms at the input's scale."""
    return [istft_librosa(np.asarray(S[i, : it["X"].shape[0]]), STFT, length=len(it["noisy"])) * it["peak"]
            for i, it in enumerate(items)]


def score(items, waves):
    return [evaluate_pair(it["clean"], w, 16000, METRICS).values for it, w in zip(items, waves)]


def summarise(rows, items, snrs):
    out = {}
    for snr in snrs:
        sel = [r for r, it in zip(rows, items) if it["mix"].snr == snr]
        out[f"{snr:g}"] = {k: float(np.nanmedian([r[k] for r in sel])) for k in METRICS}
    out["mean"] = {k: float(np.nanmean([r[k] for r in rows])) for k in METRICS}
    return out


def below_input(results, name) -> int:
    """Mixtures whose SI-SDR after ``name`` is below the noisy input's."""
    return sum(r["si_sdr"] < n["si_sdr"] for r, n in zip(results[name]["per_utt"], results["noisy"]["per_utt"]))


def markdown(results, snrs) -> str:
    head = "| method | " + " | ".join(f"SI-SDR {s:g} dB" for s in snrs) + \
        " | SI-SDR mean | below input | PESQ-WB mean | ESTOI mean | iterations | RTF |"
    lines = [head, "|" + "---|" * (len(snrs) + 7)]
    for name, r in results.items():
        s = r["summary"]
        cells = [f"{s[f'{x:g}']['si_sdr']:.2f}" for x in snrs]
        cells += [f"{s['mean']['si_sdr']:.2f}", f"{below_input(results, name)}/{len(r['per_utt'])}",
                  f"{s['mean']['pesq_wb']:.2f}", f"{s['mean']['estoi']:.3f}",
                  str(r["iterations"]), "–" if r["rtf"] is None else f"{r['rtf']:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def merge(dirs, out: Path):
    """One table from several runs on the same mixtures (e.g. one process per noise-model kind)."""
    runs = [json.loads((Path(d) / "results.json").read_text()) for d in dirs]
    if any(r["mixtures"] != runs[0]["mixtures"] for r in runs):
        raise SystemExit("the runs to merge were evaluated on different mixtures")
    results = {}
    for r in runs:
        results.update({k: v for k, v in r["results"].items() if k not in results})
    order = ["noisy", "NMF-VEM", NMF_DEFAULT] + [f"{k.upper()} {c}" for k in NOISE_KINDS
                                                 for c in ("U-NA", "U-ND", "U-NDA")]
    results = {k: results[k] for k in order if k in results}
    table = markdown(results, runs[0]["snrs"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(f"Merged from {', '.join(map(str, dirs))}; SI-SDR median per input SNR, "
                                    f"means over all {len(runs[0]['mixtures'])} mixtures.\n\n{table}\n")
    write_json(out / "results.json", {"merged_from": [str(d) for d in dirs], "runs": [r["args"] for r in runs],
                                      "mixtures": runs[0]["mixtures"], "snrs": runs[0]["snrs"],
                                      "results": results, "table": table})
    print(table)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/enhance"))
    ap.add_argument("--utts", type=int, default=6, help="test mixtures per SNR")
    ap.add_argument("--kinds", nargs="*", default=list(NOISE_KINDS), choices=NOISE_KINDS,
                    help="noise models to run (none: only the noisy and NMF-VEM rows)")
    ap.add_argument("--prior-epochs", type=int, default=20)
    ap.add_argument("--prior-preset", default="speech+log")
    ap.add_argument("--na-iter", type=int, default=100,
                    help="U-NA / U-NDA Adam steps per utterance (150 made every U-NA row worse, see README)")
    ap.add_argument("--na-lr", type=float, default=5e-4,
                    help="U-NA Adam lr (reference 5e-4; the first measurement used 2e-3)")
    ap.add_argument("--noise-init", default="floor", choices=["floor", "random"])
    ap.add_argument("--floor-debias", default="on", choices=["on", "off"],
                    help="noise_init='floor': divide the quantile by -log(1-q) (DDGMConfig.floor_debias; "
                         "'off' = the first measurement)")
    ap.add_argument("--speech-gain", default="utterance", choices=["utterance", "none"],
                    help="profiled per-utterance speech gain (DDGMConfig.speech_gain; 'none' = reference)")
    ap.add_argument("--noise-gain", default="frequency", choices=["frequency", "band", "none"],
                    help="U-ND / U-NDA: profiled per-utterance noise level per frequency bin "
                         "(DDGMConfig.noise_gain; 'none' = reference)")
    ap.add_argument("--na-noise-gain", default="none", choices=["frequency", "band", "none"],
                    help="U-NA: the same ('none': the fresh noise net's level is the utterance's floor; "
                         "'frequency' lowered every U-NA mean by 0.3-0.7 dB, see README)")
    ap.add_argument("--nda-lr", type=float, default=5e-4,
                    help="U-NDA Adam lr (reference 5e-4; without --noise-smooth, 1e-4 avoided a role swap "
                         "at -5 dB, see README)")
    ap.add_argument("--nda-iter", type=int, default=None, help="U-NDA steps per utterance (default: --na-iter)")
    ap.add_argument("--nda-recentre", default="on", choices=["on", "off"],
                    help="shift the U-ND noise head bias to the utterance's noise floor before U-NDA "
                         "(ddgm.recentre_noise; 'off' = the first measurement)")
    ap.add_argument("--beta", type=float, default=1.0, help="KL weight of the DDGM loss")
    ap.add_argument("--wf-mode", default="sample", choices=["sample", "mean"],
                    help="DDGM Wiener filter from one posterior sample (reference) or the posterior mean")
    ap.add_argument("--noise-smooth", type=int, nargs=2, default=(31, 33), metavar=("FRAMES", "BINS"),
                    help="DDGM: moving averages of the noise variance over frames and bins (odd; 1 1 = off, "
                         "the reference; 31 33 as the default NMF enhancer)")
    ap.add_argument("--ddgm-gain-floor", type=float, default=0.25,
                    help="DDGM: Wiener gain floor beta, G -> beta + (1 - beta) G (0 = off, the reference)")
    ap.add_argument("--nd-epochs", type=int, default=40)
    ap.add_argument("--nda-encoder", default="nd", choices=["pretrained", "nd"],
                    help="U-NDA speech-encoder start: the U-ND one ('nd', reference) or the clean-speech "
                         "'pretrained' one (better without --noise-gain, when the U-ND encoder maps noise to "
                         "speech at -5 dB); the noise net always starts from U-ND")
    ap.add_argument("--nd-lr", type=float, default=5e-4,
                    help="U-ND peak Adam lr (reference 5e-4; the first measurement used 2e-3)")
    ap.add_argument("--nd-batch", type=int, default=32)
    ap.add_argument("--nd-train", default="all", choices=["all", "noise"],
                    help="U-ND trains encoder + noise net ('all', reference) or the noise net only ('noise'; "
                         "better without --noise-gain)")
    ap.add_argument("--nda-train", default="all", choices=["all", "noise"],
                    help="U-NDA adapts encoder + noise net ('all', as U-NA) or the noise net only ('noise')")
    ap.add_argument("--nd-files", type=int, default=None, help="noisy training mixtures used (default all)")
    ap.add_argument("--nmf-iter", type=int, default=100)
    ap.add_argument("--nmf-lr", type=float, default=1e-3)
    ap.add_argument("--no-nmf", action="store_true", help="skip the NMF-VEM row")
    ap.add_argument("--configs", nargs="+", default=["U-NA", "U-ND", "U-NDA"], choices=["U-NA", "U-ND", "U-NDA"])
    ap.add_argument("--floor-quantile", type=float, default=0.1, help="quantile of P for noise_init='floor'")
    ap.add_argument("--snrs", type=float, nargs="+", default=None, help="evaluate only these SNRs")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="only merge the results.json of these --out folders into --out (e.g. runs per kind)")
    ap.add_argument("--noise-split", default="type", choices=["type", "recording"],
                    help="test noise held out as a type ('type') or only as recordings of types also in "
                         "training ('recording', as WSJ0-QUT)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes for the test suite (< 60 s)")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    if args.smoke:
        args.utts, args.prior_epochs, args.na_iter, args.nd_epochs, args.nmf_iter = 1, 1, 3, 1, 3
        args.nd_files, args.nd_batch = 8, 8
        if "--kinds" not in (sys.argv[1:] if argv is None else argv):
            args.kinds = ["nolv"]
    t_start = time.perf_counter()
    log = lambda *a: print(*a, flush=True)  # noqa: E731
    if args.smoke:  # a few speakers and utterances: builds in seconds
        corpus = build_default_corpus(args.seed, n_train=2, n_val=1, n_test=2, n_babble=2, utts_per_speaker=2,
                                      progress=False, num_workers=1)
    else:
        corpus = build_default_corpus(args.seed)
    noisy = build_noisy_corpus(args.seed, corpus=corpus, noise_split=args.noise_split, progress=not args.smoke)
    model, params, prior_dir = speech_prior(args, log)
    items, X, mask = test_batch(noisy, args.utts, args.snrs)
    snrs = tuple(args.snrs or noisy.snrs)
    audio_s = sum(len(it["noisy"]) for it in items) / 16000
    log(f"{len(items)} test mixtures ({audio_s:.1f} s of audio), padded to {X.shape[1]} frames")
    key = jax.random.key(args.seed)
    results = {}

    def record(name, waves, iterations, compile_s=None, run_s=None, extra=None):
        rows = score(items, waves)
        results[name] = dict(summary=summarise(rows, items, snrs), per_utt=rows, iterations=iterations,
                             compile_s=compile_s, run_s=run_s,
                             rtf=None if run_s is None else run_s / audio_s, **(extra or {}))
        s = results[name]["summary"]
        log(f"{name:12s} SI-SDR " + " ".join(f"{s[f'{x:g}']['si_sdr']:6.2f}" for x in snrs) +
            f" | mean {s['mean']['si_sdr']:.2f} dB, PESQ-WB {s['mean']['pesq_wb']:.2f}, "
            f"ESTOI {s['mean']['estoi']:.3f}" + ("" if run_s is None else f" | {run_s:.1f} s (+{compile_s:.1f} s compile)"))
        return waves

    def save():  # after every method, so that a partial run leaves its rows
        args.out.mkdir(parents=True, exist_ok=True)
        table = markdown(results, snrs)
        (args.out / "results.md").write_text(
            f"SI-SDR median per input SNR, means over all {len(items)} mixtures; RTF = batched compute / audio "
            f"seconds (compilation excluded).\n\n{table}\n")
        write_json(args.out / "results.json", {
            "args": vars(args), "prior": prior_dir, "noisy_corpus": str(noisy.root), "audio_seconds": audio_s,
            "snrs": list(snrs),
            "mixtures": [dict(path=str(it["mix"].path), snr=it["mix"].snr, noise=it["mix"].noise) for it in items],
            "results": results, "table": table, "seconds": time.perf_counter() - t_start, **run_info(args.seed)})
        return table

    estimates = {"noisy": record("noisy", [it["noisy"] for it in items], 0)}

    # ---- NMF-VEM (SE-VEM with NMF noise), batched over utterances.
    from vdvae_jax.inference.se_vem_batch import batch_fn as vem_batch_fn

    if not args.no_nmf:
        vem_cfg = SEVEMConfig(n_iter=args.nmf_iter, lr=args.nmf_lr)
        keys = jax.random.split(jax.random.fold_in(key, 1), len(items))
        (S, _), c_s, r_s = timed(jax.jit(vem_batch_fn(model, vem_cfg)), params, jnp.asarray(X), jnp.asarray(mask), keys)
        estimates["NMF-VEM"] = record("NMF-VEM", to_waves(items, S), args.nmf_iter, c_s, r_s)
        save()
        # the library's default enhancer (vdvae_jax.enhance.DEFAULT: smoothed NMF + tonal components, gain
        # floor), one utterance at a time as the CLI runs it; its time includes compilations
        from vdvae_jax.enhance import DEFAULT, enhance

        t0 = time.perf_counter()
        waves = [enhance(it["noisy"], 16000, (model, params), key=jax.random.fold_in(key, 100 + i), bucket=16)
                 for i, it in enumerate(items)]
        estimates[NMF_DEFAULT] = record(NMF_DEFAULT, waves, DEFAULT.vem.n_iter, None, None,
                                        dict(seconds_with_compilation=time.perf_counter() - t0))
        save()

    # ---- DDGM: LV / NO / NOLV x U-NA / U-ND / U-NDA.
    cfg = ddgm.DDGMConfig(n_iter=args.na_iter, lr=args.na_lr, beta=args.beta, noise_init=args.noise_init,
                          floor_quantile=args.floor_quantile, floor_debias=args.floor_debias == "on",
                          speech_gain=args.speech_gain, noise_gain=args.na_noise_gain, wf_mode=args.wf_mode,
                          noise_smooth_frames=args.noise_smooth[0], noise_smooth_bins=args.noise_smooth[1],
                          gain_floor=args.ddgm_gain_floor)
    nd_model_cfg = dataclasses.replace(cfg, noise_gain=args.noise_gain)        # U-ND and U-NDA
    nda_cfg = dataclasses.replace(nd_model_cfg, lr=args.nda_lr or args.na_lr, train_encoder=args.nda_train == "all",
                                  n_iter=args.na_iter if args.nda_iter is None else args.nda_iter)
    enc, frozen = ddgm.split_speech_params(model, params, cfg)
    P_tb = jnp.swapaxes(jnp.abs(jnp.asarray(X)) ** 2, 0, 1)  # (T, B, F)
    m_tb = jnp.swapaxes(jnp.asarray(mask), 0, 1)
    if not args.kinds:
        args.kinds = []
    segs = noisy_segments(noisy, "train", 100, max_files=args.nd_files) if args.kinds else np.ones((1, 1, 1))
    log(f"U-ND training data: {segs.shape[0]} noisy segments of 100 frames")
    nd_cfg = ddgm.NDConfig(epochs=args.nd_epochs, batch_size=args.nd_batch, lr=args.nd_lr,
                           train_encoder=args.nd_train == "all")
    train_floor = np.quantile(segs.reshape(-1, segs.shape[-1]), cfg.floor_quantile, axis=0)

    for kind in args.kinds:
        nm = make_noise_model(NoiseModelConfig(kind=kind, x_dim=model.config.x_dim, z_dim=model.config.z_dim))
        k_kind = jax.random.fold_in(key, 10 + NOISE_KINDS.index(kind))
        k_na, k_nd, k_nda, k_init = jax.random.split(k_kind, 4)

        # U-NA: pretrained encoder + a fresh noise net per utterance (head bias from its noise floor).
        una_c = None
        if "U-NA" in args.configs:
            init_keys = jax.random.split(k_init, len(items))
            starts = jax.vmap(lambda P, m, k: ddgm.fresh_trainable(model, nm, params, k, cfg, P, m),
                              in_axes=(1, 1, 0))(P_tb, m_tb, init_keys)
            una = jax.jit(lambda f, t, P, m, k: ddgm.adapt_batch(model, nm, cfg, f, t, P, m, k, shared_start=False))
            t1 = time.perf_counter()
            una_c = una.lower(frozen, starts, P_tb, m_tb, k_na).compile()
            t2 = time.perf_counter()
            G, losses = jax.block_until_ready(una_c(frozen, starts, P_tb, m_tb, k_na))
            c_s, r_s = t2 - t1, time.perf_counter() - t2
            estimates[f"{kind.upper()} U-NA"] = record(
                f"{kind.upper()} U-NA", to_waves(items, np.swapaxes(np.asarray(G), 0, 1) * X), args.na_iter,
                c_s, r_s, dict(loss_first=float(jnp.mean(losses[:, 0])), loss_last=float(jnp.mean(losses[:, -1]))))
            save()
        if not {"U-ND", "U-NDA"} & set(args.configs):
            continue

        # U-ND: train encoder + noise net on the noisy training set, then one pass.
        bias = (jnp.log(jnp.maximum(jnp.asarray(train_floor), 1e-10)) + ddgm.floor_offset(cfg)
                if args.noise_init == "floor" else None)
        t0 = {"speech": enc, "noise": nm.init(k_init, head_bias=bias)}
        nd_params, hist = ddgm.train_nd(model, nm, nd_model_cfg, nd_cfg, frozen, t0, segs, k_nd,
                                        progress=not args.smoke, log=log)
        nd = jax.jit(lambda f, t, P, m, k: ddgm.apply_batch(model, nm, nd_model_cfg, f, t, P, m, k))
        G, c_s, r_s = timed(nd, frozen, nd_params, P_tb, m_tb, k_nd)
        estimates[f"{kind.upper()} U-ND"] = record(
            f"{kind.upper()} U-ND", to_waves(items, np.swapaxes(np.asarray(G), 0, 1) * X),
            f"1 pass (+{len(hist)} training epochs)", c_s, r_s,
            dict(train_seconds=hist[-1]["seconds"], train_epochs=len(hist), train_loss=hist[-1]["loss"]))
        save()

        # U-NDA: the U-NA loop per utterance, started from the U-ND parameters (copied to every
        # utterance; with --nda-recentre on, the noise head moved to each utterance's noise floor).
        if "U-NDA" not in args.configs:
            continue
        per_utterance = lambda tree: jax.tree.map(                                    # noqa: E731
            lambda a: jnp.broadcast_to(a, (len(items),) + a.shape), tree)
        if args.nda_recentre == "on":
            nd_starts = jax.vmap(lambda P, m: ddgm.recentre_noise(nd_params, P, m, train_floor, cfg),
                                 in_axes=(1, 1))(P_tb, m_tb)
        else:
            nd_starts = per_utterance(nd_params)
        if args.nda_encoder == "pretrained":
            nd_starts = {**nd_starts, "speech": per_utterance(enc)}
        c_s = 0.0
        if nda_cfg == cfg and una_c is not None:  # same compiled program as U-NA
            nda_c = una_c
        else:
            t1 = time.perf_counter()
            nda_c = jax.jit(lambda f, t, P, m, k: ddgm.adapt_batch(model, nm, nda_cfg, f, t, P, m, k,
                                                                    shared_start=False)).lower(
                frozen, nd_starts, P_tb, m_tb, k_nda).compile()
            c_s = time.perf_counter() - t1
        t1 = time.perf_counter()
        G, losses = jax.block_until_ready(nda_c(frozen, nd_starts, P_tb, m_tb, k_nda))
        r_s = time.perf_counter() - t1
        estimates[f"{kind.upper()} U-NDA"] = record(
            f"{kind.upper()} U-NDA", to_waves(items, np.swapaxes(np.asarray(G), 0, 1) * X), nda_cfg.n_iter,
            c_s, r_s,
            dict(loss_first=float(jnp.mean(losses[:, 0])), loss_last=float(jnp.mean(losses[:, -1]))))

    table = save()
    # Figure: the first 0 dB mixture (or the first one), noisy / NMF-VEM / best DDGM / clean.
    from vdvae_jax.plots import spectrograms

    i = next((j for j, it in enumerate(items) if it["mix"].snr == 0.0), 0)
    ddgm_rows = [k for k in results if k not in ("noisy", "NMF-VEM", NMF_DEFAULT)]
    best = [max(ddgm_rows, key=lambda k: results[k]["summary"]["mean"]["si_sdr"])] if ddgm_rows else []
    names = [k for k in ("noisy", "NMF-VEM") if k in estimates] + best
    fig = spectrograms([items[i]["clean"]] + [estimates[k][i] for k in names],
                       ["clean"] + [f"{k} ({results[k]['per_utt'][i]['si_sdr']:.1f} dB SI-SDR)" for k in names])
    fig.savefig(args.out / "spectrograms.png", dpi=80)
    log("\n" + table)
    log(f"total {time.perf_counter() - t_start:.0f} s; results in {args.out}")
    return results


if __name__ == "__main__":
    main()
