"""Gradient of one LSTM direction: :func:`vdvae_jax.nn.layers.lstm_scan` (hand-written backward scan,
recurrent-kernel gradient as one product after the loop) against autodiff of the plain recurrence
(``lax.scan`` over :func:`~vdvae_jax.nn.layers.lstm_step`, whose transpose updates an (H, 4H) kernel
accumulator at every frame).

    python benchmarks/bench_lstm_grad.py                  # T = 250 frames, 513 -> 128, 8 sequences
    python benchmarks/bench_lstm_grad.py --smoke          # tiny sizes, for the test suite

Two settings, each for both implementations:

* ``shared``: one set of weights, a batch of ``--batch`` sequences (training);
* ``per_sequence``: ``jax.vmap`` over ``--batch`` copies of the weights, one sequence each (the SE-VEM
  E-step and DDGM U-NA / U-NDA, where every utterance tunes its own encoder).

Each record: compile seconds and best-of-``--repeat`` seconds of the jitted gradient; the largest
difference between the two gradients is checked before timing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import emit, environment, time_compiled  # noqa: E402
from vdvae_jax.nn.layers import lstm_init, lstm_project, lstm_scan, lstm_step, zero_carry  # noqa: E402


def plain_scan(params, xs):
    """The recurrence as ``lax.scan`` over ``lstm_step`` (autodiff's backward)."""
    carry = zero_carry(xs.shape[1:-1], params["kernel_hh"].shape[0], xs.dtype)
    return jax.lax.scan(lambda c, g: lstm_step(params, c, g), carry, lstm_project(params, xs))[1]


def loss_grad(scan):
    return jax.grad(lambda p, x: jnp.sum(jnp.sin(scan(p, x))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=250)
    ap.add_argument("--inputs", type=int, default=513)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.frames, args.inputs, args.hidden, args.batch, args.repeat = 12, 9, 4, 3, 1
    emit({"bench": "env", **environment()}, args.out)
    params = lstm_init(jax.random.key(0), args.inputs, args.hidden)
    xs = jax.random.normal(jax.random.key(1), (args.frames, args.batch, args.inputs))
    many = jax.tree.map(lambda a: a * (1.0 + 0.1 * jnp.arange(args.batch).reshape((-1,) + (1,) * a.ndim)), params)
    settings = {
        "shared": (lambda scan: loss_grad(scan), (params, xs)),
        "per_sequence": (lambda scan: jax.vmap(loss_grad(scan), in_axes=(0, 1)), (many, xs[:, :, None, :])),
    }
    for setting, (make, inputs) in settings.items():
        ours, plain = jax.jit(make(lstm_scan))(*inputs), jax.jit(make(plain_scan))(*inputs)
        err = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(plain)))
        scale = max(float(jnp.max(jnp.abs(b))) for b in jax.tree.leaves(plain))
        if not np.isfinite(err) or err > 1e-4 * scale:
            raise SystemExit(f"{setting}: gradients differ by {err} (scale {scale})")
        for name, scan in (("lstm_scan", lstm_scan), ("autodiff", plain_scan)):
            r = time_compiled(make(scan), *inputs, repeat=args.repeat)
            emit({"bench": "lstm_grad", "setting": setting, "implementation": name, "frames": args.frames,
                  "inputs": args.inputs, "hidden": args.hidden, "batch": args.batch,
                  "compile_s": r["compile_s"], "step_s": r["step_s_min"], "max_grad_diff": err}, args.out)


if __name__ == "__main__":
    main()
