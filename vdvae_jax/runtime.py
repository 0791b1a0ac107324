"""Process-level XLA settings that make this library's programs faster on CPUs.

XLA:CPU vectorises its own loops (every elementwise fusion, hence the gate nonlinearities of every LSTM
step) for 256-bit registers by default, even on CPUs with AVX-512. Asking for 512-bit vectors
(``--xla_cpu_prefer_vector_width=512``) halves the time of those loops here and made a batched SE-VEM
iteration with the RVAE prior 15 % faster (``python benchmarks/bench_vem.py`` with and without
``VDVAE_JAX_DEFAULT_XLA=1`` in the environment). Library matrix products (Eigen) are unaffected.

XLA reads its flags once, when JAX starts its backend (the first computation), so
:func:`prefer_wide_cpu_vectors` must run before that. The library's command line, experiments and
benchmarks call it first thing; in your own scripts, call it right after ``import vdvae_jax``, or set
``XLA_FLAGS=--xla_cpu_prefer_vector_width=512`` yourself. It changes only how loops are vectorised
(results can differ in the last bits, as with any change of summation order).

JAX lowers its Threefry random-bit hash on the CPU as a rolled loop of five round groups, each of which
reads and writes the whole counter arrays; :func:`unroll_cpu_threefry` gives the CPU the straight-line
lowering the other backends use (one fusion, the same bits): drawing 3.3 M uniforms (the SC-ASS VEM's
complex noise of one iteration) took 3.8 instead of 40 ms on one core (``python
benchmarks/bench_rng.py``). :func:`configure_cpu` applies both settings; ``VDVAE_JAX_DEFAULT_XLA=1``
in the environment turns both off.
"""

from __future__ import annotations

import math
import os
import warnings

__all__ = ["WIDE_VECTORS_FLAG", "configure_cpu", "cpu_has_avx512", "prefer_wide_cpu_vectors",
           "unroll_cpu_threefry"]

WIDE_VECTORS_FLAG = "--xla_cpu_prefer_vector_width=512"
UNROLL_MIN_SIZE = 1 << 16   # hashes per draw from which unroll_cpu_threefry unrolls


def cpu_has_avx512() -> bool:
    """True when ``/proc/cpuinfo`` lists ``avx512f`` (False where it cannot be read, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and " avx512f" in line for line in f)
    except OSError:
        return False


def prefer_wide_cpu_vectors() -> bool:
    """Add :data:`WIDE_VECTORS_FLAG` to ``XLA_FLAGS`` on AVX-512 CPUs, before JAX starts.

    Leaves a vector width already present in ``XLA_FLAGS`` alone (the user's choice wins) and does
    nothing where the CPU has no AVX-512, or with ``VDVAE_JAX_DEFAULT_XLA=1`` in the environment.
    Returns whether 512-bit vectors are requested; warns (and returns False) when JAX's backend has
    already started, since the flag would then be ignored.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_prefer_vector_width" in flags:
        return "xla_cpu_prefer_vector_width=512" in flags
    if os.environ.get("VDVAE_JAX_DEFAULT_XLA") == "1" or not cpu_has_avx512():
        return False
    try:
        from jax._src import xla_bridge

        started = xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # private API moved: set the flag anyway
        started = False
    if started:
        warnings.warn("prefer_wide_cpu_vectors() called after JAX started its backend; the flag is ignored. "
                      "Call it before the first JAX computation.", stacklevel=2)
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {WIDE_VECTORS_FLAG}".strip()
    return True


def unroll_cpu_threefry(unrolled: bool = True, *, min_size: int = UNROLL_MIN_SIZE) -> bool:
    """Lower JAX's Threefry hash on the CPU without its rolled loop (see the module docstring) for
    draws of at least ``min_size`` hashes; ``unrolled=False`` puts JAX's own CPU lowering back.

    Smaller draws keep the rolled loop: the straight-line hash of a tiny draw inside a large program
    (e.g. the MOT VEM step) can make XLA:CPU's compilation take minutes, for nothing to gain. The bits
    are the same either way (the straight-line lowering is the one JAX uses on other backends); only
    programs compiled afterwards are affected (``jax.clear_caches()`` drops those compiled before).
    Returns whether the straight-line lowering is installed: False with ``unrolled=False``, with
    ``VDVAE_JAX_DEFAULT_XLA=1`` in the environment, or where this JAX no longer has the private pieces
    it swaps.
    """
    try:
        from jax._src.interpreters import mlir
        from jax._src.random import threefry2x32 as tf

        primitive, straight, rolled = (tf.threefry2x32_p, tf._threefry2x32_lowering_rule,
                                       tf._threefry2x32_cpu_lowering_rule)
    except (ImportError, AttributeError):   # private API moved: keep JAX's own lowering
        return False
    on = unrolled and os.environ.get("VDVAE_JAX_DEFAULT_XLA") != "1"

    def by_size(ctx, *args):
        size = math.prod(ctx.avals_in[2].shape)
        return (straight if size >= min_size else rolled)(ctx, *args)

    mlir.register_lowering(primitive, by_size if on else rolled, platform="cpu")
    return on


def configure_cpu() -> dict:
    """:func:`prefer_wide_cpu_vectors` and :func:`unroll_cpu_threefry`; call it before the first JAX
    computation. Returns what each did."""
    return {"wide_vectors": prefer_wide_cpu_vectors(), "unrolled_threefry": unroll_cpu_threefry()}
