"""SE-VEM speed and effect for one utterance, per published DVAE_SE prior (JSON lines).

    python benchmarks/bench_vem.py                         # VoiceBank VAE, DKF, RVAE, SRNN priors
    python benchmarks/bench_vem.py --priors vb_rvae --config enhance-defaults --niter 200
    python benchmarks/bench_vem.py --smoke                 # tiny random prior, for the test suite

The utterance is the 4-s clip of ``../shared/reference/inputs/audio.npz``: its speech plus its noise at
``--snr`` dB. Reports compile seconds (first call minus a steady call), steady-state seconds, seconds per
VEM iteration, the real-time factor (processing time / audio duration) and SI-SDR of the noisy input and
of the output. Reference PyTorch RTF on this machine (4-s utterance, 200 iterations, K = 25): RVAE 42.6,
SRNN 16.4, DKF 8.4, VAE 1.4. Batched enhancement is not measured yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import emit, environment  # noqa: E402
from vdvae_jax.enhance import PRESETS, enhance, load_prior  # noqa: E402
from vdvae_jax.metrics import si_sdr  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "reference"


def clip(snr_db: float, smoke: bool):
    if smoke:
        rng = np.random.default_rng(0)
        t = np.arange(16000) / 16000
        speech = (np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)
        noise = rng.standard_normal(16000).astype(np.float32)
    else:
        audio = np.load(SHARED / "inputs/audio.npz")
        speech, noise = audio["speech"], audio["noise"]
    noise = noise * np.sqrt(np.sum(speech**2) / np.sum(noise**2)) * 10 ** (-snr_db / 20)
    return speech, (speech + noise).astype(np.float32)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--priors", nargs="+", default=["vb_vae", "vb_dkf", "vb_rvae", "vb_srnn"])
    ap.add_argument("--config", default="vb", choices=sorted(PRESETS))
    ap.add_argument("--niter", type=int, default=None)
    ap.add_argument("--snr", type=float, default=5.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    config = PRESETS[args.config]
    if args.niter or args.smoke:
        config = dataclasses.replace(config, n_iter=3 if args.smoke else args.niter)
    speech, noisy = clip(args.snr, args.smoke)
    seconds = len(noisy) / 16000
    emit({"bench": "env", **environment()}, args.out)
    for tag in ["random_vae"] if args.smoke else args.priors:
        if args.smoke:
            from vdvae_jax import models
            model = models.build("vae", dense_x_z=(8,))
            prior = (model, model.init(jax.random.key(0), jnp.ones((2, 513))))
        else:
            prior = load_prior(SHARED / "checkpoints/dvae_se" / tag)
        t0 = time.perf_counter()
        enhance(noisy, 16000, prior, config=config)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = enhance(noisy, 16000, prior, config=config, key=jax.random.key(1))
        steady = time.perf_counter() - t0
        emit({"bench": "se_vem", "prior": tag, "config": args.config, "n_iter": config.n_iter,
              "nmf_rank": config.nmf_rank, "audio_s": seconds, "compile_s": first - steady,
              "steady_s": steady, "s_per_iter": steady / config.n_iter, "rtf": steady / seconds,
              "si_sdr_in": float(si_sdr(jnp.asarray(speech), jnp.asarray(noisy))),
              "si_sdr_out": float(si_sdr(jnp.asarray(speech), jnp.asarray(out)))}, args.out)


if __name__ == "__main__":
    main()
