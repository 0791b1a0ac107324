"""XLA:CPU kernel choices behind ``nn.layers.frame_inputs``, ``row_major_transpose`` and ``pad_columns``.

    taskset -c 0 python benchmarks/bench_cpu_kernels.py        # one core, as one SC-ASS device runs

Each record times a 50-step ``lax.scan`` with 2 x 32 rows per step (the SC-ASS VEM's shapes on one
device) written two ways, ``plain`` and ``as_in_library``, and reports the steady-state milliseconds
(min over ``--repeat`` calls after compilation) of each:

* ``lstm_cell_frame``: an LSTM recurrence (H = 128) on precomputed gates, the scanned frame fused into
  the cell (plain) or materialised first (``frame_inputs``);
* ``lstm_backward_product``: the backward step's product with the recurrent kernel, ``d @ K.T`` (plain)
  or with ``K.T`` made once before the loop (``row_major_transpose``);
* ``output_columns``: a (32, 256) x (256, 513) product per step (plain) or with the columns padded to
  528 (``pad_columns``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import emit, environment  # noqa: E402
from vdvae_jax.nn.layers import frame_inputs, pad_columns, row_major_transpose  # noqa: E402

T, S, B, H = 50, 2, 32, 128


def _best_ms(fn, args, repeat):
    fn = jax.jit(fn)
    jax.block_until_ready(fn(*args))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def _lstm(materialise):
    def run(kernel, gates):
        def cell(k, state, g):
            h, c = state
            i, f, gg, o = jnp.split(g + h @ k, 4, axis=-1)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        def step(state, g):
            return jax.vmap(cell)(kernel, state, frame_inputs(g) if materialise else g)

        zeros = jnp.zeros((S, B, H))
        return jax.lax.scan(step, (zeros, zeros), gates)[1]
    return run


def _backward(transposed_once):
    def run(kernel, ds):
        k_t = row_major_transpose(kernel) if transposed_once else None

        def step(carry, d):
            out = jnp.einsum("sbg,sgh->sbh", d, k_t) if transposed_once else jnp.einsum("sbg,shg->sbh", d, kernel)
            return carry + out[..., :1], out
        return jax.lax.scan(step, jnp.zeros((S, B, 1)), ds)[1]
    return run


def _columns(padded):
    def run(params, xs):
        p = pad_columns(params) if padded else params

        def step(carry, x):
            return carry, (jnp.einsum("sbk,skn->sbn", x, p["kernel"]) + p["bias"][:, None])[..., :513]
        return jax.lax.scan(step, 0.0, xs)[1]
    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = ap.parse_args(argv)
    emit({"bench": "environment", **environment()}, args.out)
    rng = np.random.default_rng(0)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape) * 0.05, jnp.float32)   # noqa: E731
    cases = {
        "lstm_cell_frame": (_lstm, (normal(S, H, 4 * H), normal(T, S, B, 4 * H))),
        "lstm_backward_product": (_backward, (normal(S, H, 4 * H), normal(T, S, B, 4 * H))),
        "output_columns": (_columns, ({"kernel": normal(S, 256, 513), "bias": normal(S, 513)},
                                      normal(T, S, B, 256))),
    }
    for name, (make, inputs) in cases.items():
        plain, library = (_best_ms(make(flag), inputs, args.repeat) for flag in (False, True))
        np.testing.assert_allclose(*(np.asarray(jax.jit(make(f))(*inputs)) for f in (False, True)),
                                   rtol=1e-4, atol=1e-5)
        emit({"bench": name, "steps": T, "rows": S * B, "plain_ms": plain, "as_in_library_ms": library,
              "speedup": plain / library}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
