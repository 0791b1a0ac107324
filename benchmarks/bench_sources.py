"""MixDVAE VEM speed versus the number of sources and the sequence length (JSON lines).

    python benchmarks/bench_sources.py                       # everything below (long: tens of minutes)
    python benchmarks/bench_sources.py --parts sources --sources 1 2 4 8 16 32 --lengths 60
    python benchmarks/bench_sources.py --parts mot scass      # whole-run targets of the issue
    python benchmarks/bench_sources.py --parts mot scass --devices 2   # the same on both cores
    python benchmarks/bench_sources.py --smoke                # tiny, < 30 s, for the test suite
    python benchmarks/bench_sources.py --parts mot --xla-default   # MOT with XLA:CPU default options

Parts (each record has ``compile_s`` = lowering + XLA compilation (wall), and steady-state seconds = min
over ``--repeat`` calls after a warm-up, both as wall time (``*_wall_s`` / ``step_s``) and as this
process's CPU time (``*_cpu_s``, ``time.process_time``; XLA may use both cores, so an idle machine's wall
time is between cpu/2 and cpu). On a shared, overloaded CPU the wall times are inflated by the other
processes; the speed-ups are computed from CPU time and are approximate either way:

* ``sources``: one MOT VEM iteration (E-W + E-S/E-Z for all sources, ``--batch`` windows of T frames,
  K = ``--detections`` (default 3; 0 = K = S) detections per frame, so that the work per source does not
  grow with S) for S in ``--sources`` and T in ``--lengths``, with the sources mapped by
  ``vmap``, ``lax.map`` or a Python loop over sources unrolled inside the one jitted step
  (``source_map`` = vmap / map / loop of :func:`vdvae_jax.inference.mixdvae.mot_vem`). Reports
  ``per_source_cpu_s`` = step / S and ``vmap_efficiency`` = per-source time at S = 1 / per-source time at S
  (CPU time, same mode and T; 1.0 = flat per-source cost, > 1 = batching over sources amortises overhead).
* ``mot``: the whole reference MOT run: ``--batch`` (128) windows, 3 sources, T in ``--lengths``, the
  reference initialisation (30-frame chunks x 20 iterations, piecewise constant) then ``--iters`` (70)
  iterations (no per-iteration posteriors kept, ``record=False``). Reference PyTorch on this 2-core machine
  (issue #5): init 14.9 s + 0.80 s/iteration at T = 60, 30.1 + 1.94 at T = 120, 83.4 + 3.93 at T = 300.
  ``whole_run_wall_s``: one :func:`~vdvae_jax.inference.mixdvae.solve` call (init + iterations, steady
  state; ``compile_s`` = first call minus steady), with ``--devices N`` the windows split over N devices
  running at once; ``speedup_whole_run_wall`` = reference / that. With one device, init and iterations
  are also timed apart (``init_*``, ``iters_*``, ``speedup_init_cpu``, ``speedup_per_iter_cpu``).
* ``scass``: one SC-ASS iteration, ``--scass-batch`` (64) mixtures, 2 sources with the published
  SC-ASS SRNN architecture (random weights of the same shapes), F = 513, T in ``--scass-lengths``
  (50 / 100 / 300). Reference: 0.51 / 1.03 / 4.18 s per iteration. With ``--devices N`` the mixtures are
  split over N devices through ``solve`` and an iteration is timed as (``--scass-iters`` + 1 iterations
  minus 1 iteration) / ``--scass-iters``. ``dot_gflop_per_iter``: the matrix products of one iteration
  of the whole batch, counted on the step's jaxpr (``common.dot_flops``; ``dot_gflop_in_frame_loops``:
  the part inside the scans over frames). It runs the reference settings, which compute the printed
  losses and the ELBO every iteration as the reference does; ``--scass-no-losses`` times the same
  iteration without them (``SCASSOptions(losses=False)``).

``--devices N`` on a CPU makes N CPU devices (``jax_num_cpu_devices``; one per core is the useful
setting): each runs its share of the windows on one core, where one device leaves the second core
mostly idle (the recursions are serial and their matrices too small for XLA's intra-op threads).

The MOT prior is the published architecture (``MOTSRNNConfig()``) with random weights: the cost does not
depend on the values. Data: synthetic linear tracks with box noise.
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

from common import dot_flops, emit, environment  # noqa: E402
from vdvae_jax.inference import mixdvae as mv  # noqa: E402
from vdvae_jax.inference.base import jit_small, run  # noqa: E402
from vdvae_jax.models.srnn_mixdvae import (MOTSRNNConfig, SCASSSRNNConfig, make_srnn_mot,  # noqa: E402
                                           make_srnn_scass)

REF_MOT = {60: (14.9, 0.80), 120: (30.1, 1.94), 300: (83.4, 3.93)}
REF_SCASS = {50: 0.51, 100: 1.03, 300: 4.18}
SCASS_PUBLISHED = SCASSSRNNConfig(x_dim=513, z_dim=16, dense_x_h=(256,), dim_rnn_h=128, dense_hx_g=(256,),
                                  dim_rnn_g=128, dense_gz_z=(64, 32), dense_hz_z=(64, 32), dense_hz_x=(256,))
SCASS_SMOKE = SCASSSRNNConfig(x_dim=33, z_dim=4, dense_x_h=(16,), dim_rnn_h=8, dense_hx_g=(16,), dim_rnn_g=8,
                              dense_gz_z=(8,), dense_hz_z=(8,), dense_hz_x=(16,))


def tracks(T, B, S, seed=0):
    """(T, B, S, 4) noisy linear box tracks in normalised coordinates (x1, y1, x2, y2)."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(0.1, 0.8, (B, S, 2))
    size = rng.uniform(0.03, 0.1, (B, S, 2))
    vel = rng.uniform(-2e-3, 2e-3, (B, S, 2))
    xy = start[None] + vel[None] * np.arange(T)[:, None, None, None]
    return (np.concatenate([xy, xy + size[None]], -1) + 1e-3 * rng.standard_normal((T, B, S, 4))).astype(np.float32)


def mot_params(seed=0):
    return make_srnn_mot(MOTSRNNConfig()).init(jax.random.key(seed), jnp.zeros((3, 4)))


def bench_sources(args, out):
    params = mot_params()
    per_source_1 = {}
    for T in args.lengths:
        for S in args.sources:
            K = args.detections or S
            boxes = tracks(T, args.batch, max(S, K))
            frame0 = np.moveaxis(boxes[0, :, :S], 1, 0)                    # (S, B, 4)
            data = mv.mot_data(params, boxes[:, :, :K], frame0=frame0)
            for mode in args.modes:
                alg = mv.mot_vem(MOTSRNNConfig(), mv.MOTOptions(init="constant"), source_map=mode, record=False)
                state = alg.init(jax.random.key(0), data)
                c, wall, cpu, _ = _time(alg.step, jax.random.key(1), state, data, repeat=args.repeat,
                                       small=not args.xla_default)
                per = cpu / S
                if S == 1:
                    per_source_1[(mode, T)] = per
                base = per_source_1.get((mode, T))
                emit({"bench": "sources", "mode": mode, "xla_default": args.xla_default, "S": S, "K": K, "T": T,
                      "batch": args.batch,
                      "compile_s": round(c, 3), "step_s": wall, "step_cpu_s": cpu, "per_source_cpu_s": per,
                      "vmap_efficiency": (base / per) if base else None}, out)


def _best(call, repeat):
    """(best wall s, best process-CPU s, last result) of ``repeat`` blocking calls of ``call()``."""
    best, best_cpu, res = float("inf"), float("inf"), None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        res = jax.block_until_ready(call())
        best, best_cpu = min(best, time.perf_counter() - t0), min(best_cpu, time.process_time() - c0)
    return best, best_cpu, res


def _time(fn, *a, repeat, small=False):
    """(compile wall s, best steady wall s, best steady process-CPU s, result); ``small``: compile with
    :func:`~vdvae_jax.inference.base.jit_small` (as ``solve`` and ``track`` do for MOT)."""
    jitted = jit_small(fn) if small else jax.jit(fn)
    t0 = time.perf_counter()
    compiled = jitted.lower(*a).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*a))
    best, best_cpu, res = _best(lambda: compiled(*a), repeat)
    return compile_s, best, best_cpu, res


def bench_mot(args, out):
    params = mot_params()
    options = mv.MOTOptions.reference(init_chunk_len=args.chunk, init_iters=args.init_iters)
    alg = mv.mot_vem(MOTSRNNConfig(), options, record=False)
    small = not args.xla_default
    for T in args.lengths:
        data = mv.mot_data(params, tracks(T, args.batch, 3, seed=T))
        rec = {"bench": "mot_whole_run", "xla_default": args.xla_default, "T": T, "batch": args.batch, "sources": 3,
               "iters": args.iters, "init_iters": args.init_iters, "devices": args.devices}
        if args.devices == 1:   # init and iterations timed apart
            c_init, w_init, t_init, state = _time(alg.init, jax.random.key(0), data, repeat=args.repeat, small=small)
            c_run, w_run, t_run, _ = _time(lambda k, s, d: run(alg, k, s, d, args.iters), jax.random.key(1), state,
                                           data, repeat=args.repeat, small=small)
            rec.update(compile_init_s=round(c_init, 3), compile_iters_s=round(c_run, 3), init_wall_s=w_init,
                       iters_wall_s=w_run, init_cpu_s=t_init, iters_cpu_s=t_run, per_iter_cpu_s=t_run / args.iters)
        # the whole run as users call it: mixdvae.solve (windows split across --devices)
        c, wall, cpu = _time_solve(alg, data, args.iters, args.devices, args.repeat)
        rec.update(compile_s=round(c, 3), whole_run_wall_s=wall, whole_run_cpu_s=cpu)
        if T in REF_MOT and args.iters and args.init_iters == 20 and args.chunk == 30:
            ref_init, ref_iter = REF_MOT[T]
            ref_total = ref_init + ref_iter * args.iters
            rec.update(ref_whole_run_s=ref_total, speedup_whole_run_wall=ref_total / wall)
            if args.devices == 1:
                rec.update(speedup_init_cpu=ref_init / t_init, speedup_per_iter_cpu=ref_iter / (t_run / args.iters))
        emit(rec, out)


def _time_solve(alg, data, n_iter, devices, repeat):
    """(compile + first call wall s, best steady wall s, best steady process-CPU s) of
    :func:`~vdvae_jax.inference.mixdvae.solve` (which picks its own compiler options: ``--xla-default``
    does not apply here)."""
    devices = None if devices == 1 else devices
    call = lambda: mv.solve(alg, jax.random.key(1), data, n_iter, devices=devices)   # noqa: E731
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - t0
    best, best_cpu, _ = _best(call, repeat)
    return first - best, best, best_cpu


def bench_scass(args, out, config):
    rng = np.random.default_rng(0)
    params = mv.stack_params([make_srnn_scass(config).init(jax.random.key(s), jnp.zeros((3, config.x_dim)))
                              for s in range(2)])
    options = mv.SCASSOptions.reference(losses=not args.scass_no_losses)
    alg = mv.scass_vem(config, options, record=False, source_map=args.scass_source_map)
    for T in args.scass_lengths:
        shape = (T, args.scass_batch, config.x_dim)
        mix = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
        data = mv.scass_data(params, mix)
        rec = {"bench": "scass_iter", "T": T, "batch": args.scass_batch, "sources": 2, "F": config.x_dim,
               "devices": args.devices, "source_map": args.scass_source_map, "losses": options.losses}
        state = jax.jit(alg.init)(jax.random.key(0), data)
        flops, in_loops = dot_flops(alg.step, jax.random.key(1), state, data, frames=T)
        rec.update(dot_gflop_per_iter=flops / 1e9, dot_gflop_in_frame_loops=in_loops / 1e9)
        if args.devices == 1:   # one step, timed alone
            c, wall, cpu, _ = _time(alg.step, jax.random.key(1), state, data, repeat=args.repeat)
        else:                   # solve() on the devices: (n + 1 iterations - 1 iteration) / n
            n = args.scass_iters
            c, w1, c1 = _time_solve(alg, data, 1, args.devices, args.repeat)
            _, wn, cn = _time_solve(alg, data, n + 1, args.devices, args.repeat)
            wall, cpu = (wn - w1) / n, (cn - c1) / n
        rec.update(compile_s=round(c, 3), per_iter_wall_s=wall, per_iter_cpu_s=cpu)
        if T in REF_SCASS and config is SCASS_PUBLISHED:
            rec.update(ref_per_iter_s=REF_SCASS[T], speedup_wall=REF_SCASS[T] / wall)
        emit(rec, out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["sources", "mot", "scass"], choices=["sources", "mot", "scass"])
    ap.add_argument("--sources", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32])
    ap.add_argument("--lengths", nargs="+", type=int, default=[60, 120, 300])
    ap.add_argument("--modes", nargs="+", default=list(mv.SOURCE_MAPS), choices=list(mv.SOURCE_MAPS))
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--detections", type=int, default=3,
                    help="K detections per frame in the sources sweep (0: K = S, then E-W/E-S work grows as S*K)")
    ap.add_argument("--iters", type=int, default=70)
    ap.add_argument("--init-iters", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=30)
    ap.add_argument("--scass-batch", type=int, default=64)
    ap.add_argument("--scass-lengths", nargs="+", type=int, default=[50, 100, 300])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--devices", type=int, default=1,
                    help="mot / scass: split the windows / mixtures over this many devices (CPU: one per core, "
                         "made with jax_num_cpu_devices) running at once (mixdvae.solve(devices=...))")
    ap.add_argument("--scass-source-map", default="vmap", choices=mv.SOURCE_MAPS,
                    help="scass: how the per-source update is mapped over the sources")
    ap.add_argument("--scass-iters", type=int, default=4, help="scass with --devices > 1: iterations timed")
    ap.add_argument("--scass-no-losses", action="store_true",
                    help="scass: SCASSOptions(losses=False), no printed losses / ELBO per iteration (the "
                         "reference computes them, so the speed-up column is then not like for like)")
    ap.add_argument("--out", default=None, help="append the JSON lines to this file")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (< 30 s)")
    ap.add_argument("--xla-default", action="store_true",
                    help="MOT parts: compile the timed step / init / iterations with XLA's default CPU options "
                         "instead of jit_small's (the whole-run solve() record keeps solve's own choice)")
    args = ap.parse_args(argv)
    if args.devices > 1:   # one CPU device per core (must precede JAX's first computation)
        jax.config.update("jax_num_cpu_devices", args.devices)
    scass_config = SCASS_PUBLISHED
    if args.smoke:
        args.sources, args.lengths, args.batch, args.iters = [2], [10], 2, 2
        args.init_iters, args.chunk, args.scass_batch, args.scass_lengths, args.repeat = 1, 5, 2, [4], 1
        scass_config = SCASS_SMOKE
    emit({"bench": "environment", **environment()}, args.out)
    if "sources" in args.parts:
        bench_sources(args, args.out)
    if "mot" in args.parts:
        bench_mot(args, args.out)
    if "scass" in args.parts:
        bench_scass(args, args.out, scass_config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
