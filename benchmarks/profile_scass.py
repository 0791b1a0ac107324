"""Where an SC-ASS VEM iteration spends its time: XLA's per-kernel profile of one device's iterations.

    taskset -c 0 python benchmarks/profile_scass.py             # 32 mixtures (one device's share), T = 50
    python benchmarks/profile_scass.py --batch 64 --length 100 --top 40

Runs ``--iters`` iterations of the reference-settings SC-ASS VEM (published SRNN architecture, random
weights, as ``bench_sources.py``) inside one jitted ``lax.scan`` under ``jax.profiler.trace`` and prints
the kernels by total time per iteration (milliseconds, calls per iteration, output shape, the JAX
operation). ``per_iteration_ms`` = (``--iters`` iterations - 1 iteration) / (``--iters`` - 1), from
separate timed calls outside the profiler. Kernels named ``ynn_fusion`` are YNNPACK library calls
(products and reductions); ``while`` lines contain the kernels listed under them.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_sources import SCASS_PUBLISHED, SCASS_SMOKE  # noqa: E402
from common import emit, environment  # noqa: E402
from vdvae_jax.inference import mixdvae as mv  # noqa: E402
from vdvae_jax.inference.base import run  # noqa: E402
from vdvae_jax.models.srnn_mixdvae import make_srnn_scass  # noqa: E402


def _kernel_info(hlo_text):
    """instruction name -> (output shape, JAX op name) from the compiled HLO text."""
    info = {}
    for line in hlo_text.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = (\S+?) ", line)
        if m:
            op = re.search(r'op_name="([^"]*)"', line)
            info[m.group(1)] = (m.group(2)[:32], op.group(1).split("/")[-1] if op else "")
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--length", type=int, default=50)
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--no-losses", action="store_true", help="SCASSOptions(losses=False)")
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes")
    args = ap.parse_args(argv)
    config = SCASS_SMOKE if args.smoke else SCASS_PUBLISHED
    if args.smoke:
        args.batch, args.length, args.iters = 2, 4, 2
    emit({"bench": "environment", **environment()}, args.out)
    rng = np.random.default_rng(0)
    params = mv.stack_params([make_srnn_scass(config).init(jax.random.key(s), jnp.zeros((3, config.x_dim)))
                              for s in range(2)])
    shape = (args.length, args.batch, config.x_dim)
    data = mv.scass_data(params, (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64))
    alg = mv.scass_vem(config, mv.SCASSOptions.reference(losses=not args.no_losses), record=False)
    state = jax.jit(alg.init)(jax.random.key(0), data)
    many = jax.jit(lambda k, s, d: run(alg, k, s, d, args.iters))
    one = jax.jit(lambda k, s, d: run(alg, k, s, d, 1))

    def best(fn):
        jax.block_until_ready(fn(jax.random.key(1), state, data))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(fn(jax.random.key(1), state, data))
            times.append(time.perf_counter() - t0)
        return min(times)

    per_iter = (best(many) - best(one)) / (args.iters - 1)
    with tempfile.TemporaryDirectory() as trace_dir:
        with jax.profiler.trace(trace_dir):
            jax.block_until_ready(many(jax.random.key(1), state, data))
        events = json.load(gzip.open(glob.glob(f"{trace_dir}/plugins/profile/*/*.trace.json.gz")[0]))["traceEvents"]
    info = _kernel_info(many.lower(jax.random.key(1), state, data).compile().as_text())
    totals = collections.defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.get("ph") == "X" and e["name"] in info:
            totals[e["name"]][0] += 1
            totals[e["name"]][1] += e["dur"] / 1e3
    emit({"bench": "scass_profile", "batch": args.batch, "T": args.length, "losses": not args.no_losses,
          "per_iteration_ms": per_iter * 1e3}, args.out)
    for name, (calls, ms) in sorted(totals.items(), key=lambda kv: -kv[1][1])[:args.top]:
        shape_, op = info[name]
        emit({"kernel": name, "ms_per_iteration": round(ms / args.iters, 3),
              "calls_per_iteration": calls / args.iters, "shape": shape_, "op": op}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
