"""The contract of test-time algorithms: a pure ``(init, step)`` pair.

An algorithm is an :class:`Algorithm` NamedTuple of two pure functions:

* ``init(key, ...) -> state``: the starting point (its extra arguments depend on the algorithm:
  model parameters, observed data, optional explicit initial values);
* ``step(key, state, data) -> (state, info)``: one iteration. ``state`` (a NamedTuple) is what carries
  over between iterations, ``info`` (a NamedTuple) the diagnostics of this iteration (losses, ELBO
  terms, optionally intermediates). ``data`` is the fixed observation, closed over by nothing.

``key`` comes first and is a typed PRNG key (``jax.random.key``) or, for conformance checks, a pytree of
pre-drawn noise arrays that the algorithm documents. The library never jits: callers wrap ``step`` in
``jax.jit`` once, or use :func:`run`, which runs a fixed number of iterations as one ``lax.scan``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Algorithm", "run", "SMALL_MATRIX_CPU_OPTIONS", "small_matrix_compiler_options", "jit_small",
           "resolve_devices"]

#: XLA:CPU compiler options for models whose matrices are tiny (the MixDVAE MOT SRNN: 4-32 wide).
#: Recent XLA:CPU hands dots and reductions to YNNPACK library fusions; for contractions over 4-16
#: rows and reductions over 3-4 coordinates these run several times slower than XLA's own loops,
#: and they break a ``lax.scan`` body into separate library calls. An empty list turns them off
#: (``benchmarks/bench_sources.py --parts mot --xla-default`` measures the difference).
SMALL_MATRIX_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


class Algorithm(NamedTuple):
    """A test-time algorithm as pure functions (see module docstring)."""

    init: Callable[..., Any]
    step: Callable[..., tuple[Any, Any]]


def _is_typed_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def run(algorithm: Algorithm, key, state, data, n_iter: int | None = None):
    """Runs ``n_iter`` iterations of ``algorithm.step`` as one ``lax.scan``.

    Args:
      algorithm: the ``(init, step)`` pair.
      key: a typed PRNG key, split into ``n_iter`` per-iteration keys; or a pytree of per-iteration
        noise whose leaves all have the iteration axis first (``n_iter`` is then read from it).
      state: the initial state (from ``algorithm.init``).
      data: the fixed data passed to every step.
      n_iter: number of iterations (required with a key).

    Returns:
      ``(final_state, infos)`` with every leaf of ``infos`` stacked along a leading iteration axis.
    """
    if _is_typed_key(key):
        if n_iter is None:
            raise ValueError("n_iter is required when a PRNG key drives the iterations")
        xs = jax.random.split(key, n_iter)
    else:
        leaves = jax.tree.leaves(key)
        if not leaves:
            raise ValueError("key must be a typed PRNG key or a non-empty pytree of noise arrays")
        length = leaves[0].shape[0]
        if n_iter is not None and n_iter != length:
            raise ValueError(f"n_iter={n_iter} but the noise pytree has {length} iterations")
        xs = key

    def body(s, k):
        return algorithm.step(k, s, data)

    return jax.lax.scan(body, state, xs)


@functools.cache
def small_matrix_compiler_options() -> dict | None:
    """:data:`SMALL_MATRIX_CPU_OPTIONS` when the default backend is a CPU whose XLA accepts them (probed
    once with a trivial compilation), else ``None`` (other backends, or an XLA without the option)."""
    if jax.default_backend() != "cpu":
        return None
    try:
        jax.jit(lambda x: x + 1, compiler_options=SMALL_MATRIX_CPU_OPTIONS).lower(1.0).compile()
    except Exception:  # noqa: BLE001 - an XLA that does not know the option: plain compilation
        return None
    return dict(SMALL_MATRIX_CPU_OPTIONS)


def jit_small(fun: Callable, **jit_kwargs) -> Callable:
    """``jax.jit`` with :func:`small_matrix_compiler_options` (for tiny-matrix models on the CPU)."""
    return jax.jit(fun, compiler_options=small_matrix_compiler_options(), **jit_kwargs)


def resolve_devices(devices) -> tuple:
    """Devices to split a batch over: ``None`` -> ``()`` (the default device, no split); an int ``n`` -> the
    first ``n`` local devices; a sequence of devices as given. On a CPU, JAX shows one device unless told
    otherwise before it starts: ``jax.config.update("jax_num_cpu_devices", n)`` (or ``XLA_FLAGS=
    --xla_force_host_platform_device_count=n``) gives one per core."""
    if devices is None:
        return ()
    local = jax.local_devices()
    if isinstance(devices, int):
        if not 1 <= devices <= len(local):
            raise ValueError(f"devices={devices}, but {len(local)} local device(s) exist (on a CPU: "
                             "jax.config.update('jax_num_cpu_devices', n) before JAX starts)")
        return tuple(local[:devices])
    return tuple(devices)
