"""SE-VEM speed and effect for one utterance, per published DVAE_SE prior (JSON lines).

    python benchmarks/bench_vem.py                         # VoiceBank VAE, DKF, RVAE, SRNN priors
    python benchmarks/bench_vem.py --priors vb_rvae --config enhance-defaults --niter 200
    python benchmarks/bench_vem.py --smoke                 # tiny random prior, for the test suite
    python benchmarks/bench_vem.py --priors vb_rvae --config enhance-defaults --niter 10 --batch 64
    python benchmarks/bench_vem.py --priors vb_rvae --config vb --niter 10 --batch 64 --devices 2 --no-single

The utterance is the 4-s clip of ``../shared/reference/inputs/audio.npz``: its speech plus its noise at
``--snr`` dB. Reports compile seconds (first call minus a steady call), steady-state seconds, seconds per
VEM iteration, the real-time factor (processing time / audio duration) and SI-SDR of the noisy input and
of the output. Reference PyTorch RTF on this machine (4-s utterance, 200 iterations, K = 25): RVAE 42.6,
SRNN 16.4, DKF 8.4, VAE 1.4.

Batched mode (``--batch U [U ...]``, default 64; ``--batch 0`` turns it off): U noisy versions of the
clip (its noise circularly shifted per utterance) go through
:func:`vdvae_jax.inference.se_vem_batch.enhance_stft_batch` as one compiled program (``--chunk``:
utterances vmapped together, ``auto`` = the library default, ``all``, or numbers; one record each).
Each ``se_vem_batch`` record has compile seconds (lowering + XLA compilation), steady seconds of one
call, seconds per VEM iteration (steady / n_iter, init and Wiener filter included), the RTF (steady /
audio seconds of all U utterances) and its extrapolation to ``--target-niter`` iterations (default: the
preset's n_iter), and FLOP/s against the float32 matmul FLOP/s measured in the same process
(``bench: matmul`` record):

* ``dot_flops``: FLOPs of every matrix product of the program, counted on its jaxpr with scan lengths
  multiplied in (dead code removed first, as XLA does); ``achieved_flops_per_s`` = dot_flops / steady.
* ``dot_flops_in_frame_loops``: the part of dot_flops executed inside the scans over frames (the
  recurrent matrix-vector products and their gradients; the rest are whole-sequence products).
* ``reference_dot_flops``: dot_flops of the same batch with ``reuse_features=False``, i.e. the work of
  the algorithm as the reference runs it (the encoder's LSTMs over x twice per iteration, see
  :class:`vdvae_jax.inference.se_vem.SEVEMConfig`); ``fraction_of_matmul_reference_work`` =
  reference_dot_flops / steady / matmul FLOP/s: that work's throughput, the issue's measure
  ("an RVAE-NC VEM iteration costs about 8 MFLOP per frame"), beside ``fraction_of_matmul``, the
  program's own executed products.
* ``xla_flops``: XLA's ``compiled.cost_analysis()["flops"]`` as returned. In jax 0.12 on CPU it counts
  a while loop's body once, whatever its trip count, so for a scan over iterations and frames it is
  far below the executed count; it is reported for reference only.

Use a small ``--niter`` (e.g. 10) and read ``rtf_target`` for the 200-iteration estimate.

``--devices N`` (batched mode) splits the utterances over N devices that run at once
(:func:`vdvae_jax.inference.se_vem_batch.enhance_stft_batch` ``devices=``); on a CPU these are N CPU
devices (``jax_num_cpu_devices``), one per core: a single device runs the per-frame recursions on one
core, their matrix-vector products being too small for XLA's intra-op threads.
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

from common import dot_flops, emit, environment, matmul_flops_per_s, xla_flops  # noqa: E402
from vdvae_jax.data.stft import stft_librosa  # noqa: E402
from vdvae_jax.enhance import PRESETS, STFT, enhance, load_prior  # noqa: E402
from vdvae_jax.inference import se_vem_batch  # noqa: E402
from vdvae_jax.inference.base import resolve_devices  # noqa: E402
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


def noisy_batch(speech, noise, snr_db: float, n_utts: int):
    """``n_utts`` mixtures of the clip (noise circularly shifted per utterance), pre-processed as
    :func:`vdvae_jax.enhance.enhance`: (U, N, F) padded STFTs, (U, N) masks, total audio seconds."""
    scale = np.sqrt(np.sum(speech**2) / np.sum(noise**2)) * 10 ** (-snr_db / 20)
    stfts = []
    for u in range(n_utts):
        x = speech + scale * np.roll(noise, u * len(noise) // max(n_utts, 1))
        stfts.append(stft_librosa((x / np.max(np.abs(x))).astype(np.float32), STFT))
    n = stfts[0].shape[0]
    n_pad = -(-n // 64) * 64
    X = np.zeros((n_utts, n_pad, stfts[0].shape[1]), np.complex64)
    X[:, :n] = np.stack(stfts)
    mask = np.broadcast_to(np.arange(n_pad) < n, (n_utts, n_pad))
    return jnp.asarray(X), jnp.asarray(mask), n_utts * len(speech) / STFT.sr


def bench_batch(tag, prior, config, n_utts, chunk, speech, noise, args, matmul, target_niter):
    model, params = prior
    X, mask, audio_s = noisy_batch(speech, noise, args.snr, n_utts)
    keys = jax.random.split(jax.random.key(0), n_utts)
    chunk = {"auto": "auto", "all": None}.get(chunk, chunk)
    chunk = se_vem_batch.resolve_chunk(chunk if chunk in ("auto", None) else int(chunk))
    devices = resolve_devices(args.devices) if args.devices > 1 else ()
    runner = se_vem_batch._runner(model, config, chunk, devices)
    t0 = time.perf_counter()
    compiled = runner.lower(params, X, mask, keys).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(params, X, mask, keys))  # warm-up
    times = []
    for r in range(args.repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(params, X, mask, jax.random.split(jax.random.key(r + 1), n_utts)))
        times.append(time.perf_counter() - t0)
    steady = min(times)
    flops, frame_loop_flops = dot_flops(se_vem_batch.batch_fn(model, config, chunk), params, X, mask,
                                        keys, frames=int(X.shape[1]))
    achieved = flops / steady
    reference_flops = flops   # the reference's work: the same batch without feature reuse
    if config.reuse_features:
        reference_flops, _ = dot_flops(se_vem_batch.batch_fn(model, dataclasses.replace(config, reuse_features=False),
                                                             chunk), params, X, mask, keys, frames=int(X.shape[1]))
    s_iter = steady / config.n_iter
    return {"bench": "se_vem_batch", "prior": tag, "config": args.config, "n_iter": config.n_iter,
            "nmf_rank": config.nmf_rank, "batch": n_utts, "chunk": chunk or n_utts, "devices": args.devices,
            "frames": int(X.shape[1]),
            "audio_s": audio_s, "compile_s": compile_s, "steady_s": steady, "s_per_iter": s_iter,
            "rtf": steady / audio_s, "target_niter": target_niter,
            "rtf_target": s_iter * target_niter / audio_s, "dot_flops": flops,
            "dot_flops_in_frame_loops": frame_loop_flops,
            "xla_flops": xla_flops(compiled), "achieved_flops_per_s": achieved,
            "matmul_flops_per_s": matmul, "fraction_of_matmul": achieved / matmul,
            "reference_dot_flops": reference_flops,
            "fraction_of_matmul_reference_work": reference_flops / steady / matmul}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--priors", nargs="+", default=["vb_vae", "vb_dkf", "vb_rvae", "vb_srnn"])
    ap.add_argument("--config", default="vb", choices=sorted(PRESETS))
    ap.add_argument("--niter", type=int, default=None)
    ap.add_argument("--snr", type=float, default=5.0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--batch", type=int, nargs="+", default=[64],
                    help="batched mode with these numbers of utterances (0: off)")
    ap.add_argument("--no-single", action="store_true", help="skip the single-utterance records")
    ap.add_argument("--target-niter", type=int, default=None,
                    help="iterations for rtf_target (default: the preset's n_iter)")
    ap.add_argument("--chunk", nargs="+", default=["auto"],
                    help="utterances vmapped together in batched mode: auto, all, or ints (one record each)")
    ap.add_argument("--repeat", type=int, default=1, help="steady calls timed (min is kept)")
    ap.add_argument("--no-reuse", action="store_true",
                    help="SEVEMConfig.reuse_features=False: run the encoder's passes over x twice per "
                         "iteration, as the reference")
    ap.add_argument("--devices", type=int, default=1,
                    help="batched mode: split the utterances over this many devices running at once (on a "
                         "CPU: one device per core, made with jax_num_cpu_devices)")
    args = ap.parse_args(argv)
    if args.devices > 1:   # must precede JAX's first computation
        jax.config.update("jax_num_cpu_devices", args.devices)
    config = PRESETS[args.config]
    vem = getattr(config, "vem", config)  # EnhanceConfig wraps an SEVEMConfig
    target_niter = args.target_niter or vem.n_iter
    batches = [b for b in ([2] if args.smoke else args.batch) if b > 0]
    if batches and vem is not config:
        print(f"batched mode runs SEVEMConfig presets only; skipped for --config {args.config}",
              file=sys.stderr)
        batches = []
    if args.niter or args.smoke or args.no_reuse:
        vem = dataclasses.replace(vem, n_iter=3 if args.smoke else (args.niter or vem.n_iter),
                                  reuse_features=not args.no_reuse)
        config = dataclasses.replace(config, vem=vem) if hasattr(config, "vem") else vem
    speech, noisy = clip(args.snr, args.smoke)
    seconds = len(noisy) / 16000
    emit({"bench": "env", **environment()}, args.out)
    matmul = None
    if batches:
        matmul = matmul_flops_per_s(256 if args.smoke else 2048)
        emit({"bench": "matmul", "flops_per_s": matmul}, args.out)
    for tag in ["random_vae"] if args.smoke else args.priors:
        if args.smoke:
            from vdvae_jax import models
            model = models.build("vae", dense_x_z=(8,))
            prior = (model, model.init(jax.random.key(0), jnp.ones((2, 513))))
        else:
            prior = load_prior(SHARED / "checkpoints/dvae_se" / tag)
        if args.smoke:
            speech_b, noise_b = speech, noisy - speech
        else:
            audio = np.load(SHARED / "inputs/audio.npz")
            speech_b, noise_b = audio["speech"], audio["noise"]
        for n_utts in batches:
            for chunk in args.chunk:
                emit(bench_batch(tag, prior, config, n_utts, chunk, speech_b, noise_b, args, matmul,
                                 target_niter), args.out)
        if args.no_single:
            continue
        t0 = time.perf_counter()
        enhance(noisy, 16000, prior, config=config)
        first = time.perf_counter() - t0
        steady = float("inf")
        for _ in range(max(args.repeat, 1)):   # steady state: the fastest of --repeat calls
            t0 = time.perf_counter()
            out = enhance(noisy, 16000, prior, config=config, key=jax.random.key(1))
            steady = min(steady, time.perf_counter() - t0)
        emit({"bench": "se_vem", "prior": tag, "config": args.config, "n_iter": vem.n_iter,
              "nmf_rank": vem.nmf_rank, "audio_s": seconds, "compile_s": first - steady,
              "steady_s": steady, "s_per_iter": steady / vem.n_iter, "rtf": steady / seconds,
              "target_niter": target_niter, "rtf_target": steady / vem.n_iter * target_niter / seconds,
              "si_sdr_in": float(si_sdr(jnp.asarray(speech), jnp.asarray(noisy))),
              "si_sdr_out": float(si_sdr(jnp.asarray(speech), jnp.asarray(out)))}, args.out)


if __name__ == "__main__":
    main()
