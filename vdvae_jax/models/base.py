"""The DVAE contract shared by every model of the zoo.

A DVAE models a sequence :math:`x_{1:T}` with latents :math:`z_{1:T}`:

.. math::
    p(x_{1:T}, z_{1:T}) = \\prod_t p(x_t | x_{1:t-1}, z_{1:t}) \\, p(z_t | x_{1:t-1}, z_{1:t-1}),
    \\qquad q(z_{1:T} | x_{1:T}) = \\prod_t q(z_t | z_{1:t-1}, x_{1:T}),

trained by minimising the negative ELBO, normalised per frame as the reference does:

.. math::
    \\mathcal L = \\frac1T \\Big[ \\sum_t -\\log p(x_t | \\cdot) + \\beta \\sum_t
        \\mathrm{KL}\\big(q(z_t | \\cdot) \\| p(z_t | \\cdot)\\big) \\Big],

where sequential priors are evaluated at the sampled past (single-sample estimate, analytic per-step KL).

A model is a :class:`DVAE` bundle of pure functions written for one **time-major** sequence
``x: (T, x_dim)``; they also accept batch axes between time and features, ``x: (T, B, x_dim)``, and
then run the batch inside each scan step. (``jax.vmap`` over sequences gives the same numbers, but
vmapping a ``lax.scan`` makes JAX carry per-example gradients of the recurrent weights through the
backward loop: one LSTM layer, B = 128, T = 50, forward + backward took 0.26 s vmapped vs 0.12 s batched
on 2 CPU cores; :func:`batch_loss` therefore passes the whole batch.) Stochastic functions take a ``noise`` argument that is either a typed PRNG
key (``jax.random.key``) or a dict of pre-drawn arrays (``{"z": (T, [B,] z_dim) standard normals,
...}``), which is how the conformance vectors inject the reference's noise.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.extend.random import threefry2x32_p

from vdvae_jax.distributions import KL_MODES, Gaussian, kl_gaussian, observation_nll
from vdvae_jax.nn.layers import ACTIVATIONS

__all__ = [
    "DVAEConfig",
    "DVAE",
    "Outputs",
    "LossTerms",
    "is_key",
    "noise_array",
    "step_noise",
    "draw_step",
    "drawn_steps",
    "noise_pair",
    "noise_pair_stacked",
    "loss_from_outputs",
    "network_input",
    "batch_loss",
    "count_params",
]


@dataclasses.dataclass(frozen=True)
class DVAEConfig:
    """Options every model shares.

    Attributes:
      x_dim: observation size (513 bins for the 1024-point STFT, 4 for boxes).
      z_dim: latent size per frame.
      activation: hidden activation of every MLP block (``tanh`` in the reference).
      observation: ``"is"`` (complex Gaussian / Itakura-Saito on power spectra; decoder outputs a
        log-variance) or ``"gaussian"`` (real Gaussian; decoder outputs mean and log-variance).
      kl_mode: ``"exact"`` KL or the reference's ``"reference"`` form without the ``-1``.
      kl_var_eps: epsilon added to the prior variance inside the KL (1e-10 as in DVAE_SE training).
      is_eps: epsilon added to the predicted variance inside the IS divergence (1e-10 in training).
      gaussian_reference_nll: for ``observation="gaussian"``, use the reference's
        ``sum(logvar + (x-mean)^2/var)`` instead of the exact NLL.
      input_transform: how the networks read x: ``"none"`` (the reference: raw power spectra, values
        up to ~1e5 that saturate the first layers and slow training down) or ``"log"``
        (:math:`\\log(x + \\epsilon)` with :math:`\\epsilon` = ``input_floor``). The likelihood uses the raw x.
      input_floor: the floor of the ``"log"`` transform.
    """

    x_dim: int = 513
    z_dim: int = 16
    activation: str = "tanh"
    observation: str = "is"
    kl_mode: str = "exact"
    kl_var_eps: float = 1e-10
    is_eps: float = 1e-10
    gaussian_reference_nll: bool = False
    input_transform: str = "none"
    input_floor: float = 1e-6

    def __post_init__(self):
        if self.x_dim < 1 or self.z_dim < 1:
            raise ValueError(f"x_dim and z_dim must be positive, got {self.x_dim}, {self.z_dim}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; one of {sorted(ACTIVATIONS)}")
        if self.observation not in ("is", "gaussian"):
            raise ValueError(f"observation must be 'is' or 'gaussian', got {self.observation!r}")
        if self.kl_mode not in KL_MODES:
            raise ValueError(f"kl_mode must be one of {KL_MODES}, got {self.kl_mode!r}")
        if self.input_transform not in ("none", "log"):
            raise ValueError(f"input_transform must be 'none' or 'log', got {self.input_transform!r}")
        for field in dataclasses.fields(self):  # every MLP width list of every model
            value = getattr(self, field.name)
            if field.name.startswith("dense_") and value is not None and not isinstance(value, tuple):
                raise TypeError(f"{field.name} must be a tuple of ints, got {value!r}")


class Outputs(NamedTuple):
    """Everything one forward pass computes for one sequence.

    Attributes:
      z: sampled latents (T, z_dim).
      q: posterior Gaussian (T, z_dim).
      p: prior Gaussian (T, z_dim), evaluated at the sampled past.
      x_out: decoder Gaussian (T, x_dim); for the IS model ``mean`` is zero and ``logvar`` = y.
      extras: model-specific intermediates (RNN outputs, ...), for conformance checks.
    """

    z: jax.Array
    q: Gaussian
    p: Gaussian
    x_out: Gaussian
    extras: dict


class LossTerms(NamedTuple):
    """Per-frame loss terms: ``loss = recon + kl_weight * kl`` (``kl_weight`` includes beta)."""

    loss: jax.Array
    recon: jax.Array
    kl: jax.Array


class DVAE(NamedTuple):
    """A model as pure functions (see module docstring).

    Attributes:
      name: registry name.
      config: the frozen config the functions close over.
      init: ``(key, x) -> params``.
      forward: ``(params, x, noise, **mode) -> Outputs``; the whole generative + inference pass.
      encode: ``(params, x, noise) -> (z, q)``.
      decode: ``(params, z, x) -> Gaussian`` over x (``x`` feeds autoregressive decoders; ignored by
        models whose decoder depends on z only).
      prior: ``(params, z, x) -> Gaussian`` over z at the sampled past.
      features: optional ``(params, x, mask=None) -> feats``, the deterministic x-only part of the
        encoder (a pytree); a model that has it also takes ``forward(..., features=feats)``, which
        replays that part instead of recomputing it (same outputs and gradients, provided ``feats``
        came from the same params, x and mask). None for models without such a part.
    """

    name: str
    config: Any
    init: Callable
    forward: Callable
    encode: Callable
    decode: Callable
    prior: Callable
    features: Callable | None = None

    def loss(self, params, x, noise, *, beta=1.0, **mode) -> tuple[jax.Array, LossTerms]:
        """Per-frame negative ELBO of one sequence (see :func:`loss_from_outputs`)."""
        out = self.forward(params, x, noise, **mode)
        terms = loss_from_outputs(self.config, x, out, beta)
        return terms.loss, terms


# ----------------------------------------------------------------------------------------------
# Noise: a typed key or a dict of pre-drawn arrays.


def is_key(noise) -> bool:
    """True for a typed PRNG key; raw uint32 keys are rejected with a clear error."""
    if isinstance(noise, jax.Array) and jnp.issubdtype(noise.dtype, jax.dtypes.prng_key):
        return True
    if hasattr(noise, "dtype") and noise.dtype == jnp.uint32:
        raise TypeError("pass a typed key from jax.random.key(seed), not a raw uint32 PRNGKey")
    return False


def _subkey(key, name: str):
    return jax.random.fold_in(key, zlib.crc32(name.encode()) & 0x7FFFFFFF)


def noise_array(noise, name: str, shape: tuple, kind: str = "normal") -> jax.Array:
    """The noise array ``name`` of ``shape``: drawn from the key, or looked up in the dict."""
    if is_key(noise):
        key = _subkey(noise, name)
        if kind == "normal":
            return jax.random.normal(key, shape)
        return jax.random.uniform(key, shape)
    try:
        arr = jnp.asarray(noise[name])
    except (KeyError, TypeError) as err:
        raise KeyError(f"noise must be a jax.random.key or a dict with entry {name!r}") from err
    if arr.shape != tuple(shape):
        raise ValueError(f"noise[{name!r}] has shape {arr.shape}, expected {tuple(shape)}")
    return arr


def step_noise(noise, name: str, length: int):
    """Scan inputs for per-step noise: ``length`` keys, or the (T, ...) array from the dict."""
    if is_key(noise):
        return jax.random.split(_subkey(noise, name), length)
    try:
        arr = jnp.asarray(noise[name])
    except (KeyError, TypeError) as err:
        raise KeyError(f"noise must be a jax.random.key or a dict with entry {name!r}") from err
    if arr.shape[0] != length:
        raise ValueError(f"noise[{name!r}] has {arr.shape[0]} steps, expected {length}")
    return arr


def drawn_steps(noise, name: str, length: int, shape: tuple, kind: str = "normal") -> jax.Array:
    """Per-step noise drawn up front: (length, *shape), equal to what :func:`step_noise` + :func:`draw_step`
    draw inside a scan (same per-step keys), but as one parallel draw outside the loop."""
    steps = step_noise(noise, name, length)
    if not is_key(noise):
        return steps
    draw = jax.random.normal if kind == "normal" else jax.random.uniform
    return jax.vmap(lambda k: draw(k, shape))(steps)


def _floats_from_bits(bits: jax.Array, kind: str) -> jax.Array:
    """uint32 bits -> float32 U[0, 1) (``"uniform"``) or N(0, 1) (``"normal"``), by the construction of
    ``jax.random.uniform`` / ``jax.random.normal``: the top 23 bits become the mantissa of a float in
    [1, 2); a normal is :math:`\\sqrt 2\\, \\mathrm{erf}^{-1}(u)`, u uniform on (-1, 1)."""
    one = jnp.asarray(1.0, jnp.float32)
    u = jax.lax.bitcast_convert_type((bits >> 9) | jax.lax.bitcast_convert_type(one, jnp.uint32),
                                     jnp.float32) - one
    if kind == "uniform":
        return u
    lo = jnp.nextafter(jnp.asarray(-1.0, jnp.float32), one)
    return jnp.sqrt(2.0).astype(jnp.float32) * jax.lax.erf_inv(jnp.maximum(lo, u * (one - lo) + lo))


def noise_pair(noise, names: tuple[str, str], shape: tuple, kind: str = "normal"):
    """Two independent noise arrays of ``shape`` (e.g. the real and imaginary parts of a complex draw):
    from the dict entries ``names``, or from the key in **one** Threefry pass.

    Each Threefry-2x32 hash gives two 32-bit words; ``jax.random`` (with ``jax_threefry_partitionable``,
    the default) keeps one word per hash, so two arrays from this function cost half the hashes of two
    ``jax.random`` calls (float32 only; another key implementation falls back to two ``jax.random`` draws).
    The values are distributed as ``jax.random.uniform`` / ``normal`` but are not the same numbers.
    """
    if not is_key(noise):
        return tuple(noise_array(noise, n, shape, kind) for n in names)
    key = _subkey(noise, "+".join(names))
    if str(jax.random.key_impl(key)) != "threefry2x32":
        return tuple(noise_array(key, n, shape, kind) for n in names)
    pair = _hashed_pair(jax.random.key_data(key), shape, kind, None)
    return jnp.real(pair), jnp.imag(pair)


def noise_pair_stacked(keys, names: tuple[str, str], shape: tuple, kind: str = "normal", axis: int = 0,
                       as_complex: bool = False):
    """:func:`noise_pair` for a stack of keys ``keys`` (S,) at once: two arrays of ``shape`` with the key
    axis inserted at ``axis``, whose slice n equals ``noise_pair(keys[n], names, shape, kind)`` (Threefry
    keys; other key implementations are drawn by ``jax.vmap`` of :func:`noise_pair`, the same law).

    Drawn where they are used (e.g. the sources axis 1 of time-major SC-ASS arrays), the arrays need no
    transpose, which ``jax.vmap`` of :func:`noise_pair` over the keys costs (its batch axis comes first).
    ``as_complex``: one complex array, first + i second (as the hash writes them; no pass to split them)."""
    subkeys = jax.vmap(lambda k: _subkey(k, "+".join(names)))(keys)
    if str(jax.random.key_impl(subkeys)) != "threefry2x32":
        pairs = jax.vmap(lambda k: noise_pair(k, names, shape, kind))(keys)
        first, second = (jnp.moveaxis(a, 0, axis) for a in pairs)
        return jax.lax.complex(first, second) if as_complex else (first, second)
    pair = _hashed_pair(jax.random.key_data(subkeys), shape, kind, axis)
    return pair if as_complex else (jnp.real(pair), jnp.imag(pair))


def _hashed_pair(key_data, shape: tuple, kind: str, axis):
    """The two float arrays of :func:`noise_pair` as one complex array (first + i second), from raw key
    words, (2,) or, with ``axis``, (S, 2) stacked keys whose axis is inserted at ``axis`` of the output.

    The hash of counts (c, c + n), c = 0..n-1, is what ``jax.extend.random.threefry_2x32`` computes for
    the counts 0..2n-1, with its two words kept apart and in shape (no concatenation to copy). The pair
    is written as one complex array: XLA:CPU would otherwise give each word its own fusion and hash twice.
    """
    n = math.prod(shape)
    if 2 * n >= 2**32:
        raise ValueError(f"noise_pair draws at most 2**31 values per array, asked for {n}")
    count = jnp.arange(n, dtype=jnp.uint32).reshape(shape)
    k1, k2 = key_data[..., 0], key_data[..., 1]
    if axis is not None:
        out = shape[:axis] + (key_data.shape[0],) + shape[axis:]
        others = tuple(d for d in range(len(out)) if d != axis)
        k1, k2 = (jnp.broadcast_to(jnp.expand_dims(k, others), out) for k in (k1, k2))
        count = jnp.broadcast_to(jnp.expand_dims(count, axis), out)
    else:
        k1, k2 = (jnp.broadcast_to(k, shape) for k in (k1, k2))
    words = threefry2x32_p.bind(k1, k2, count, count + jnp.uint32(n))
    return jax.lax.optimization_barrier(jax.lax.complex(*(_floats_from_bits(b, kind) for b in words)))


def draw_step(xs_t, shape: tuple, kind: str = "normal") -> jax.Array:
    """Per-step noise inside a scan body, from a key (drawn) or an array slice (used as is)."""
    if isinstance(xs_t, jax.Array) and jnp.issubdtype(xs_t.dtype, jax.dtypes.prng_key):
        return jax.random.normal(xs_t, shape) if kind == "normal" else jax.random.uniform(xs_t, shape)
    return xs_t


# ----------------------------------------------------------------------------------------------
# Losses.


def network_input(config: DVAEConfig, x: jax.Array) -> jax.Array:
    """x as the networks read it (see ``DVAEConfig.input_transform``)."""
    if config.input_transform == "log":
        return jnp.log(x + config.input_floor)
    return x


def loss_from_outputs(config: DVAEConfig, x: jax.Array, out: Outputs, kl_weight=1.0) -> LossTerms:
    """Per-frame terms: ``recon = NLL / N``, ``kl = KL / N`` with N = T (x: (T, F)) or T*B (x: (T, B, F)),
    the reference's normalisation."""
    steps = math.prod(x.shape[:-1])
    recon = observation_nll(config.observation, x, out.x_out, is_eps=config.is_eps,
                            reference=config.gaussian_reference_nll) / steps
    kl = kl_gaussian(out.q, out.p, mode=config.kl_mode, var_eps=config.kl_var_eps) / steps
    kl = kl + out.extras.get("kl_static", 0.0) / steps
    return LossTerms(recon + kl_weight * kl, recon, kl)


def batch_loss(model: DVAE, params, xb: jax.Array, noise, *, kl_weight=1.0, time_major: bool = False,
               **mode):
    """Per-frame loss of a batch ``xb``: batch-major ``(B, T, x_dim)`` (the data loaders' layout) or,
    with ``time_major=True``, ``(T, B, x_dim)`` (no transpose inside the step: faster).

    The batch runs time-major in one forward pass; the loss is the reference's ``sum / (T * B)``.
    Returns ``(loss, LossTerms)``.
    """
    x = xb if time_major else jnp.swapaxes(xb, 0, 1)
    terms = loss_from_outputs(model.config, x, model.forward(params, x, noise, **mode), kl_weight)
    return terms.loss, terms


def count_params(params) -> int:
    return int(sum(p.size for p in jax.tree.leaves(params)))
