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
"""

from __future__ import annotations

import os
import warnings

__all__ = ["WIDE_VECTORS_FLAG", "cpu_has_avx512", "prefer_wide_cpu_vectors"]

WIDE_VECTORS_FLAG = "--xla_cpu_prefer_vector_width=512"


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
