"""Tracking baselines: a nearest-neighbour tracker and the VKF source model.

**Nearest neighbour** (:func:`nearest_neighbour_track`, the floor baseline): source n starts at
detection n of frame 0; at every later frame the valid detections are assigned one-to-one to the
sources by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the Euclidean distance
between box centres (source: its last box); an assigned source takes the detection's box, an unassigned
one keeps its last box. Optional gate: no assignment farther than ``gate``.

**VKF source model** (:func:`kalman_source_update`, the MixDVAE paper's variational Kalman baseline,
spec §4): same signature as :func:`vdvae_jax.inference.mixdvae_source.mot_source_update`, so the
MixDVAE VEM runs with it in place of the DVAE. Each of the 4 box coordinates d has a constant-velocity
state :math:`\\xi_t = (p_t, v_t)`,

.. math::
    \\xi_t = A \\xi_{t-1} + u_t,\\quad A = \\begin{pmatrix}1 & 1\\\\ 0 & 1\\end{pmatrix},\\quad
    u_t \\sim N(0, \\mathrm{diag}(q_p, q_v)), \\qquad \\xi_0 \\sim N((o_0, 0), \\mathrm{diag}(\\sigma_0^2, v_0)),

and the :math:`\\eta`-weighted detections are fused into one pseudo-observation of p_t with precision
:math:`\\lambda_t = \\sum_k \\eta_{tk} \\Phi_{tk}^{-1}` and information :math:`e_t = \\sum_k \\eta_{tk}
\\Phi_{tk}^{-1} o_{tk}` (exact for the weighted Gaussian likelihood). Kalman filter (information-form
update, well defined for :math:`\\lambda_t = 0`, i.e. all detections missing: pure prediction):

.. math::
    P^- = A P A^\\top + Q,\\quad g = P^-_{:,0} / (1 + \\lambda P^-_{00}),\\quad
    \\mu = \\mu^- + g\\,(e - \\lambda \\mu^-_0),\\quad P = P^- - \\lambda\\, g\\, (P^-_{0,:}),

then the Rauch-Tung-Striebel smoother :math:`G_t = P_t A^\\top (P^-_{t+1})^{-1}`,
:math:`\\mu^s_t = \\mu_t + G_t(\\mu^s_{t+1} - \\mu^-_{t+1})`,
:math:`P^s_t = P_t + G_t (P^s_{t+1} - P^-_{t+1}) G_t^\\top`. The update returns the box marginal
:math:`q(s_t) = N(\\mu^s_{t,0}, P^s_{t,00})` per coordinate; ``loss`` is the negative log marginal
likelihood of the pseudo-observations per frame (a sanity quantity; nothing is trained).

:func:`fit_kalman_params` estimates :math:`(q_p, q_v)` per coordinate by moments of the second
differences of training trajectories: with the model above,
:math:`\\mathrm{Var}(\\Delta^2 p) = q_v + 2 q_p` and :math:`\\mathrm{Cov}(\\Delta^2 p_t, \\Delta^2 p_{t+1}) = -q_p`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from vdvae_jax.inference.mixdvae_source import observation_weights

__all__ = [
    "nearest_neighbour_track",
    "KalmanParams",
    "KalmanConfig",
    "KalmanSourceUpdate",
    "kalman_source_update",
    "kalman_smoother",
    "fit_kalman_params",
    "DEFAULT_KALMAN",
]


def _centre(b):
    return np.stack([(b[..., 0] + b[..., 2]) / 2, (b[..., 1] + b[..., 3]) / 2], axis=-1)


def nearest_neighbour_track(obs, num_targets: int | None = None, *, gate: float | None = None) -> np.ndarray:
    """Hungarian nearest-neighbour tracking (see module docstring).

    Args:
      obs: (T, K, 4) detections (normalised x1x2, NaN rows for missing); frame 0 needs N valid rows.
      num_targets: N (default K); sources start at the first N valid detections of frame 0.
      gate: optional maximum centre distance for an assignment.
    Returns: (T, N, 4) tracks.
    """
    obs = np.asarray(obs, np.float64)
    T, K, _ = obs.shape
    N = K if num_targets is None else num_targets
    valid0 = np.flatnonzero(np.isfinite(obs[0]).all(-1))
    if len(valid0) < N:
        raise ValueError(f"frame 0 has {len(valid0)} detections, fewer than {N} targets")
    tracks = np.empty((T, N, 4))
    tracks[0] = obs[0, valid0[:N]]
    for t in range(1, T):
        tracks[t] = tracks[t - 1]
        ok = np.flatnonzero(np.isfinite(obs[t]).all(-1))
        if len(ok) == 0:
            continue
        cost = np.linalg.norm(_centre(tracks[t - 1])[:, None] - _centre(obs[t, ok])[None], axis=-1)
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols):
            if gate is None or cost[r, c] <= gate:
                tracks[t, r] = obs[t, ok[c]]
    return tracks


class KalmanParams(NamedTuple):
    """Process noise per coordinate (4,): position ``q_pos``, velocity ``q_vel``; initial velocity
    variance ``v0_var``. A pytree (vmap/broadcast like network parameters)."""

    q_pos: jax.Array
    q_vel: jax.Array
    v0_var: jax.Array


@dataclasses.dataclass(frozen=True)
class KalmanConfig:
    """Static options of the VKF source model (``smooth=False`` returns the filtered marginals)."""

    x_dim: int = 4
    smooth: bool = True


# Moments of the synthetic pre-training trajectories, rounded:
# fit_kalman_params(generate_trajectories(3000, seed=0)); used when nothing else is given.
# (numpy float32, as jnp.array would give: a JAX array here would start JAX's backend at import, before
# vdvae_jax.runtime can set XLA flags.)
DEFAULT_KALMAN = KalmanParams(q_pos=np.array([6e-10, 1e-10, 6e-10, 1e-10], np.float32),
                              q_vel=np.array([1.9e-7, 8.3e-8, 1.9e-7, 8.4e-8], np.float32),
                              v0_var=np.array([4.6e-6, 2.0e-6, 4.6e-6, 3.6e-6], np.float32))


class KalmanSourceUpdate(NamedTuple):
    """VKF E-S for one source: ``mean``/``var`` (T, [B,] 4) box marginals, ``velocity``/``velocity_var``,
    ``loss`` (scalar, negative log marginal likelihood per frame)."""

    mean: jax.Array
    var: jax.Array
    velocity: jax.Array
    velocity_var: jax.Array
    loss: jax.Array


_A = np.array([[1.0, 1.0], [0.0, 1.0]], np.float32)


def kalman_smoother(lam, info, frame0, params: KalmanParams, *, t0_var: float = 1e-5, smooth: bool = True):
    """Kalman filter (+ RTS smoother) with pseudo-observation precision ``lam`` and information ``info``
    (both (T, [B,] D)); returns ``(mean (T, ., D, 2), cov (T, ., D, 2, 2), nll)``."""
    shape = lam.shape[1:]
    q = jnp.stack([jnp.broadcast_to(params.q_pos, shape), jnp.broadcast_to(params.q_vel, shape)], -1)
    Q = q[..., :, None] * jnp.eye(2)
    mu0 = jnp.stack([jnp.broadcast_to(frame0, shape), jnp.zeros(shape)], -1)
    P0 = jnp.stack([jnp.full(shape, t0_var), jnp.broadcast_to(params.v0_var, shape)], -1)[..., :, None] * jnp.eye(2)
    first = jnp.arange(lam.shape[0]) == 0

    def update(mu_p, P_p, lam_t, e_t):
        denom = 1.0 + lam_t * P_p[..., 0, 0]
        g = P_p[..., :, 0] / denom[..., None]
        resid = e_t - lam_t * mu_p[..., 0]
        mu = mu_p + g * resid[..., None]
        P = P_p - lam_t[..., None, None] * g[..., :, None] * P_p[..., None, 0, :]
        # log N(e/lam; mu_p0, P00 + 1/lam) in information form (0 when lam = 0)
        nll = 0.5 * (jnp.log(denom) + resid ** 2 / (lam_t * denom + (lam_t == 0)) * (lam_t > 0))
        return mu, P, nll

    def fstep(carry, inputs):
        mu, P = carry
        lam_t, e_t, first_t = inputs
        mu_p = jnp.where(first_t, mu0, jnp.einsum("ij,...j->...i", _A, mu))
        P_p = jnp.where(first_t, P0, jnp.einsum("ij,...jk,lk->...il", _A, P, _A) + Q)
        mu_f, P_f, nll = update(mu_p, P_p, lam_t, e_t)
        return (mu_f, P_f), (mu_f, P_f, mu_p, P_p, nll)

    carry0 = (mu0, P0)
    _, (mu_f, P_f, mu_p, P_p, nll) = jax.lax.scan(fstep, carry0, (lam, info, first))
    if not smooth:
        return mu_f, P_f, jnp.sum(nll)

    def bstep(carry, inputs):
        mu_s, P_s = carry
        mu_f_t, P_f_t, mu_p_n, P_p_n = inputs
        G = jnp.swapaxes(jnp.linalg.solve(P_p_n, jnp.einsum("ij,...kj->...ik", _A, P_f_t)), -1, -2)
        mu = mu_f_t + jnp.einsum("...ij,...j->...i", G, mu_s - mu_p_n)
        P = P_f_t + jnp.einsum("...ij,...jk,...lk->...il", G, P_s - P_p_n, G)
        P = 0.5 * (P + jnp.swapaxes(P, -1, -2))
        return (mu, P), (mu, P)

    last = (mu_f[-1], P_f[-1])
    _, (mu_s, P_s) = jax.lax.scan(bstep, last, (mu_f[:-1], P_f[:-1], mu_p[1:], P_p[1:]), reverse=True)
    mu_s = jnp.concatenate([mu_s, mu_f[-1:]], 0)
    P_s = jnp.concatenate([P_s, P_f[-1:]], 0)
    return mu_s, P_s, jnp.sum(nll)


def kalman_source_update(params: KalmanParams, config: KalmanConfig, x_init, eta, phi_inv, obs, frame0,
                         noise=None, *, mask=None, t0_var: float = 1e-5, beta: float = 1.0) -> KalmanSourceUpdate:
    """VKF E-S for one source, drop-in for ``mot_source_update`` (``x_init``, ``noise``, ``beta`` unused).

    Args: as :func:`~vdvae_jax.inference.mixdvae_source.mot_source_update`: ``eta`` (T, [B,] K),
    ``phi_inv`` and ``obs`` (T, [B,] K, 4), ``frame0`` ([B,] 4), ``mask`` (T, [B,] K) bool.
    """
    del noise, beta
    w, o = observation_weights(eta, obs, mask)
    lam = jnp.sum(w[..., None] * phi_inv, axis=-2)
    info = jnp.sum(w[..., None] * phi_inv * o, axis=-2)
    mu, P, nll = kalman_smoother(lam, info, frame0, params, t0_var=t0_var, smooth=config.smooth)
    steps = math.prod(x_init.shape[:-1])
    return KalmanSourceUpdate(mu[..., 0], P[..., 0, 0], mu[..., 1], P[..., 1, 1], nll / steps)


def fit_kalman_params(trajectories, *, floor: float = 1e-10, v0_var: float | None = None) -> KalmanParams:
    """Moment estimate of ``(q_pos, q_vel)`` per coordinate from (M, T, 4) trajectories (see module doc)."""
    x = np.asarray(trajectories, np.float64)
    d2 = np.diff(x, n=2, axis=1)
    d2 = d2 - d2.mean(axis=(0, 1))
    var = np.mean(d2 ** 2, axis=(0, 1))
    cov1 = np.mean(d2[:, 1:] * d2[:, :-1], axis=(0, 1))
    q_pos = np.maximum(-cov1, floor)
    q_vel = np.maximum(var - 2 * q_pos, floor)
    v = np.var(np.diff(x, axis=1)[:, 0], axis=0) if v0_var is None else np.full(4, v0_var)
    return KalmanParams(jnp.asarray(q_pos, jnp.float32), jnp.asarray(q_vel, jnp.float32),
                        jnp.asarray(np.maximum(v, floor), jnp.float32))
