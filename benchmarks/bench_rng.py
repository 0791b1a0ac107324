"""Threefry random bits on the CPU: JAX's rolled-loop lowering versus the straight-line one (JSON lines).

    python benchmarks/bench_rng.py                     # 2 x 2 x 50 x 32 x 513 uniforms (SC-ASS noise)
    python benchmarks/bench_rng.py --shape 1000000 --repeat 20

Draws ``jax.random.uniform`` (and ``normal``) of ``--shape`` with each lowering
(:func:`vdvae_jax.runtime.unroll_cpu_threefry` with ``unrolled=False`` / ``True``; the caches are cleared
in between), checks that the draws are identical, and reports ``compile_s`` and the steady-state
seconds (min over ``--repeat`` calls, wall and this process's CPU time) of each. Run it pinned to one
core (``taskset -c 0``) to compare per-core speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from common import emit, environment  # noqa: E402
from vdvae_jax.runtime import unroll_cpu_threefry  # noqa: E402


def _time(fn, key, repeat):
    t0 = time.perf_counter()
    out = np.asarray(jax.block_until_ready(fn(key)))
    first = time.perf_counter() - t0
    wall, cpu = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(key))
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return first - min(wall), min(wall), min(cpu), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", nargs="+", type=int, default=[2, 2, 50, 32, 513])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    args = ap.parse_args(argv)
    shape = tuple(args.shape)
    emit({"bench": "environment", **environment()}, args.out)
    key = jax.random.key(0)
    for law, draw in (("uniform", jax.random.uniform), ("normal", jax.random.normal)):
        results = {}
        for unrolled in (False, True):
            installed = unroll_cpu_threefry(unrolled)
            jax.clear_caches()
            fn = jax.jit(lambda k: draw(k, shape))
            c, wall, cpu, out = _time(fn, key, args.repeat)
            results[unrolled] = out
            emit({"bench": "threefry", "law": law, "shape": list(shape), "lowering": "straight" if installed
                  else "rolled (JAX's CPU default)", "compile_s": round(c, 3), "step_wall_s": wall,
                  "step_cpu_s": cpu, "ns_per_number": wall / out.size * 1e9}, args.out)
        if not np.array_equal(results[False], results[True]):
            raise SystemExit(f"{law}: the two lowerings gave different draws")
    unroll_cpu_threefry(True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
