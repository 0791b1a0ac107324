"""MixDVAE single-channel source separation (speech + flute) against NMF, the mixture and the IBM oracle.

Pipeline (spec §1.5, §2.2–§2.3, §3, §4):

1. per-source SC-ASS SRNN priors (flute, speech), pretrained briefly and cached
   (:mod:`vdvae_jax.separation.priors`);
2. supervised IS-NMF dictionaries per source on the same training spectrograms; the smoothness weight
   alpha of the temporally-continuous variant is picked on validation mixtures (T = 100);
3. for each T in ``--frames``: ``--n-test`` test mixtures (unseen speakers and melodies) at ``--smr`` dB;
   methods ``mixture`` (the mixture itself as both estimates), ``ibm`` (oracle), ``nmf``,
   ``nmf_smooth``, ``mixdvae`` (VEM, last of ``--n-iter`` iterations); SI-SDR, wide-band PESQ and RMSE per
   source (:mod:`vdvae_jax.separation.metrics`);
4. ``results.json`` + ``results.md`` in ``--out``.

Example::

    PYTHONPATH=. python experiments/mixdvae_scass.py --out runs/mixdvae_scass
    PYTHONPATH=. python experiments/mixdvae_scass.py --smoke --out /tmp/scass_smoke   # < 60 s
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.common import run_info, write_json  # noqa: E402
from vdvae_jax.data.stft import istft  # noqa: E402
from vdvae_jax.inference.mixdvae import SCASSOptions  # noqa: E402
from vdvae_jax.metrics import si_sdr  # noqa: E402
from vdvae_jax.separation import baselines as bl  # noqa: E402
from vdvae_jax.separation.flute import FluteConfig  # noqa: E402
from vdvae_jax.separation.metrics import SEPARATION_METRICS, evaluate_sources, summarise  # noqa: E402
from vdvae_jax.separation.mixtures import (SOURCES, MixtureConfig, make_mixtures, mixture_stft,  # noqa: E402
                                           speech_streams, flute_streams)
from vdvae_jax.separation.priors import PriorConfig, pretrain_prior  # noqa: E402
from vdvae_jax.separation.vem import mixdvae_separate  # noqa: E402

METHODS = ("mixture", "ibm", "nmf", "nmf_smooth", "mixdvae")
_SMOKE_MODEL = (("dense_x_h", (32,)), ("dim_rnn_h", 16), ("dense_hx_g", (32,)), ("dim_rnn_g", 16),
                ("dense_gz_z", (16,)), ("dense_hz_z", (16,)), ("dense_hz_x", (32,)), ("z_dim", 4))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, nargs="*", default=[50, 100, 300])
    ap.add_argument("--curve", action="store_true",
                    help="also record MixDVAE SI-SDR per VEM iteration on the validation mixtures")
    ap.add_argument("--n-test", type=int, default=16, help="test mixtures per T")
    ap.add_argument("--n-val", type=int, default=8, help="validation mixtures for the NMF alpha")
    ap.add_argument("--smr", type=float, default=-10.0, help="speech-to-music ratio in dB (reference: -10)")
    ap.add_argument("--n-iter", type=int, default=70, help="VEM iterations (reference 70)")
    ap.add_argument("--vem", choices=("corrected", "reference"), default="corrected",
                    help="SCASSOptions() or SCASSOptions.reference() (uniform complex noise etc.)")
    ap.add_argument("--nmf-components", type=int, default=32)
    ap.add_argument("--nmf-iter", type=int, default=100)
    ap.add_argument("--nmf-train-frames", type=int, default=6000)
    ap.add_argument("--alphas", type=float, nargs="+", default=[1.0, 3.0, 10.0, 30.0])
    ap.add_argument("--prior-epochs", type=int, default=24, help="pretraining epochs per source")
    ap.add_argument("--prior-budget", type=float, default=None,
                    help="optional wall-clock limit of pretraining per source (s; not reproducible)")
    ap.add_argument("--power-scale", type=float, default=1.0,
                    help="priors read power * this (1 = reference raw power; see separation.priors)")
    ap.add_argument("--devices", type=int, default=1,
                    help="split the test mixtures over this many devices (on a CPU: one per core); "
                         "--n-test must divide evenly")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/mixdvae_scass"))
    ap.add_argument("--smoke", action="store_true", help="tiny data/model/iterations (< 60 s)")
    return ap.parse_args(argv)


def _istft(Z, cfg: MixtureConfig):
    return np.asarray(istft(jnp.asarray(Z), cfg.stft, length=cfg.length))


def _train_frames(spec, n, seed):
    frames = spec.reshape(-1, spec.shape[-1])
    return frames[np.random.default_rng(seed).permutation(len(frames))[:n]]


def main(argv=None):
    args = parse_args(argv)
    if args.devices > 1:  # one CPU device per core (before JAX's first computation; no effect on GPUs)
        jax.config.update("jax_num_cpu_devices", args.devices)
    t_start = time.perf_counter()
    key = jax.random.key(args.seed)
    if args.smoke:
        flute_cfg = FluteConfig(duration=4.0, counts=(3, 2, 2))
        args.frames, args.n_test, args.n_val, args.n_iter = [20], 2, 2, 3
        args.nmf_components, args.nmf_iter, args.nmf_train_frames, args.alphas = 4, 10, 200, [10.0]
        prior_cfg = PriorConfig(batch_size=4, warmup_epochs=1, ss_epochs=1, max_epochs=2, budget_s=5.0,
                                max_train=8, max_val=4, n_frames=20, overrides=_SMOKE_MODEL,
                                power_scale=args.power_scale)
        cache = Path(tempfile.mkdtemp(prefix="scass_smoke_"))
    else:
        flute_cfg = FluteConfig()
        prior_cfg = PriorConfig(max_epochs=args.prior_epochs, budget_s=args.prior_budget, seed=args.seed,
                                power_scale=args.power_scale)
        cache = None
    base = MixtureConfig(smr_db=args.smr, flute=flute_cfg)
    # Source data (smoke: 3 utterances per test speaker stand in for every speech split).
    if args.smoke:
        test_speech = speech_streams("test", max_per_speaker=3)
        speech = {s: test_speech for s in ("train", "val", "test")}
    else:
        speech = {s: speech_streams(s) for s in ("train", "val", "test")}
    flute = {s: flute_streams(s, flute_cfg) for s in ("train", "val", "test")}
    from vdvae_jax.data.datasets import build_spectrogram_dataset

    def spectra(source, split, n_frames):
        waves = speech[split] if source == "speech" else flute[split]
        return build_spectrogram_dataset(waves, base.stft, seq_len=n_frames)

    # 1. priors
    t0 = time.perf_counter()
    priors, prior_info = [], {}
    for src in SOURCES:
        data = (spectra(src, "train", prior_cfg.n_frames),
                spectra(src, "val", prior_cfg.n_frames))
        model, params, info = pretrain_prior(src, prior_cfg, cache_dir=cache, data=data)
        priors.append(params)
        hist = info.get("history")
        prior_info[src] = {"cache": info.get("path", info.get("cached")),
                           "epochs": len(hist) if hist else None,
                           "final_val_loss": hist[-1]["val_loss"] if hist else None}
    t_prior = time.perf_counter() - t0
    print(f"priors ready in {t_prior:.1f} s", flush=True)

    # 2. NMF dictionaries + alpha on validation mixtures
    t0 = time.perf_counter()
    frames = [_train_frames(spectra(src, "train", 20 if args.smoke else 50),
                            args.nmf_train_frames, args.seed) for src in SOURCES]
    dicts = bl.learn_dictionaries(frames, jax.random.fold_in(key, 11), args.nmf_components, args.nmf_iter)
    val_cfg = MixtureConfig(n_frames=args.frames[0] if args.smoke else 100, smr_db=args.smr, flute=flute_cfg)
    vms = make_mixtures(args.n_val, "val", val_cfg, seed=args.seed + 1, speech=speech["val"], flute=flute["val"])
    vX, _ = mixture_stft(vms, val_cfg)
    alpha_scores = {}
    for a in args.alphas:
        est = jax.vmap(lambda x: bl.nmf_separate(x, dicts, 2, args.nmf_iter, a))(jnp.asarray(vX))
        y = _istft(est, val_cfg)
        alpha_scores[a] = float(np.mean(np.asarray(si_sdr(vms.sources, y))))
    alpha = max(alpha_scores, key=alpha_scores.get)
    t_nmf = time.perf_counter() - t0
    print(f"NMF dictionaries + alpha={alpha} (val SI-SDR {alpha_scores}) in {t_nmf:.1f} s", flush=True)

    options = SCASSOptions() if args.vem == "corrected" else SCASSOptions.reference()
    results = {"info": run_info(args.seed), "args": {k: (str(v) if isinstance(v, Path) else v)
                                                     for k, v in vars(args).items()},
               "prior_config": prior_cfg, "priors": prior_info, "flute_config": flute_cfg,
               "nmf": {"alpha": alpha, "val_si_sdr_by_alpha": alpha_scores,
                       "components_per_source": args.nmf_components, "iterations": args.nmf_iter},
               "vem_options": options, "timings_s": {"priors": t_prior, "nmf_fit": t_nmf}, "by_T": {}}
    from vdvae_jax import models
    config = models.build("srnn_scass", **dict(prior_cfg.overrides)).config
    amp = float(np.sqrt(prior_cfg.power_scale))   # the priors' input level
    if args.curve:
        results["val_iteration_curve"] = iteration_curve(config, priors, vX * amp, vms, val_cfg, options,
                                                         args.n_iter, jax.random.fold_in(key, 5))
        print("val SI-SDR per iteration (flute, speech):", results["val_iteration_curve"], flush=True)

    # 3. evaluation per T
    for T in args.frames:
        cfg = MixtureConfig(n_frames=T, smr_db=args.smr, flute=flute_cfg)
        ms = make_mixtures(args.n_test, "test", cfg, seed=args.seed + 2 + T, speech=speech["test"],
                           flute=flute["test"])
        X, S = mixture_stft(ms, cfg)
        ests, timings = {}, {}
        ests["mixture"] = np.repeat(ms.mix[:, None], 2, axis=1)
        ibm = bl.apply_masks(bl.ideal_binary_masks(jnp.swapaxes(jnp.asarray(S), 0, 1)), jnp.asarray(X))
        ests["ibm"] = _istft(jnp.swapaxes(ibm, 0, 1), cfg)
        for name, sm in (("nmf", None), ("nmf_smooth", alpha)):
            t0 = time.perf_counter()
            est = jax.vmap(lambda x: bl.nmf_separate(x, dicts, 2, args.nmf_iter, sm))(jnp.asarray(X))
            ests[name] = _istft(est, cfg)
            timings[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mu, elbo = mixdvae_separate(config, priors, jnp.asarray(X) * amp, jax.random.fold_in(key, T),
                                    n_iter=args.n_iter, options=options,
                                    devices=None if args.devices == 1 else args.devices)
        ests["mixdvae"] = _istft(mu, cfg)
        timings["mixdvae"] = time.perf_counter() - t0
        entry = {"n_mixtures": args.n_test, "smr_db_measured": float(np.mean(ms.smr_db)),
                 "timings_s": timings, "mixdvae_elbo_first_last": [float(elbo[0]), float(elbo[-1])],
                 "methods": {}}
        for name in METHODS:
            values, failures = evaluate_sources(ms.sources, ests[name])
            entry["methods"][name] = {"summary": summarise(values, SOURCES),
                                      "per_item": {k: v.tolist() for k, v in values.items()},
                                      "failures": failures}
        results["by_T"][str(T)] = entry
        print(f"T={T}: " + ", ".join(
            f"{m} SI-SDR " + "/".join(f"{entry['methods'][m]['summary'][s]['si_sdr']['mean']:.2f}" for s in SOURCES)
            for m in METHODS), flush=True)

    results["timings_s"]["total"] = time.perf_counter() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", results)
    (args.out / "results.md").write_text(markdown_table(results))
    print(markdown_table(results))
    return results


def iteration_curve(config, priors, X, ms, cfg, options, n_iter, key):
    """Mean SI-SDR per source after every VEM iteration (validation mixtures; picks ``--n-iter``)."""
    from vdvae_jax.inference.mixdvae import scass_data, scass_vem, solve, stack_params

    alg = scass_vem(config, options, record=True)
    _, infos = solve(alg, key, scass_data(stack_params(priors), jnp.swapaxes(jnp.asarray(X), 0, 1)), n_iter)
    curve = []
    for i in range(n_iter):
        y = _istft(jnp.transpose(infos.mu[i], (2, 1, 0, 3)), cfg)
        curve.append([float(v) for v in np.mean(np.asarray(si_sdr(ms.sources, y)), axis=0)])
    return {"si_sdr": curve, "elbo": [float(e) for e in infos.elbo]}


def markdown_table(results) -> str:
    """One row per (T, method): mean SI-SDR / PESQ-WB / RMSE per source (flute, speech)."""
    head = ("| T | method | " + " | ".join(f"{s} {m}" for s in SOURCES for m in SEPARATION_METRICS) + " |\n"
            "|---|---|" + "---|" * (len(SOURCES) * len(SEPARATION_METRICS)) + "\n")
    rows = []
    for T, entry in results["by_T"].items():
        for name in METHODS:
            summ = entry["methods"][name]["summary"]
            cells = []
            for s in SOURCES:
                for m in SEPARATION_METRICS:
                    v = summ[s][m]["mean"]
                    cells.append(f"{v:.4f}" if m == "rmse" else f"{v:.2f}")
            rows.append(f"| {T} | {name} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
