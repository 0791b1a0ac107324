"""Shared benchmark helpers: compile vs steady-state timing, matmul FLOP/s, JSON-lines records."""

from __future__ import annotations

import json
import os
import platform
import time
import timeit
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vdvae_jax.runtime import configure_cpu

# Before the first JAX computation of every benchmark (see vdvae_jax.runtime); VDVAE_JAX_DEFAULT_XLA=1
# in the environment measures with XLA's default vector width instead.
configure_cpu()

__all__ = ["time_compiled", "matmul_flops_per_s", "xla_flops", "dot_flops", "environment", "emit"]


def time_compiled(fn: Callable, *args, repeat: int = 5, number: int = 1) -> dict:
    """Compile ``jax.jit(fn)`` for ``args`` (timed), then time steady-state calls.

    Returns ``compile_s`` (lowering + compilation + first run) and the min / median seconds per call.
    """
    jitted = jax.jit(fn)
    t0 = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))  # warm-up
    times = timeit.repeat(lambda: jax.block_until_ready(compiled(*args)), repeat=repeat, number=number)
    times = sorted(t / number for t in times)
    return {"compile_s": compile_s, "step_s_min": times[0], "step_s_median": times[len(times) // 2],
            "compiled": compiled}


def xla_flops(compiled) -> float | None:
    """FLOPs of a compiled computation from XLA's cost analysis (None if unavailable)."""
    try:
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        return float(cost.get("flops")) if cost and cost.get("flops") else None
    except Exception:  # cost analysis is best-effort on some backends
        return None


def matmul_flops_per_s(n: int = 2048, repeat: int = 5) -> float:
    """Achieved float32 FLOP/s of an n x n x n matmul on the default device (the roofline we compare to)."""
    a = jax.random.normal(jax.random.key(0), (n, n))
    b = jax.random.normal(jax.random.key(1), (n, n))
    r = time_compiled(jnp.matmul, a, b, repeat=repeat)
    return 2 * n**3 / r["step_s_min"]


def environment() -> dict:
    dev = jax.devices()[0]
    return {"jax": jax.__version__, "backend": jax.default_backend(), "device_kind": dev.device_kind,
            "n_devices": jax.device_count(), "python": platform.python_version(),
            "machine": platform.machine(), "xla_flags": os.environ.get("XLA_FLAGS", "")}


def emit(record: dict, path: str | None = None) -> None:
    """Print one JSON line (and append it to ``path`` if given)."""
    line = json.dumps({k: v for k, v in record.items() if k != "compiled"})
    print(line, flush=True)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def dot_flops(fn, *args, frames: int | None = None) -> tuple[float, float]:
    """FLOPs of the matrix products of ``fn(*args)``: 2 x output size x contracted size for every
    ``dot_general`` of its jaxpr, times the length of each enclosing scan (while loops of unknown trip
    count and cond branches are counted once / at their largest). Unused computations (e.g. gradients
    of frozen layers) are removed first by JAX's dead-code elimination.

    Returns ``(total, in_frame_loops)``: the second part is executed inside scans of length
    ``frames`` (the per-frame recurrent products), the rest are whole-sequence products."""
    closed = jax.make_jaxpr(fn)(*args)
    jaxpr = closed.jaxpr
    try:
        from jax._src.interpreters import partial_eval as pe

        jaxpr, _ = pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))
    except Exception:  # private API: count without DCE if it moved
        pass

    def sub_jaxprs(value):
        vals = value if isinstance(value, (tuple, list)) else (value,)
        for v in vals:
            if hasattr(v, "eqns"):
                yield v
            elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
                yield v.jaxpr

    def count(jx, in_frames: bool) -> np.ndarray:
        total = np.zeros(2)  # (all, inside frame loops)
        for eqn in jx.eqns:
            name = eqn.primitive.name
            if name == "dot_general":
                (lc, _), _ = eqn.params["dimension_numbers"]
                lhs = eqn.invars[0].aval.shape
                f = 2.0 * np.prod(eqn.outvars[0].aval.shape) * np.prod([lhs[d] for d in lc])
                total += (f, f if in_frames else 0.0)
            elif name == "scan":
                length = eqn.params["length"]
                total += length * count(eqn.params["jaxpr"].jaxpr, in_frames or length == frames)
            elif name == "cond":
                total += max((count(b.jaxpr, in_frames) for b in eqn.params["branches"]),
                             key=lambda c: c[0])
            else:
                for value in eqn.params.values():
                    for sub in sub_jaxprs(value):
                        total += count(sub, in_frames)
        return total

    total, in_frames = count(jaxpr, False)
    return float(total), float(in_frames)
