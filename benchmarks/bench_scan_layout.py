"""Layout probe: ``vmap`` over sources around a ``lax.scan`` versus a time-major scan with the sources
inside its step, on the SC-ASS decoder recursion (the sequential half of a MixDVAE SC-ASS iteration).

    python benchmarks/bench_scan_layout.py                  # T = 50, 32 mixtures, 2 sources, 513 bins
    python benchmarks/bench_scan_layout.py --smoke          # tiny sizes, for the test suite

The step is the shape of :func:`vdvae_jax.inference.mixdvae_source.scass_source_update`'s recursion
(input MLP 513→256 tanh, LSTM 256→128, decoder MLP 144→256 tanh→513, then the closed-form E-S posterior
and its sample) with random weights; only the layout differs:

* ``vmap``: per-source arrays source-major ``(S, T, B, F)``, ``jax.vmap`` over a per-source scan (what
  the VEM did before its state became time-major): XLA moves the source axis behind time for the scan and
  back for the outputs;
* ``time_major``: the same arrays ``(T, S, B, F)``, one scan whose step contracts per-source weights
  (``einsum``); shared inputs (mixture, its variance) stay ``(T, B, F)``;
* ``time_major+copies``: as ``time_major`` with the per-source inputs and outputs transposed from and
  to source-major inside the program (what a drop-in change of the recursion alone would pay).

Each record: best-of-``--repeat`` seconds of the jitted call after compilation, and GFLOP/s of the
recursion's matrix products. One JSON line per layout.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from common import emit, environment  # noqa: E402


def _cell(x, h, c, z_t, W):
    """One recursion step for a stack of sources: x (S, B, F) -> (h, c, v_theta)."""
    mm = lambda a, w: jnp.einsum("sbk,skn->sbn", a, w)   # noqa: E731
    a = jnp.tanh(mm(jnp.log(x + 1e-8), W["x_h"]))
    i, f, o, u = jnp.split(mm(jnp.concatenate([a, h], -1), W["lstm"]), 4, -1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(u)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    v_theta = jnp.exp(mm(jnp.tanh(mm(jnp.concatenate([h, z_t], -1), W["hz_x"])), W["out"]))
    return h, c, v_theta


def _posterior(v_theta, eta, vx, mre, mim, ure, uim):
    v_phi = 1.0 / (eta / vx + 1.0 / v_theta)
    w = v_phi * eta / vx
    scale = jnp.sqrt(v_phi / 2.0)
    re, im = w * mre + scale * ure, w * mim + scale * uim
    return v_phi, re, im, re * re + im * im


def recursion_vmap(W, z, eta, vx, mre, mim, ure, uim, x0):
    """Source-major inputs (S, T, B, ·); vmap over sources of a per-source scan."""
    def one(Ws, z, eta, ure, uim, x0):
        Ws = jax.tree.map(lambda a: a[None], Ws)

        def step(carry, inp):
            h, c, x = carry
            z_t, eta_t, vx_t, mre_t, mim_t, ure_t, uim_t = inp
            h, c, v_theta = _cell(x[None], h[None], c[None], z_t[None], Ws)
            h, c, v_theta = h[0], c[0], v_theta[0]
            v_phi, re, im, power = _posterior(v_theta, eta_t, vx_t, mre_t, mim_t, ure_t, uim_t)
            return (h, c, power), (v_theta, v_phi, re, im, power, h)

        B, H = x0.shape[0], W["lstm"].shape[-1] // 4
        zero = jnp.zeros((B, H), x0.dtype)
        return jax.lax.scan(step, (zero, zero, x0), (z, eta, vx, mre, mim, ure, uim))[1]

    return jax.vmap(one)(W, z, eta, ure, uim, x0)


def recursion_time_major(W, z, eta, vx, mre, mim, ure, uim, x0):
    """Time-major per-source inputs (T, S, B, ·), shared inputs (T, B, F); sources inside the step."""
    def step(carry, inp):
        h, c, x = carry
        z_t, eta_t, vx_t, mre_t, mim_t, ure_t, uim_t = inp
        h, c, v_theta = _cell(x, h, c, z_t, W)
        v_phi, re, im, power = _posterior(v_theta, eta_t, vx_t[None], mre_t[None], mim_t[None], ure_t, uim_t)
        return (h, c, power), (v_theta, v_phi, re, im, power, h)

    S, B, H = x0.shape[0], x0.shape[1], W["lstm"].shape[-1] // 4
    zero = jnp.zeros((S, B, H), x0.dtype)
    return jax.lax.scan(step, (zero, zero, x0), (z, eta, vx, mre, mim, ure, uim))[1]


def recursion_time_major_copies(W, z, eta, vx, mre, mim, ure, uim, x0):
    tm = lambda a: jnp.swapaxes(a, 0, 1)   # noqa: E731
    out = recursion_time_major(W, tm(z), tm(eta), vx, mre, mim, tm(ure), tm(uim), x0)
    return tuple(tm(o) for o in out)


def _inputs(T, B, S, F, Z, key):
    ks = jax.random.split(key, 10)
    W = {"x_h": jax.random.normal(ks[0], (S, F, 256)) * 0.05,
         "lstm": jax.random.normal(ks[1], (S, 256 + 128, 512)) * 0.05,
         "hz_x": jax.random.normal(ks[2], (S, 128 + Z, 256)) * 0.05,
         "out": jax.random.normal(ks[3], (S, 256, F)) * 0.05}
    mix_re, mix_im = jax.random.normal(ks[4], (T, B, F)), jax.random.normal(ks[5], (T, B, F))
    vx = 0.03 * (mix_re**2 + mix_im**2) + 1e-6
    per_source = dict(z=jax.random.normal(ks[6], (S, T, B, Z)),
                      eta=jax.random.uniform(ks[7], (S, T, B, F)),
                      ure=jax.random.uniform(ks[8], (S, T, B, F)), uim=jax.random.uniform(ks[9], (S, T, B, F)))
    return W, per_source, (vx, mix_re, mix_im), jnp.ones((S, B, F))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--batch", type=int, default=32, help="mixtures (one device's share of 64 on 2 devices)")
    ap.add_argument("--sources", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    T, B, S, F, Z = args.frames, args.batch, args.sources, 513, 16
    if args.smoke:
        T, B, F, args.repeat = 4, 2, 9, 1
    from bench_sources import _time

    emit({"bench": "environment", **environment()}, args.out)
    W, ps, (vx, mre, mim), x0 = _inputs(T, B, S, F, Z, jax.random.key(0))
    tm = lambda a: jnp.swapaxes(a, 0, 1)   # noqa: E731
    calls = {
        "vmap": (recursion_vmap, (W, ps["z"], ps["eta"], vx, mre, mim, ps["ure"], ps["uim"], x0)),
        "time_major": (recursion_time_major, (W, tm(ps["z"]), tm(ps["eta"]), vx, mre, mim, tm(ps["ure"]),
                                              tm(ps["uim"]), x0)),
        "time_major+copies": (recursion_time_major_copies,
                              (W, ps["z"], ps["eta"], vx, mre, mim, ps["ure"], ps["uim"], x0)),
    }
    flop = 2 * S * T * B * (F * 256 + 384 * 512 + (128 + Z) * 256 + 256 * F)
    ref = None
    for name, (fn, a) in calls.items():
        compile_s, wall, cpu, out = _time(fn, *a, repeat=args.repeat)
        if ref is None:
            ref = out
        else:  # same numbers, whatever the layout
            for x, y in zip(ref, out):
                if not jnp.allclose(x, y if x.shape == y.shape else tm(y), rtol=1e-4, atol=1e-5):
                    raise AssertionError(f"{name} differs from vmap")
        emit({"bench": "scan_layout", "layout": name, "T": T, "batch": B, "sources": S, "F": F,
              "compile_s": round(compile_s, 3), "wall_s": wall, "cpu_s": cpu, "gflops": flop / wall / 1e9}, args.out)


if __name__ == "__main__":
    main()
