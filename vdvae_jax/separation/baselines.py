"""Separation baselines: supervised IS-NMF (vanilla and temporally smooth) with Wiener masks, and the
ideal-binary-mask oracle.

**Supervised IS-NMF.** Each source n gets a dictionary :math:`W_n` (F x K_n) learned on its training
power spectrograms :math:`P` (F x N) by minimising the Itakura-Saito cost
:math:`\\sum P/WH + \\log WH` with the multiplicative updates of :mod:`vdvae_jax.inference.nmf`
(exponent 1/2, monotone; columns of W renormalised to unit L1 norm after each iteration). At test time
:math:`W = [W_0, \\dots, W_{N-1}]` is fixed and only H is estimated on the mixture power
:math:`|x|^2` (T x F here, transposed to the NMF layout F x T). Source estimates are Wiener masks
applied to the complex mixture:

.. math:: \\hat s_n = \\frac{W_n H_n}{\\sum_m W_m H_m} \\odot x, \\qquad \\sum_n \\text{mask}_n = 1.

**Temporal continuity** (``smooth=alpha > 0``): the inverse-gamma Markov chain prior of Févotte,
Bertin & Durrieu (2009, Neural Computation, "NMF with the Itakura-Saito divergence", §5) on each row
of H, :math:`h_{k,t} \\mid h_{k,t-1} \\sim \\mathcal{IG}(\\alpha, (\\alpha + 1) h_{k,t-1})` (mode
:math:`h_{k,t-1}`), MAP-estimated with a majorisation-minimisation step. For one entry h with current
value :math:`\\tilde h`, the IS majoriser plus the exact prior terms give

.. math:: G(h) = \\frac{p \\tilde h^2 + a}{h} + (q + b) h + c \\log h,\\quad
   p = \\sum_f w_f P_f / \\hat V_f^2,\\ q = \\sum_f w_f / \\hat V_f,

with :math:`a = (\\alpha+1) h_{t-1}`, :math:`b = (\\alpha+1)/h_{t+1}`,
:math:`c = (\\alpha+1)[t \\ge 1] - \\alpha[t \\le T-2]` (boundary terms dropped at the ends; h_0 has a
flat prior). G has a unique stationary point on (0, ∞), its global minimum,

.. math:: h = \\frac{2 (p \\tilde h^2 + a)}{c + \\sqrt{c^2 + 4 (q + b)(p \\tilde h^2 + a)}}
   = \\frac{\\sqrt{c^2 + 4 (q + b)(p \\tilde h^2 + a)} - c}{2 (q + b)},

and updating the even frames, then the odd frames (each entry's neighbours held fixed) is an exact
block MM step: the MAP objective :func:`smooth_objective` never increases (tested). ``alpha = 0``
does *not* reduce to vanilla NMF (the prior still acts); use ``smooth=None`` for the vanilla updates.

**Ideal binary mask** (oracle, §3.2): :math:`\\text{mask}_n = 1[n = \\arg\\max_m |s_m|^2]` per bin,
applied to the mixture STFT.

All iterations run in ``lax.scan``; the functions are pure and jittable (``n_iter`` static).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vdvae_jax.inference import nmf

__all__ = ["NMFDictionaries", "learn_dictionary", "learn_dictionaries", "fit_activations",
           "smooth_objective", "wiener_masks", "nmf_separate", "ideal_binary_masks", "apply_masks"]

_HI = jax.lax.Precision.HIGHEST
_FLOOR = 1e-10


class NMFDictionaries(NamedTuple):
    """Stacked dictionary ``W`` (F, sum K_n) and the source index of each column ``owner`` (sum K_n,)."""

    W: jax.Array
    owner: jax.Array


@functools.partial(jax.jit, static_argnames=("n_components", "n_iter"))
def learn_dictionary(power: jax.Array, key: jax.Array, n_components: int = 32, n_iter: int = 200):
    """IS-NMF dictionary of one source.

    Args:
      power: (N, F) training power frames (time-major; transposed internally), floored at 1e-10.
      key: typed key for the random positive initialisation.
      n_components: K.
      n_iter: multiplicative-update iterations (W and H each once per iteration).

    Returns:
      ``(W (F, K) with unit-L1 columns, H (K, N), objective (n_iter,) = IS cost after each iteration)``.
    """
    P = jnp.maximum(jnp.asarray(power, jnp.float32).T, _FLOOR)
    f, n = P.shape
    kw, kh = jax.random.split(key)
    scale = jnp.mean(P)
    W = jax.random.uniform(kw, (f, n_components), minval=0.5, maxval=1.5)
    H = jax.random.uniform(kh, (n_components, n), minval=0.5, maxval=1.5) * scale / n_components * f
    W, H = nmf.normalize_l1(W, H)

    def body(carry, _):
        W, H = carry
        H = nmf.update_H(P, W, H)
        W = nmf.update_W(P, W, H)
        W, H = nmf.normalize_l1(W, H)
        return (W, H), nmf.is_objective(P, jnp.matmul(W, H, precision=_HI))

    (W, H), obj = jax.lax.scan(body, (W, H), None, length=n_iter)
    return W, H, obj


def learn_dictionaries(powers, key, n_components: int = 32, n_iter: int = 200) -> NMFDictionaries:
    """Dictionaries of several sources (``powers``: list of (N_n, F) arrays), stacked column-wise."""
    Ws = [learn_dictionary(p, k, n_components, n_iter)[0]
          for p, k in zip(powers, jax.random.split(key, len(powers)))]
    owner = jnp.concatenate([jnp.full((w.shape[1],), i, jnp.int32) for i, w in enumerate(Ws)])
    return NMFDictionaries(jnp.concatenate(Ws, axis=1), owner)


def _pq(P, W, H):
    V = jnp.matmul(W, H, precision=_HI)
    p = jnp.matmul(W.T, P / (V * V), precision=_HI)
    q = jnp.matmul(W.T, 1.0 / V, precision=_HI)
    return p, q


def _smooth_half_step(P, W, H, alpha, parity):
    p, q = _pq(P, W, H)
    t = jnp.arange(H.shape[1])
    has_prev = t >= 1
    has_next = t <= H.shape[1] - 2
    h_prev = jnp.concatenate([H[:, :1], H[:, :-1]], axis=1)
    h_next = jnp.concatenate([H[:, 1:], H[:, -1:]], axis=1)
    a = jnp.where(has_prev, (alpha + 1.0) * h_prev, 0.0)
    b = jnp.where(has_next, (alpha + 1.0) / h_next, 0.0)
    c = jnp.where(has_prev, alpha + 1.0, 0.0) - jnp.where(has_next, alpha, 0.0)
    num = p * H * H + a
    quad = q + b
    root = jnp.sqrt(c * c + 4.0 * quad * num)
    # The two algebraically equal roots, each free of cancellation in its regime of c.
    new = jnp.where(c >= 0, 2.0 * num / jnp.maximum(c + root, _FLOOR), (root - c) / (2.0 * quad))
    return jnp.where((t % 2) == parity, jnp.maximum(new, _FLOOR), H)


def smooth_objective(P, W, H, alpha):
    """MAP objective of the smooth model (F x T layout): IS cost :math:`\\sum P/V + \\log V` plus
    :math:`-\\log p(H)` of the inverse-gamma chain (constants dropped)."""
    V = jnp.matmul(W, H, precision=_HI)
    data = jnp.sum(P / V + jnp.log(V))
    prev, cur = H[:, :-1], H[:, 1:]
    prior = jnp.sum((alpha + 1.0) * jnp.log(cur) + (alpha + 1.0) * prev / cur - alpha * jnp.log(prev))
    return data + prior


@functools.partial(jax.jit, static_argnames=("n_iter",))
def fit_activations(power: jax.Array, W: jax.Array, n_iter: int = 100, smooth=None, key=None):
    """Activations H (K, T) of a time-major power spectrogram ``power`` (T, F) with W (F, K) fixed.

    ``smooth=None``: vanilla IS-NMF multiplicative updates; ``smooth=alpha``: the inverse-gamma
    Markov-chain MAP updates (module docstring). Returns ``(H, objective (n_iter,))`` where objective is
    the IS cost (vanilla) or :func:`smooth_objective` after each iteration.
    """
    P = jnp.maximum(jnp.asarray(power, jnp.float32).T, _FLOOR)
    k, t = W.shape[1], P.shape[1]
    # Least-squares-free start: every component at the mean frame power share.
    H = jnp.broadcast_to(jnp.mean(P, axis=0, keepdims=True) / jnp.sum(W) * W.shape[0] / k * jnp.ones((k, 1)),
                         (k, t))
    H = jnp.maximum(H, _FLOOR)

    if smooth is None:
        def body(H, _):
            H = nmf.update_H(P, W, H)
            return H, nmf.is_objective(P, jnp.matmul(W, H, precision=_HI))
    else:
        alpha = jnp.asarray(smooth, jnp.float32)

        def body(H, _):
            H = _smooth_half_step(P, W, H, alpha, 0)
            H = _smooth_half_step(P, W, H, alpha, 1)
            return H, smooth_objective(P, W, H, alpha)

    return jax.lax.scan(body, H, None, length=n_iter)


def wiener_masks(W: jax.Array, H: jax.Array, owner: jax.Array, n_sources: int) -> jax.Array:
    """Masks (n_sources, T, F): :math:`W_n H_n / \\sum_m W_m H_m`, time-major; they sum to one."""
    parts = jnp.stack([jnp.matmul(W * (owner == n), H, precision=_HI) for n in range(n_sources)])
    parts = jnp.maximum(parts, _FLOOR)
    return jnp.swapaxes(parts / jnp.sum(parts, axis=0), -1, -2)


@functools.partial(jax.jit, static_argnames=("n_sources", "n_iter"))
def nmf_separate(mix: jax.Array, dicts: NMFDictionaries, n_sources: int = 2, n_iter: int = 100,
                 smooth=None) -> jax.Array:
    """Complex source estimates (n_sources, T, F) of a complex mixture STFT ``mix`` (T, F).

    Batched mixtures: ``jax.vmap(nmf_separate, in_axes=(0, None))`` (n_sources, n_iter static).
    """
    H, _ = fit_activations(jnp.abs(mix) ** 2, dicts.W, n_iter, smooth)
    return apply_masks(wiener_masks(dicts.W, H, dicts.owner, n_sources), mix)


def ideal_binary_masks(sources: jax.Array) -> jax.Array:
    """Oracle masks (N, ..., T, F) from the reference source STFTs (N, ..., T, F): one-hot argmax power."""
    power = jnp.abs(sources) ** 2
    return jax.nn.one_hot(jnp.argmax(power, axis=0), sources.shape[0], axis=0, dtype=jnp.float32)


def apply_masks(masks: jax.Array, mix: jax.Array) -> jax.Array:
    """``masks * mix`` with the mixture broadcast over the leading source axis."""
    return masks * mix[None]
