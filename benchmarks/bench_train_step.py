"""Train-step throughput of the DVAE zoo at the reference speech configuration.

Reports, per model, compile seconds, steady-state step time, frames/s and achieved FLOP/s next to the
float32 matmul FLOP/s measured in the same process, as JSON lines::

    python benchmarks/bench_train_step.py                    # B=128, T=50, F=513, every model
    python benchmarks/bench_train_step.py --models srnn rvae --smoke

Reference (PyTorch 2.13 CPU, 2 threads, same machine): SRNN 20.3k frames/s, RVAE-NC 14.3k, VAE 79.5k.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from common import emit, environment, matmul_flops_per_s, time_compiled, xla_flops  # noqa: E402
from vdvae_jax import models  # noqa: E402
from vdvae_jax.train import init_train_state, make_train_step  # noqa: E402

PYTORCH_FRAMES_PER_S = {"srnn": 20.3e3, "rvae": 14.3e3, "vae": 79.5e3}


def bench(name: str, batch: int, steps: int, x_dim: int, repeat: int) -> dict:
    model = models.build(name, x_dim=x_dim)
    x = jax.random.uniform(jax.random.key(0), (steps, batch, x_dim), minval=1e-3, maxval=1.0)
    params = model.init(jax.random.key(1), x[:, 0])
    opt = optax.adam(1e-3)
    step = make_train_step(model, opt, time_major=True)
    state = init_train_state(params, opt)
    key = jax.random.key(2)
    r = time_compiled(step, state, x, key, jnp.float32(0.01), jnp.float32(1.0), repeat=repeat)
    frames = batch * steps / r["step_s_min"]
    flops = xla_flops(r["compiled"])
    rec = {"bench": "train_step", "model": name, "B": batch, "T": steps, "F": x_dim,
           "params": models.count_params(params), **r, "frames_per_s": frames,
           "xla_flops_per_step": flops, "achieved_flops_per_s": flops / r["step_s_min"] if flops else None}
    if name in PYTORCH_FRAMES_PER_S:
        rec["speedup_vs_pytorch"] = frames / PYTORCH_FRAMES_PER_S[name]
    return rec


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["vae", "rvae", "rvae_causal", "srnn", "srnn_ss"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--x-dim", type=int, default=513)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None, help="append JSON lines to this file")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, for the test suite")
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch, args.steps, args.x_dim, args.repeat = 4, 6, 17, 2
    matmul = matmul_flops_per_s(256 if args.smoke else 2048)
    emit({"bench": "matmul", "flops_per_s": matmul, **environment()}, args.out)
    for name in args.models:
        rec = bench(name, args.batch, args.steps, args.x_dim, args.repeat)
        if rec["achieved_flops_per_s"]:
            rec["fraction_of_matmul"] = rec["achieved_flops_per_s"] / matmul
        emit(rec, args.out)


if __name__ == "__main__":
    main()
