"""Itakura-Saito NMF: multiplicative updates for a noise variance ``W @ H`` beside other components.

Observation model (power spectrogram ``P`` in the usual NMF layout ``(F, N)``, frequency x frames):

.. math::
    X_{fn} \\sim \\mathcal N_c(0, V_{fn}), \\qquad V = V_o + W H, \\qquad
    \\mathcal C(W, H) = \\sum_{f,n} \\frac{P_{fn}}{V_{fn}} + \\log V_{fn},

where :math:`V_o \\ge 0` is a fixed variance of other components (``0`` for plain IS-NMF; the scaled
speech variance :math:`g \\odot V_s` in speech enhancement). :math:`V_o` may carry leading sample axes
``(R, F, N)`` (Monte-Carlo samples of a latent-variable model); the objective then sums over them.

Multiplicative updates (majorisation-minimisation; exponent :math:`\\gamma = 1/2` guarantees
:math:`\\mathcal C` never increases for the IS divergence, Fevotte & Idier 2011):

.. math::
    W \\leftarrow W \\odot \\Big(\\frac{(P \\odot \\sum_r V_r^{-2}) H^T}{(\\sum_r V_r^{-1}) H^T}\\Big)^{\\gamma},
    \\qquad
    H \\leftarrow H \\odot \\Big(\\frac{W^T (P \\odot \\sum_r V_r^{-2})}{W^T \\sum_r V_r^{-1}}\\Big)^{\\gamma},

and, for a per-frame gain on a component :math:`V = g \\odot V_s + V_b` (``g`` broadcast over F),

.. math::
    g_n \\leftarrow g_n \\Big(\\frac{\\sum_{r,f} P_{fn} V_{s,r,fn} V_{r,fn}^{-2}}
        {\\sum_{r,f} V_{s,r,fn} V_{r,fn}^{-1}}\\Big)^{\\gamma}.

An optional frame ``mask`` (N,) drops masked frames from every sum; the factors of masked frames
(columns of ``H``, entries of ``g``) are left unchanged. All functions are pure and jittable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["is_objective", "is_divergence", "update_W", "update_H", "normalize_l1", "update_gain"]

_HI = jax.lax.Precision.HIGHEST


def _mm(a, b):
    return jnp.matmul(a, b, precision=_HI)


def _frame_weights(mask, n: int, dtype):
    if mask is None:
        return jnp.ones((n,), dtype)
    return jnp.asarray(mask).astype(dtype)


def _total_variance(W, H, V_other):
    WH = _mm(W, H)
    return WH if V_other is None else V_other + WH


def _sample_sums(P, V, mask):
    """``(P * sum_r V^-2, sum_r V^-1)`` over leading sample axes, masked frames zeroed; both (F, N)."""
    f, n = P.shape[-2:]
    w = _frame_weights(mask, n, V.dtype)
    inv = (1.0 / V).reshape((-1, f, n))
    s1 = jnp.sum(inv, axis=0) * w
    s2 = P * jnp.sum(inv * inv, axis=0) * w
    return s2, s1


def is_objective(P, V, mask=None, *, reduce: str = "sum"):
    """:math:`\\sum (P/V + \\log V)` over samples, frequencies and unmasked frames (``reduce="mean"``
    divides by the number of summed elements)."""
    f, n = P.shape[-2:]
    w = _frame_weights(mask, n, V.dtype)
    terms = jnp.broadcast_to(P / V + jnp.log(V), V.shape) * w
    total = jnp.sum(terms)
    if reduce == "sum":
        return total
    if reduce == "mean":
        reps = V.size // (f * n)
        return total / (reps * f * jnp.sum(w))
    raise ValueError(f"reduce must be 'sum' or 'mean', got {reduce!r}")


def is_divergence(P, V, mask=None):
    """Itakura-Saito divergence :math:`\\sum P/V - \\log(P/V) - 1` (requires ``P > 0`` on unmasked
    frames)."""
    f, n = P.shape[-2:]
    w = _frame_weights(mask, n, V.dtype)
    ratio = P / V
    return jnp.sum(jnp.broadcast_to(ratio - jnp.log(ratio) - 1.0, V.shape) * w)


def update_W(P, W, H, V_other=None, *, mask=None, exponent: float = 0.5):
    """One multiplicative update of the dictionary ``W`` (F, K); ``H`` (K, N), ``P`` (F, N),
    ``V_other`` broadcastable to ``(..., F, N)``."""
    s2, s1 = _sample_sums(P, _total_variance(W, H, V_other), mask)
    return W * (_mm(s2, H.T) / _mm(s1, H.T)) ** exponent


def update_H(P, W, H, V_other=None, *, mask=None, exponent: float = 0.5):
    """One multiplicative update of the activations ``H`` (K, N); masked columns are kept."""
    s2, s1 = _sample_sums(P, _total_variance(W, H, V_other), mask)
    new = H * (_mm(W.T, s2) / _mm(W.T, s1)) ** exponent
    if mask is None:
        return new
    return jnp.where(jnp.asarray(mask, bool)[None, :], new, H)


def normalize_l1(W, H):
    """Scale each column of ``W`` to unit L1 norm and the matching row of ``H`` inversely
    (``W @ H`` unchanged)."""
    c = jnp.sum(jnp.abs(W), axis=0)
    return W / c, H * c[:, None]


def update_gain(P, V_s, V_b, g, *, mask=None, exponent: float = 0.5):
    """One multiplicative update of the per-frame gain ``g`` (N,) of ``V = g * V_s + V_b``.

    ``V_s`` is the *unscaled* component, (F, N) or (R, F, N); ``V_b`` (F, N) the rest. Masked frames
    keep their gain.
    """
    f, n = P.shape[-2:]
    V = g * V_s + V_b
    vs = jnp.broadcast_to(V_s, V.shape).reshape((-1, f, n))
    inv = (1.0 / V).reshape((-1, f, n))
    num = jnp.sum(P * vs * inv * inv, axis=(0, 1))
    den = jnp.sum(vs * inv, axis=(0, 1))
    new = g * (num / den) ** exponent
    if mask is None:
        return new
    return jnp.where(jnp.asarray(mask, bool), new, g)
