"""MixDVAE variational EM: one DVAE per source, a discrete assignment of observations to sources.

API (stable; used by :mod:`vdvae_jax.tracking` and :mod:`vdvae_jax.separation`)::

    # multi-object tracking: boxes (x1, y1, x2, y2), obs (T, [B,] K, 4), NaN rows / mask = missing
    alg   = mot_vem(config, MOTOptions())                # or MOTOptions.reference()
    data  = mot_data(params, obs, mask=None, frame0=None, num_sources=S)
    state, infos = solve(alg, key, data, n_iter=70)     # init + lax.scan over iterations, one jit
    infos.mean[-1], infos.var[-1], infos.eta[-1]        # (S, T, [B,] 4), (S, T, [B,] 4), (S, T, [B,] K)

    # single-channel source separation: complex STFT mixture (T, [B,] F), one (different) prior per source
    alg   = scass_vem(config, SCASSOptions())            # or SCASSOptions.reference()
    data  = scass_data(stack_params([p_flute, p_speech]), mix)
    state, infos = solve(alg, key, data, n_iter=70)     # infos.mu: (I, T, S, [B,] F) complex

    alg.init(key, data) -> state;  alg.step(key, state, data) -> (state, info)   (pure; see base.Algorithm)
    vmap_sequences(alg)  # the same algorithm vmapped over the batch axis (axis 1 of time-major data)

Everything is time-major. Per-source arrays carry a source axis S: leading for MOT (S, T, [B,] ·), right
after time for SC-ASS (T, S, [B,] F), whose large arrays the vmapped per-source scans then read and write
without transposing them. ``key`` is a typed key
(``jax.random.key``) or, for conformance, a pytree of pre-drawn noise: per MOT step ``{"z": (S, T, [B,] Z)}``,
per SC-ASS step ``{"z": (S, T, [B,] Z), "u_re", "u_im": (S, T, [B,] F)}``; MOT init ``{"z": (C, I0, S, Tc,
[B,] Z)}`` (C chunks x I0 init iterations), SC-ASS init ``{"z": (S, T, [B,] Z)}``.

**Model** (spec §1). Sources :math:`s_n` with DVAE priors (MOT: one shared SRNN, ``params_stacked=False``;
SC-ASS: one SRNN per source, parameters stacked on a leading axis, ``params_stacked=True``); uniform
assignments :math:`w`; MOT :math:`o_{tk} | w_{tk}=n \\sim \\mathcal N(s_{tn}, \\Phi_{tk})` (diagonal
:math:`\\Phi`), SC-ASS :math:`x_{ft} | w_{ft}=n \\sim \\mathcal N_c(s_{ftn}, v_{ft})`, :math:`v = 0.03|x|^2`.
Variational family :math:`q(w) q(s) q(z|s)` with :math:`q(w_{tk}=n)=\\eta_{tkn}`.

**E-W** (log domain, across sources, with the observation mask; never NaN):

.. math::
    \\text{MOT: } \\log\\beta_{tkn} = -\\tfrac12\\log|\\Phi_{tk}| - \\tfrac{\\gamma}{2}\\big[(o_{tk}-m_{tn})^\\top
    \\Phi_{tk}^{-1}(o_{tk}-m_{tn}) + \\mathrm{tr}(\\Phi_{tk}^{-1}\\Sigma_{tn})\\big], \\qquad
    \\text{SC-ASS: } \\log\\beta_{ftn} = -\\log v_{ft} - (|x_{ft}-\\mu_{ftn}|^2 + v^\\phi_{ftn}) / v_{ft},

:math:`\\eta = \\mathrm{softmax}_n \\log(\\beta + \\epsilon)` (:math:`\\epsilon` = ``beta_floor``, 1e-10 in the
reference) and :math:`\\eta = 0` for a missing observation. :math:`\\gamma` (``ew_gamma``) is the
reference's hard-coded 0.008: it multiplies the expected Mahalanobis distance (Mahalanobis + trace) in E-W
only, i.e. a temperature :math:`1/\\gamma = 125` dividing it (assignment covariance :math:`125\\,\\Phi`); the
model itself has :math:`\\gamma = 1`.

**E-S/E-Z** per source: :func:`~vdvae_jax.inference.mixdvae_source.mot_source_update` /
:func:`~vdvae_jax.inference.mixdvae_source.scass_source_update`, ``jax.vmap``-ped over sources
(``source_map="vmap"``; ``"map"`` = ``lax.map``, ``"loop"`` = a Python loop, for benchmarks/tests).

**Order** (``order``): MOT reference ``"ew_first"`` (E-W on the previous posterior, then E-S), SC-ASS
reference ``"es_first"`` (E-S with the previous :math:`\\eta`, then E-W; :math:`\\eta^{(0)} = 1/S`).

**Losses** in ``info`` per iteration: the reference's printed values (``loss_elbo = loss_qw_qs + loss_dvae
+ loss_qw + loss_qs``, its mutually inconsistent normalisations, spec §1.3/§1.5, including the SC-ASS
``compute_loss_qwqs`` broadcast bug) and ``elbo``, the proper evidence lower bound in nats, total over the
batch, exact in :math:`w, s` given the sampled :math:`\\tilde z` (decoder chain driven by the posterior
point estimate, as in E-S) with the analytic sequential KL of :math:`z`:

.. math::
    \\mathcal L = E_q[\\log p(o|w,s)] + E_q[\\log p(w)] + H[q(w)] + H[q(s)] + E_{q(s)}[\\log p(s|\\tilde z)]
    - \\sum_t \\mathrm{KL}\\big(q(z_t|\\tilde z_{t-1}) \\| p(z_t|\\tilde z_{t-1})\\big).

(:mod:`vdvae_jax.bayes` checks it against numpyro's ``Trace_ELBO``.) With ``tol > 0`` the run freezes
(state no longer updated, ``info.converged`` True) once :math:`|\\mathcal L_i - \\mathcal L_{i-1}| <
\\mathrm{tol}\\,|\\mathcal L_{i-1}|` — for the whole in-model batch; per sequence under :func:`vmap_sequences`.

**Fine-tuning** (``finetune``: ``"off"`` (reference default), ``"all"`` (reference when on: one Adam step
per iteration on every DVAE parameter, loss summed over sources, SC-ASS targets detached) or ``"encoder"``
(encoder parameters only)). Parameters and Adam state then live in the state: the reference shares them
over the in-model batch and lets them persist across batches (pass ``final_state.params``/``opt_state`` to
``init``); the recommended reset per sequence is :func:`vmap_sequences` with fresh ``init`` per call.

**MOT initialisation** (``init``): ``"chunked"`` (reference, spec §1.4: chunks of ``init_chunk_len``
frames, ``init_iters`` E-W/E-S iterations per chunk seeded by the previous chunk's end position; the
returned initialisation is the *piecewise-constant* chunk start positions with covariance
:math:`\\Phi_n`), ``"chunked_trajectory"`` (the same iterations, but returning the chunks' final
posterior trajectories), ``"constant"`` (frame-0 boxes on every frame, no iterations, any T).
**Observation covariance** ``phi_from``: ``"frame0"`` (reference: :math:`\\sigma = \\rho\\,(w, h, w, h)` of
detection k at frame 0 for every t) or ``"detection"`` (of detection (t, k) itself; identity-free, suited
to shuffled detections); ``phi_update``: ``"fixed"`` (reference), ``"per_frame"`` (the reference's unused
``compute_phi``, diagonal), ``"pooled"`` (one diagonal :math:`\\Phi` per sequence pooled over t and k).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from vdvae_jax.distributions import Gaussian, observation_nll
from vdvae_jax.inference import mixdvae_source as ms
from vdvae_jax.inference.base import Algorithm, jit_small, resolve_devices, run
from vdvae_jax.models.base import noise_pair_stacked
from vdvae_jax.models.srnn_mixdvae import h_teacher_forced

__all__ = [
    "MOTOptions", "SCASSOptions", "MOTData", "SCASSData", "MOTState", "SCASSState", "MOTInfo", "SCASSInfo",
    "mot_vem", "scass_vem", "mot_data", "scass_data", "stack_params", "solve", "vmap_sequences",
    "mot_assignment", "mot_phi_from_boxes", "mot_elbo_terms", "scass_assignment", "SOURCE_MAPS",
]

SOURCE_MAPS = ("vmap", "map", "loop")
_LOG2PI = math.log(2.0 * math.pi)
_FINETUNE = ("off", "all", "encoder")
# source axis of each field of a vmapped SCASSSourceUpdate: time-major arrays 1, per-source scalars 0
_SCASS_UPDATE_AXES = ms.SCASSSourceUpdate(*(0 if f in ("recon", "kl", "loss") else 1
                                            for f in ms.SCASSSourceUpdate._fields))
_ENCODER_KEYS = ("mlp_gz_z", "inf_mean", "inf_logvar", "mlp_hx_g", "rnn_g")


# ----------------------------------------------------------------------------------------------
# Options.


@dataclasses.dataclass(frozen=True)
class MOTOptions:
    """MOT VEM options; defaults are the corrected behaviour, :meth:`reference` the published one."""

    ew_gamma: float = 1.0              # reference 0.008 (multiplies the E-W distance; temperature 1/gamma)
    beta_floor: float = 0.0            # reference 1e-10, added to beta before normalising
    phi_ratio: float = 0.04            # std = ratio * box width / height
    phi_from: str = "frame0"           # "frame0" (reference) | "detection"
    phi_update: str = "fixed"          # "fixed" (reference) | "per_frame" | "pooled"
    phi_floor: float = 1e-6            # added to an updated Phi (reference compute_phi: 1e-6)
    init: str = "chunked_trajectory"   # "chunked" (reference) | "chunked_trajectory" | "constant"
    init_chunk_len: int = 30
    init_iters: int = 20
    t0_var: float = 1e-5               # decoder variance pinned at t = 0
    kl_beta: float = 1.0               # KL weight of the DVAE loss (fine-tuning, loss_dvae)
    order: str = "ew_first"            # "ew_first" (reference) | "es_first"
    finetune: str = "off"              # "off" | "all" (reference when enabled) | "encoder"
    finetune_lr: float = 1e-3
    tol: float = 0.0                   # relative ELBO change that freezes the run; 0 = never

    @classmethod
    def reference(cls, **overrides) -> "MOTOptions":
        """The published settings (spec §1.3–1.4, §7.1)."""
        return cls(**{**dict(ew_gamma=0.008, beta_floor=1e-10, init="chunked"), **overrides})

    def __post_init__(self):
        _check(self.phi_from, ("frame0", "detection"), "phi_from")
        _check(self.phi_update, ("fixed", "per_frame", "pooled"), "phi_update")
        _check(self.init, ("chunked", "chunked_trajectory", "constant"), "init")
        _check(self.order, ("ew_first", "es_first"), "order")
        _check(self.finetune, _FINETUNE, "finetune")
        if self.ew_gamma <= 0 or self.phi_ratio <= 0 or self.init_chunk_len < 1 or self.init_iters < 0:
            raise ValueError("ew_gamma, phi_ratio, init_chunk_len must be > 0 and init_iters >= 0")


@dataclasses.dataclass(frozen=True)
class SCASSOptions:
    """SC-ASS VEM options; defaults are the corrected behaviour, :meth:`reference` the published one."""

    v_ratio: float = 0.03              # v = v_ratio * |x|^2 (ratio_v_theta_x)
    vx_floor: float = 1e-10            # added to v (reference 0: a zero bin gives inf/NaN there)
    complex_noise: str = "gaussian"    # reference "uniform" (bug, spec §7.2 #9)
    beta_floor: float = 0.0            # reference 1e-10
    order: str = "es_first"            # "es_first" (reference) | "ew_first"
    kl_beta: float = 0.01
    finetune: str = "off"
    finetune_lr: float = 1e-3
    tol: float = 0.0
    reuse_h_chain: bool = True         # E-Z's h chain stepped in the last E-S recursion (exact)
    losses: bool = True                # printed losses and ELBO every iteration (False: NaN, ~1/6 faster)

    @classmethod
    def reference(cls, **overrides) -> "SCASSOptions":
        return cls(**{**dict(vx_floor=0.0, complex_noise="uniform", beta_floor=1e-10), **overrides})

    def __post_init__(self):
        _check(self.complex_noise, ms.COMPLEX_NOISE, "complex_noise")
        _check(self.order, ("ew_first", "es_first"), "order")
        _check(self.finetune, _FINETUNE, "finetune")
        if not self.losses and self.tol > 0:
            raise ValueError("tol > 0 tests the ELBO every iteration: it needs losses=True")


def _check(value, allowed, name):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


# ----------------------------------------------------------------------------------------------
# Data, state, info.


class MOTData(NamedTuple):
    """Fixed inputs of a MOT run. obs (T, [B,] K, 4) zero where missing, mask (T, [B,] K) bool,
    frame0 (S, [B,] 4) the box each source starts from, params the (shared or stacked) SRNN params."""

    params: Any
    obs: jax.Array
    mask: jax.Array
    frame0: jax.Array


class SCASSData(NamedTuple):
    """Fixed inputs of an SC-ASS run: params stacked over sources, mix (T, [B,] F) complex STFT."""

    params: Any
    mix: jax.Array


class MOTState(NamedTuple):
    """mean, var (S, T, [B,] 4): q(s); eta (S, T, [B,] K); phi (T, [B,] K, 4) diagonal Phi; params and
    opt_state only when fine-tuning (else None); elbo, done, iteration: convergence bookkeeping; cost
    (S, T, [B,] K): the expected observation cost of (mean, var) (:func:`_mot_cost`), which the next E-W
    reuses when Phi is fixed."""

    mean: jax.Array
    var: jax.Array
    eta: jax.Array
    phi: jax.Array
    params: Any
    opt_state: Any
    elbo: jax.Array
    done: jax.Array
    iteration: jax.Array
    cost: Any = None


class SCASSState(NamedTuple):
    """Time-major with sources on axis 1: s_power (T, S, [B,] F), the next encoder input (sampled power);
    eta, v_phi (T, S, [B,] F); mu complex; h_enc (T, S, [B,] H), the encoder's h chain on s_power
    (``SCASSOptions.reuse_h_chain``; else None). (The per-source update is vmapped over
    axis 1, so its scans read and write these arrays in place, with no transposes.)"""

    s_power: jax.Array
    eta: jax.Array
    mu: jax.Array
    v_phi: jax.Array
    params: Any
    opt_state: Any
    elbo: jax.Array
    done: jax.Array
    iteration: jax.Array
    h_enc: Any = None


class MOTInfo(NamedTuple):
    """Per-iteration diagnostics; eta/mean/var are the iteration's outputs when ``record`` (else None)."""

    loss_elbo: jax.Array
    loss_dvae: jax.Array
    loss_qw_qs: jax.Array
    loss_qw: jax.Array
    loss_qs: jax.Array
    elbo: jax.Array
    converged: jax.Array
    eta: Any = None
    mean: Any = None
    var: Any = None


class SCASSInfo(NamedTuple):
    loss_elbo: jax.Array
    loss_dvae: jax.Array
    loss_qw_qs: jax.Array
    loss_qw: jax.Array
    loss_qs: jax.Array
    elbo: jax.Array
    converged: jax.Array
    eta: Any = None
    mu: Any = None
    v_phi: Any = None


def stack_params(param_list) -> Any:
    """Stack per-source parameter trees (identical structure) on a new leading source axis."""
    structs = {jax.tree.structure(p) for p in param_list}
    if len(structs) != 1:
        raise ValueError("per-source parameter trees must have the same structure to be stacked")
    shapes = [tuple(jnp.shape(a) for a in jax.tree.leaves(p)) for p in param_list]
    if any(s != shapes[0] for s in shapes):
        raise ValueError("per-source parameter trees must have identical shapes (same architecture)")
    return jax.tree.map(lambda *a: jnp.stack(a), *param_list)


def mot_data(params, obs, mask=None, frame0=None, num_sources: int | None = None) -> MOTData:
    """Validated MOT inputs (host side, not jitted).

    Args:
      obs: (T, [B,] K, 4) boxes; a row with any NaN is a missing detection.
      mask: optional (T, [B,] K) bool, False = missing (combined with the NaN test).
      frame0: optional (S, [B,] 4) start boxes; default detections 0..S-1 of frame 0 (the reference),
        which must then be present.
      num_sources: S when ``frame0`` is not given (default K).
    """
    obs = jnp.asarray(obs)
    if obs.ndim < 3 or obs.shape[-1] != 4:
        raise ValueError(f"obs must be (T, [B,] K, 4), got shape {obs.shape}")
    valid = jnp.all(jnp.isfinite(obs), axis=-1)
    if mask is not None:
        mask = jnp.asarray(mask, bool)
        if mask.shape != obs.shape[:-1]:
            raise ValueError(f"mask shape {mask.shape} != obs shape without the box axis {obs.shape[:-1]}")
        valid = valid & mask
    if frame0 is None:
        S = obs.shape[-2] if num_sources is None else num_sources
        if S > obs.shape[-2]:
            raise ValueError(f"{S} sources but only {obs.shape[-2]} detections per frame: pass frame0")
        if not bool(jnp.all(valid[0, ..., :S])):
            raise ValueError("a frame-0 detection used to seed a source is missing: pass frame0 explicitly")
        frame0 = jnp.moveaxis(obs[0, ..., :S, :], -2, 0)
    frame0 = jnp.asarray(frame0)
    if frame0.shape[1:] != obs.shape[1:-2] + (4,) or not bool(jnp.all(jnp.isfinite(frame0))):
        raise ValueError(f"frame0 must be finite (S, [B,] 4) matching obs {obs.shape}, got {frame0.shape}")
    return MOTData(params, jnp.where(valid[..., None], obs, 0.0), valid, frame0)


def scass_data(params, mix) -> SCASSData:
    """SC-ASS inputs: ``params`` stacked over sources (:func:`stack_params`), mix (T, [B,] F) complex."""
    mix = jnp.asarray(mix)
    if not jnp.iscomplexobj(mix) or mix.ndim < 2:
        raise ValueError(f"mix must be a complex STFT (T, [B,] F), got {mix.dtype} {mix.shape}")
    if not bool(jnp.all(jnp.isfinite(mix))):
        raise ValueError("mix contains NaN/inf")
    return SCASSData(params, mix)


# ----------------------------------------------------------------------------------------------
# Source mapping and noise.


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _per_source(key, S):
    return jax.random.split(key, S) if _is_key(key) else key


def _split_leading(key, n):
    return jax.random.split(key, n) if _is_key(key) else key


def _map_sources(fn, params, params_axis, xs, S, mode, xs_axes=0, out_axes=0):
    """``stack_n fn(params_n, xs_n)`` with params shared (axis None) or stacked (axis 0); the source axis
    of ``xs`` and of the outputs is ``xs_axes`` / ``out_axes`` (pytree prefixes, as ``jax.vmap``'s)."""
    if mode == "vmap":
        return jax.vmap(fn, in_axes=(params_axis, xs_axes), out_axes=out_axes)(params, xs)
    if mode not in ("map", "loop"):
        raise ValueError(f"source_map must be one of {SOURCE_MAPS}, got {mode!r}")
    xs = _move_axes(xs, xs_axes)
    if mode == "map":
        out = (jax.lax.map(lambda x: fn(params, x), xs) if params_axis is None
               else jax.lax.map(lambda px: fn(*px), (params, xs)))
    else:
        pick = (lambda n: params) if params_axis is None else (lambda n: jax.tree.map(lambda a: a[n], params))
        outs = [fn(pick(n), jax.tree.map(lambda a: a[n], xs)) for n in range(S)]
        out = jax.tree.map(lambda *a: jnp.stack(a), *outs)
    if isinstance(out_axes, int):
        return _move_axes(out, out_axes, back=True)
    return type(out)(*(_move_axes(o, ax, back=True) for o, ax in zip(out, out_axes)))


def _move_axes(tree, axes, back=False):
    """Every leaf's axis ``axes`` (an int or a pytree prefix of ints) to the front, or (``back``) from the
    front to there."""
    def move(ax, sub):
        return jax.tree.map(lambda a: jnp.moveaxis(a, 0, ax) if back else jnp.moveaxis(a, ax, 0), sub)
    return move(axes, tree) if isinstance(axes, int) else jax.tree.map(move, axes, tree)


def _softmax_sources(log_beta, floor, axis=0):
    """:math:`(\\beta_n + \\epsilon) / \\sum_m (\\beta_m + \\epsilon)` over sources (``axis``) from
    :math:`\\log\\beta`, shifted by :math:`M = \\max(\\max_n \\log\\beta_n, \\log\\epsilon)` so that nothing
    overflows: one exponential per element (a log-domain ``logaddexp`` then softmax costs three)."""
    if floor <= 0:
        return jax.nn.softmax(log_beta, axis=axis)
    shift = jnp.maximum(jnp.max(log_beta, axis=axis, keepdims=True), math.log(floor))
    e = jnp.exp(log_beta - shift) + jnp.exp(math.log(floor) - shift)
    return e / jnp.sum(e, axis=axis, keepdims=True)


def _freeze(done, new, old):
    return jax.tree.map(lambda a, b: jnp.where(done, b, a), new, old)


def _converged(elbo, prev, iteration, tol):
    if tol <= 0:
        return jnp.asarray(False)
    return (iteration > 0) & (jnp.abs(elbo - prev) < tol * jnp.abs(prev))


def _finetune_setup(finetune, lr, params):
    if finetune == "off":
        return None, None
    opt = optax.adam(lr)
    if finetune == "encoder":
        mask = {k: jax.tree.map(lambda _: k in _ENCODER_KEYS, v) for k, v in params.items()}
        opt = optax.masked(opt, mask)
        opt = optax.chain(opt, optax.masked(optax.set_to_zero(), jax.tree.map(lambda m: not m, mask)))
    return opt, opt.init(params)


def _optimizer(finetune, lr, params):
    return _finetune_setup(finetune, lr, params)[0]


def _xlogx(p):
    return jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)


# ----------------------------------------------------------------------------------------------
# MOT pieces (pure, usable alone).


def mot_phi_from_boxes(boxes, valid, ratio):
    """Diagonal :math:`\\Phi` = (rho w, rho h, rho w, rho h)^2 of boxes (..., 4); invalid rows get the mean
    of the valid ones of the same sequence (last axis before the box = detections)."""
    w = jnp.abs(boxes[..., 2] - boxes[..., 0])
    h = jnp.abs(boxes[..., 3] - boxes[..., 1])
    var = (ratio * jnp.stack([w, h, w, h], axis=-1)) ** 2
    ok = valid & jnp.all(var > 0, axis=-1)
    count = jnp.sum(ok, axis=-1, keepdims=True)
    mean = jnp.sum(jnp.where(ok[..., None], var, 0.0), axis=-2) / jnp.maximum(count, 1)
    mean = jnp.where(count > 0, mean, (ratio * 0.05) ** 2)
    return jnp.where(ok[..., None], var, mean[..., None, :])


def _sum_coords(x):
    """Sum over the (4) box coordinates, written out: XLA:CPU runs a reduction over such a short axis
    several times slower than the unrolled adds, which fuse with the surrounding elementwise ops."""
    out = x[..., 0]
    for j in range(1, x.shape[-1]):
        out = out + x[..., j]
    return out


def _mot_distance(obs, phi, mean, var):
    """(o - m)^T Phi^-1 (o - m) and tr(Phi^-1 Sigma), (S, T, [B,] K), all diagonal."""
    d = obs[None] - mean[..., None, :]
    return _sum_coords(d * d / phi), _sum_coords(var[..., None, :] / phi)


def mot_assignment(obs, mask, phi, mean, var, gamma, floor):
    """E-W for MOT: eta (S, T, [B,] K), rows over sources sum to one where ``mask``, 0 elsewhere;
    :math:`\\log\\beta = -\\tfrac12\\log|\\Phi| - \\tfrac\\gamma2[(o-m)^\\top\\Phi^{-1}(o-m)
    + \\mathrm{tr}(\\Phi^{-1}\\Sigma)]`."""
    return _assignment_from_cost(_mot_cost(obs, phi, mean, var), phi, mask, gamma, floor)


def _mot_cost(obs, phi, mean, var):
    """:math:`c_{tkn} = \\tfrac12[\\log|\\Phi_{tk}| + (o_{tk}-m_{tn})^\\top\\Phi_{tk}^{-1}(o_{tk}-m_{tn})
    + \\mathrm{tr}(\\Phi_{tk}^{-1}\\Sigma_{tn})]`, (S, T, [B,] K): the expected negative log-likelihood of
    an observation under a source up to :math:`2\\log 2\\pi`, shared by E-W, the ELBO and the printed losses."""
    d = obs[None] - mean[..., None, :]
    return jax.lax.optimization_barrier(0.5 * _sum_coords(jnp.log(phi) + (d * d + var[..., None, :]) / phi))


def _assignment_from_cost(cost, phi, mask, gamma, floor):
    """:func:`mot_assignment` from its :func:`_mot_cost` (the same :math:`\\log\\beta`, written
    :math:`-\\gamma c - \\tfrac{1-\\gamma}2\\log|\\Phi|`)."""
    log_beta = -gamma * cost - 0.5 * (1.0 - gamma) * _sum_coords(jnp.log(phi))
    return jnp.where(mask, _softmax_sources(log_beta, floor), 0.0)


def mot_elbo_terms(eta, mask, obs, phi, mean, var, dec: Gaussian, q: Gaussian, p: Gaussian):
    """Proper ELBO terms (nats, summed over everything but the batch axes) of one MOT iteration.

    Shapes: eta (S, T, [B,] K), mean/var/dec (S, T, [B,] 4), q/p (S, T, [B,] Z). Returns a dict of
    (batch,) arrays: obs, log_pw, ent_w, ent_s, dvae_s, kl_z and their sum ``elbo``.
    """
    S = eta.shape[0]
    batch_axes = tuple(range(2, mean.ndim - 1))

    def total(x, lead):
        return jnp.sum(x, axis=tuple(a for a in range(x.ndim) if a not in
                                     tuple(b - 2 + lead for b in batch_axes)))

    maha, trace = _mot_distance(obs, phi, mean, var)
    log_n = -0.5 * (4 * _LOG2PI + jnp.sum(jnp.log(phi), -1) + maha + trace)
    terms = {
        "obs": total(eta * log_n, 2),
        "log_pw": total(jnp.where(mask, -math.log(S), 0.0), 1),
        "ent_w": total(-_xlogx(eta), 2),
        "ent_s": total(0.5 * (_LOG2PI + 1.0 + jnp.log(var)), 2),
        "dvae_s": total(-0.5 * (_LOG2PI + dec.logvar + ((mean - dec.mean) ** 2 + var) * jnp.exp(-dec.logvar)), 2),
        "kl_z": total(0.5 * (p.logvar - q.logvar + (jnp.exp(q.logvar) + (q.mean - p.mean) ** 2)
                             * jnp.exp(-p.logvar) - 1.0), 2),
    }
    terms["elbo"] = (terms["obs"] + terms["log_pw"] + terms["ent_w"] + terms["ent_s"] + terms["dvae_s"]
                     - terms["kl_z"])
    return terms


def _mot_printed(eta, obs, phi, mean, var, dvae_losses):
    """The reference's printed losses (spec §1.3), summed/normalised as it does."""
    S, K = eta.shape[0], eta.shape[-1]
    bt = math.prod(mean.shape[1:-1])
    loss_qw = jnp.sum(eta * jnp.log(eta + 1e-10)) / (S * bt * K)
    loss_qs = -0.5 * jnp.sum(jnp.log(var)) / (bt * S)
    maha, trace = _mot_distance(obs, phi, mean, var)
    loss_qwqs = jnp.sum(eta * 0.5 * (jnp.sum(jnp.log(phi), -1) + maha + trace)) / (S * bt * K)
    loss_dvae = jnp.mean(dvae_losses)
    return loss_qwqs + loss_dvae + loss_qw + loss_qs, loss_dvae, loss_qwqs, loss_qw, loss_qs


def _mot_diagnostics(eta, mask, cost, mean, var, dec: Gaussian, q: Gaussian, p: Gaussian, dvae_losses):
    """The printed losses of :func:`_mot_printed` and the total ELBO of :func:`mot_elbo_terms` (summed
    over the batch) from ``cost`` = :func:`_mot_cost`, computed once per iteration; the sums over each
    shape are one reduction of stacked terms. The two term-by-term functions re-derive the cost per term
    (a third of a MOT iteration's time went there). Same values up to rounding
    (``tests/test_mixdvae_vem.py``)."""
    S, K = eta.shape[0], eta.shape[-1]
    bt = math.prod(mean.shape[1:-1])
    per_k = jnp.sum(jnp.stack([eta * cost, eta * jnp.log(eta + 1e-10), _xlogx(eta)]),
                    axis=tuple(range(1, eta.ndim + 1)))
    per_coord = jnp.sum(jnp.stack([
        jnp.log(var),
        dec.logvar + ((mean - dec.mean) ** 2 + var) * jnp.exp(-dec.logvar)]), axis=tuple(range(1, mean.ndim + 1)))
    kl = 0.5 * jnp.sum(p.logvar - q.logvar + (jnp.exp(q.logvar) + (q.mean - p.mean) ** 2) * jnp.exp(-p.logvar) - 1.0)
    n_obs, n_coord = jnp.sum(mask), mean.size
    loss_qwqs, loss_qw = per_k[0] / (S * bt * K), per_k[1] / (S * bt * K)
    loss_qs = -0.5 * per_coord[0] / (bt * S)
    loss_dvae = jnp.mean(dvae_losses)
    printed = (loss_qwqs + loss_dvae + loss_qw + loss_qs, loss_dvae, loss_qwqs, loss_qw, loss_qs)
    elbo = (-(2 * _LOG2PI) * jnp.sum(eta) - per_k[0]          # E log p(o|w,s)
            - math.log(S) * n_obs                           # E log p(w)
            - per_k[2]                                      # H[q(w)]
            + 0.5 * ((_LOG2PI + 1.0) * n_coord + per_coord[0])   # H[q(s)]
            - 0.5 * (_LOG2PI * n_coord + per_coord[1])      # E log p(s | z)
            - kl)
    return printed, elbo


def _mot_phi_update(mode, obs, mask, eta, mean, var, phi, floor):
    if mode == "fixed":
        return phi
    d = obs[None] - mean[..., None, :]                               # (S, T, [B,] K, 4)
    stat = jnp.sum(eta[..., None] * (var[..., None, :] + d * d), axis=0)  # (T, [B,] K, 4)
    if mode == "per_frame":
        return jnp.where(mask[..., None], stat + floor, phi)
    w = jnp.where(mask[..., None], stat, 0.0)
    n = jnp.sum(mask, axis=(0, -1))[..., None]                       # ([B,], 1)
    pooled = jnp.sum(w, axis=(0, -2)) / jnp.maximum(n, 1) + floor    # ([B,] 4)
    pooled = jnp.where(n > 0, pooled, jnp.mean(phi, axis=(0, -2)))
    return jnp.broadcast_to(pooled[None, ..., None, :], phi.shape)


# ----------------------------------------------------------------------------------------------
# MOT VEM.


def mot_vem(config, options: MOTOptions = MOTOptions(), *, params_stacked: bool = False,
            source_map: str = "vmap", record: bool = True) -> Algorithm:
    """The MOT MixDVAE VEM as a pure ``(init, step)`` :class:`~vdvae_jax.inference.base.Algorithm`.

    Args:
      config: the MOT SRNN config (:class:`~vdvae_jax.models.srnn_mixdvae.MOTSRNNConfig`).
      options: :class:`MOTOptions`.
      params_stacked: False = one SRNN shared by all sources (reference); True = params stacked (S, ...).
      source_map: ``"vmap"`` | ``"map"`` | ``"loop"`` over sources.
      record: keep eta/mean/var of every iteration in ``info``.

    ``init(key, data) -> MOTState``; ``step(key, state, data) -> (MOTState, MOTInfo)``; ``data`` from
    :func:`mot_data`.
    """
    o = options
    _check(source_map, SOURCE_MAPS, "source_map")
    p_axis = 0 if params_stacked else None

    def es_sources(params, key, mean, eta, phi, data):
        S = mean.shape[0]
        phi_inv = 1.0 / phi

        def one(p, xs):
            x_init, eta_n, frame0_n, noise_n = xs
            return ms.mot_source_update(p, config, x_init, eta_n, phi_inv, data.obs, frame0_n, noise_n,
                                        mask=data.mask, t0_var=o.t0_var, beta=o.kl_beta,
                                        unrolled=o.finetune == "off")

        return _map_sources(one, params, p_axis, (mean, eta, data.frame0, _per_source(key, S)), S, source_map)

    def init(key, data, params=None, opt_state=None):
        """Initial state. ``params``/``opt_state`` continue a fine-tuned run (default: data.params, fresh Adam)."""
        obs, mask, frame0 = data.obs, data.mask, data.frame0
        S, T = frame0.shape[0], obs.shape[0]
        if o.phi_from == "frame0":
            phi0 = mot_phi_from_boxes(obs[0], mask[0], o.phi_ratio)
            phi = jnp.broadcast_to(phi0, obs.shape)
        else:
            phi = mot_phi_from_boxes(obs, mask, o.phi_ratio)
        # initial covariance of source n: Phi of its start box (reference: Phi of detection n)
        var0 = mot_phi_from_boxes(frame0, jnp.ones(frame0.shape[:-1], bool), o.phi_ratio)  # (S, [B,] 4)
        const = jnp.broadcast_to(frame0[:, None], (S, T) + frame0.shape[1:])
        var_c = jnp.broadcast_to(var0[:, None], const.shape)
        p = data.params if params is None else params
        if o.init == "constant" or o.init_iters == 0:
            mean, var = const, var_c
        else:
            mean, var = _chunked_init(key, p, data, phi, frame0, var0)
        cost = _mot_cost(obs, phi, mean, var)
        eta = _assignment_from_cost(cost, phi, mask, o.ew_gamma, o.beta_floor)
        if o.finetune == "off":
            p, opt_state = None, None
        elif opt_state is None:
            opt_state = _finetune_setup(o.finetune, o.finetune_lr, p)[1]
        zero = jnp.zeros((), mean.dtype)
        return MOTState(mean, var, eta, phi, p, opt_state, zero, jnp.asarray(False), jnp.asarray(0, jnp.int32),
                        cost)

    def _chunked_init(key, params, data, phi, frame0, var0):
        T, L = data.obs.shape[0], o.init_chunk_len
        if T % L:
            raise ValueError(f"init='{o.init}' needs T ({T}) to be a multiple of init_chunk_len ({L}); "
                             "use init='constant' or another init_chunk_len")
        C = T // L
        chunks = lambda a: a.reshape((C, L) + a.shape[1:])              # noqa: E731
        xs = (chunks(data.obs), chunks(data.mask), chunks(phi), _split_leading(key, C))

        def chunk(start, inp):
            obs_c, mask_c, phi_c, key_c = inp
            d = MOTData(None, obs_c, mask_c, start)
            m0 = jnp.broadcast_to(start[:, None], (start.shape[0], L) + start.shape[1:])
            v0 = jnp.broadcast_to(var0[:, None], m0.shape)

            def it(carry, k):
                m, v = carry
                eta = mot_assignment(obs_c, mask_c, phi_c, m, v, o.ew_gamma, o.beta_floor)
                upd = es_sources(params, k, m, eta, phi_c, d)
                return (upd.mean, upd.var), None

            (m, v), _ = jax.lax.scan(it, (m0, v0), _split_leading(key_c, o.init_iters))
            return m[:, -1], (m0, v0, m, v)

        _, (m0, v0, m, v) = jax.lax.scan(chunk, frame0, xs)            # (C, S, L, [B,] 4)
        if o.init == "chunked":
            m, v = m0, v0
        unchunk = lambda a: jnp.moveaxis(a, 0, 1).reshape((a.shape[1], T) + a.shape[3:])  # noqa: E731
        return unchunk(m), unchunk(v)

    def ew(state, data):
        if o.phi_update == "fixed":   # the cost of state.mean/var under this Phi is in the state
            return _assignment_from_cost(state.cost, state.phi, data.mask, o.ew_gamma, o.beta_floor)
        return mot_assignment(data.obs, data.mask, state.phi, state.mean, state.var, o.ew_gamma, o.beta_floor)

    def es(key, state, eta, data):
        params = data.params if o.finetune == "off" else state.params
        if o.finetune == "off":
            return es_sources(params, key, state.mean, eta, state.phi, data), params, state.opt_state

        def total(pp):
            upd = es_sources(pp, key, state.mean, eta, state.phi, data)
            return jnp.sum(upd.loss), upd

        (_, upd), grads = jax.value_and_grad(total, has_aux=True)(params)
        opt = _optimizer(o.finetune, o.finetune_lr, params)
        updates, opt_state = opt.update(grads, state.opt_state, params)
        upd = jax.tree.map(jax.lax.stop_gradient, upd)
        return upd, optax.apply_updates(params, updates), opt_state

    def step(key, state, data):
        if o.order == "ew_first":
            eta = ew(state, data)
            upd, params, opt_state = es(key, state, eta, data)
            cost = _mot_cost(data.obs, state.phi, upd.mean, upd.var)
        else:
            upd, params, opt_state = es(key, state, state.eta, data)
            cost = _mot_cost(data.obs, state.phi, upd.mean, upd.var)
            eta = _assignment_from_cost(cost, state.phi, data.mask, o.ew_gamma, o.beta_floor)
        printed, elbo = _mot_diagnostics(eta, data.mask, cost, upd.mean, upd.var, upd.dec, upd.q, upd.p, upd.loss)
        phi = _mot_phi_update(o.phi_update, data.obs, data.mask, eta, upd.mean, upd.var, state.phi,
                              o.phi_floor)
        conv = _converged(elbo, state.elbo, state.iteration, o.tol)
        new = MOTState(upd.mean, upd.var, eta, phi, params if o.finetune != "off" else None,
                       opt_state if o.finetune != "off" else None, elbo, state.done | conv,
                       state.iteration + 1, cost)
        if o.tol > 0:
            new = _freeze(state.done, new, state)
        info = MOTInfo(*printed, elbo, new.done,
                       *((new.eta, new.mean, new.var) if record else (None, None, None)))
        return new, info

    return Algorithm(init, step)


# ----------------------------------------------------------------------------------------------
# SC-ASS VEM.


def scass_assignment(mix, v_x, mu, v_phi, floor):
    """E-W for SC-ASS: :math:`\\eta = \\mathrm{softmax}_n[-\\log v - (|x-\\mu_n|^2 + v^\\phi_n)/v]`, (T, S, [B,] F)
    from the mixture ``mix`` and ``v_x`` (T, [B,] F) and the per-source ``mu``, ``v_phi`` (T, S, [B,] F)."""
    return _softmax_sources(-_scass_cost(mix, v_x, mu, v_phi), floor, axis=1)


def _bins(a):
    """A mixture-level array (T, [B,] F) against per-source arrays (T, S, [B,] F)."""
    return a[:, None]


def _scass_cost(mix, v_x, mu, v_phi):
    """:math:`c_{ftn} = \\log v_{ft} + (|x_{ft}-\\mu_{ftn}|^2 + v^\\phi_{ftn})/v_{ft}`, (T, S, [B,] F): the
    expected negative log-likelihood of the mixture under a source up to :math:`\\log\\pi`, shared by E-W,
    the ELBO and the printed losses."""
    d = _bins(mix) - mu
    # log v and 1/v once per bin (materialised: fused into the per-source producer, XLA would recompute
    # them for every source)
    log_v, inv_v = jax.lax.optimization_barrier((jnp.log(v_x), 1.0 / v_x))
    return _cost_from_distance(log_v, inv_v, jnp.real(d) ** 2 + jnp.imag(d) ** 2, v_phi)


def _cost_from_distance(log_v, inv_v, distance, v_phi):
    """The cost of :func:`_scass_cost` from the per-bin ``log_v``, ``inv_v`` and :math:`|x - \\mu|^2`
    (materialised: every E-W, loss and ELBO term reads it)."""
    return jax.lax.optimization_barrier(_bins(log_v) + (distance + v_phi) * _bins(inv_v))


class _Bins(NamedTuple):
    """Per-bin constants of an SC-ASS run, (T, [B,] F): the mixture's parts and power, log v, 1/v."""

    re: jax.Array
    im: jax.Array
    power: jax.Array
    log_v: jax.Array
    inv_v: jax.Array


def _scass_bins(mix, v_x) -> _Bins:
    # materialised (and, depending on the data only, hoisted out of the iteration loop by XLA):
    # fused into the per-source consumers, they would be recomputed for every source
    re, im = jnp.real(mix), jnp.imag(mix)
    return _Bins(*jax.lax.optimization_barrier((re, im, re * re + im * im, jnp.log(v_x), 1.0 / v_x)))


def _scass_posterior(eta, bins: _Bins, v_theta):
    """E-S in closed form on the stacked sources (T, S, [B,] F), the formulas of
    :func:`~vdvae_jax.inference.mixdvae_source.scass_source_update`: :math:`v_\\phi = (\\eta/v + 1/v_\\theta)^{-1}`
    and the real gain :math:`w = v_\\phi \\eta / v` of the posterior mean :math:`\\mu = w x`."""
    gain = eta * _bins(bins.inv_v)
    v_phi = 1.0 / (gain + 1.0 / v_theta)
    return v_phi, v_phi * gain


def _scass_cost_from_gain(bins: _Bins, w, v_phi):
    """:func:`_scass_cost` for :math:`\\mu = w x`: :math:`|x - \\mu|^2 = (1 - w)^2 |x|^2`, so no complex
    per-source array is read (same values up to rounding)."""
    return _cost_from_distance(bins.log_v, bins.inv_v, (1.0 - w) ** 2 * _bins(bins.power), v_phi)


def _scass_diagnostics(eta, cost, mu_power, v_phi, v_theta, q: Gaussian, p: Gaussian, dvae_losses):
    """The printed losses of :func:`_scass_printed` and the total ELBO of :func:`scass_elbo_terms` (summed
    over the batch) from ``cost`` = :func:`_scass_cost` and ``mu_power`` = :math:`|\\mu|^2`, in one pass
    over the shared tensors. Same values up to rounding (``tests/test_mixdvae_vem.py``).

    Each term is its own full reduction, which XLA fuses with the term's elementwise producer; one
    reduction of the stacked terms (as :func:`_mot_diagnostics` does with its 4-coordinate arrays)
    materialised the (T, S, B, F) terms first (2.7x slower on XLA:CPU).

    The entropy :math:`H[q(w)] = -\\sum \\eta\\log\\eta` reuses the printed loss's
    :math:`\\sum \\eta\\log(\\eta + 10^{-10})` (one logarithm per element less): per element the two differ by
    :math:`\\eta\\log(1 + 10^{-10}/\\eta) \\in [0, 10^{-10}]`, so the ELBO moves by at most :math:`10^{-10}`
    per assignment probability, far below its float32 resolution."""
    S, F = eta.shape[1], eta.shape[-1]
    bt = eta.size // (S * F)
    broadcast = -jnp.sum(eta, axis=1, keepdims=True) * cost   # the reference's eta broadcast (spec §7.2 #19)
    eta_cost, eta_log_eta, log_v_phi, dvae_s, wrong, eta_total = (jnp.sum(term) for term in (
        eta * cost, eta * jnp.log(eta + 1e-10), jnp.log(v_phi),
        jnp.log(v_theta) + (mu_power + v_phi) / v_theta,
        jnp.where(jnp.isfinite(broadcast), broadcast, 0.0), eta))
    kl = 0.5 * jnp.sum(p.logvar - q.logvar + (jnp.exp(q.logvar) + (q.mean - p.mean) ** 2) * jnp.exp(-p.logvar) - 1.0)
    n_obs, n_src = eta.size // S, eta.size
    loss_qw, loss_qs = eta_log_eta / (S * bt * F), -0.5 * log_v_phi / (bt * S)
    loss_qwqs, loss_dvae = wrong / (S * F), jnp.mean(dvae_losses)
    printed = (loss_qwqs + loss_dvae + loss_qw + loss_qs, loss_dvae, loss_qwqs, loss_qw, loss_qs)
    elbo = (-math.log(math.pi) * eta_total - eta_cost       # E log p(x | w, s)
            - math.log(S) * n_obs                           # E log p(w)
            - eta_log_eta                                   # H[q(w)] (see above)
            + math.log(math.pi * math.e) * n_src + log_v_phi  # H[q(s)]
            - math.log(math.pi) * n_src - dvae_s            # E log p(s | z)
            - kl)
    return printed, elbo


def _scass_printed(eta, mix, v_x, mu, v_phi, dvae_losses):
    S, F = eta.shape[1], eta.shape[-1]
    bt = eta.size // (S * F)
    loss_qw = jnp.sum(eta * jnp.log(eta + 1e-10)) / (S * bt * F)
    loss_qs = -0.5 * jnp.sum(jnp.log(v_phi)) / (bt * S)
    term = jnp.log(_bins(v_x)) + (jnp.abs(_bins(mix) - mu) ** 2 + v_phi) / _bins(v_x)       # (T, S, [B,] F)
    # reference bug (spec §7.2 #19): the full eta tensor multiplies every source's term, and the sum is
    # broadcast over (B, T) before dividing by S*B*T*F
    prod = -jnp.sum(eta, axis=1, keepdims=True) * term
    loss_qwqs = jnp.sum(jnp.where(jnp.isfinite(prod), prod, 0.0)) / (S * F)
    loss_dvae = jnp.mean(dvae_losses)
    return loss_qwqs + loss_dvae + loss_qw + loss_qs, loss_dvae, loss_qwqs, loss_qw, loss_qs


def scass_elbo_terms(eta, mix, v_x, mu, v_phi, v_theta, q: Gaussian, p: Gaussian):
    """Proper SC-ASS ELBO terms (complex Gaussians, nats), summed over everything but batch axes; per-source
    arrays (T, S, [B,] ·), mixture arrays (T, [B,] F)."""
    S = eta.shape[1]
    batch_axes = tuple(range(2, mu.ndim - 1))

    def total(x, lead):
        keep = tuple(b - 2 + lead for b in batch_axes)
        return jnp.sum(x, axis=tuple(a for a in range(x.ndim) if a not in keep))

    log_n = -jnp.log(math.pi * _bins(v_x)) - (jnp.abs(_bins(mix) - mu) ** 2 + v_phi) / _bins(v_x)
    terms = {
        "obs": total(eta * log_n, 2),
        "log_pw": total(jnp.full(mix.shape, -math.log(S)), 1),
        "ent_w": total(-_xlogx(eta), 2),
        "ent_s": total(jnp.log(math.pi * math.e * v_phi), 2),
        "dvae_s": total(-jnp.log(math.pi * v_theta) - (jnp.abs(mu) ** 2 + v_phi) / v_theta, 2),
        "kl_z": total(0.5 * (p.logvar - q.logvar + (jnp.exp(q.logvar) + (q.mean - p.mean) ** 2)
                             * jnp.exp(-p.logvar) - 1.0), 2),
    }
    terms["elbo"] = (terms["obs"] + terms["log_pw"] + terms["ent_w"] + terms["ent_s"] + terms["dvae_s"]
                     - terms["kl_z"])
    return terms


def scass_vem(config, options: SCASSOptions = SCASSOptions(), *, params_stacked: bool = True,
              num_sources: int | None = None, source_map: str = "vmap", record: bool = True) -> Algorithm:
    """The SC-ASS MixDVAE VEM (spec §1.5) as a pure ``(init, step)`` Algorithm.

    Args:
      config: the SC-ASS SRNN config shared by every source's architecture
        (:class:`~vdvae_jax.models.srnn_mixdvae.SCASSSRNNConfig`); the weights differ per source.
      params_stacked: True (default) = ``data.params`` stacked over sources (:func:`stack_params`);
        False = one prior shared by ``num_sources`` sources.
      record: keep eta, mu, v_phi of every iteration in ``info``.

    ``init(key, data, params=None, opt_state=None, s_power=None)``: :math:`P^{(0)}_n` = DVAE_n's
    teacher-forced reconstruction of :math:`|x|^2` (or the given ``s_power``, (T, S, [B,] F)),
    :math:`\\eta = 1/S`; ``step(key, state, data)``: E-S/E-Z then E-W (``order``).
    """
    o = options
    _check(source_map, SOURCE_MAPS, "source_map")
    p_axis = 0 if params_stacked else None
    reuse = o.reuse_h_chain and o.finetune == "off"   # fine-tuning changes the weights between the passes

    def vx(mix):
        return o.v_ratio * (jnp.real(mix) ** 2 + jnp.imag(mix) ** 2) + o.vx_floor

    def init(key, data, params=None, opt_state=None, s_power=None):
        mix = data.mix
        p = data.params if params is None else params
        S = jax.tree.leaves(p)[0].shape[0] if params_stacked else num_sources
        if S is None:
            raise ValueError("scass_vem(..., params_stacked=False) needs num_sources")
        if s_power is not None:   # a given start (T, S, [B,] F), e.g. a recorded one
            s0 = jnp.asarray(s_power, jnp.real(mix).dtype)
            if s0.shape != mix.shape[:1] + (S,) + mix.shape[1:]:
                raise ValueError(f"s_power must be (T, S, [B,] F) = {mix.shape[:1] + (S,) + mix.shape[1:]}, "
                                 f"got {s0.shape}")
        else:
            power = jnp.real(mix) ** 2 + jnp.imag(mix) ** 2
            s0 = _map_sources(lambda pp, k: ms.scass_vem_initialization(pp, config, power, k),
                              p, p_axis, _per_source(key, S), S, source_map, out_axes=1)
        eta = jnp.full(s0.shape, 1.0 / S, s0.dtype)
        if o.finetune == "off":
            p, opt_state = None, None
        elif opt_state is None:
            opt_state = _finetune_setup(o.finetune, o.finetune_lr, p)[1]
        zero = jnp.zeros((), s0.dtype)
        h_enc = None
        if reuse:
            h_enc = _map_sources(lambda pp, sp: h_teacher_forced(pp, config, sp), data.params, p_axis, s0, S,
                                 source_map, xs_axes=1, out_axes=1)
        return SCASSState(s0, eta, jnp.zeros(s0.shape, mix.dtype), jnp.zeros_like(s0), p, opt_state, zero,
                          jnp.asarray(False), jnp.asarray(0, jnp.int32), h_enc)

    def es_sources(params, key, s_power, eta, data, h_enc=None):
        S = s_power.shape[1]
        v_x = vx(data.mix)
        keys = _per_source(key, S)
        u = None
        if _is_key(key):   # each source's complex noise, drawn in place on the sources axis 1 (the same bits)
            u = noise_pair_stacked(keys, ms.COMPLEX_NOISE_NAMES, data.mix.shape,
                                   ms.complex_noise_law(o.complex_noise), axis=1, as_complex=True)

        def one(p, xs):
            sp, eta_n, noise_n, h_n, u_n = xs
            return ms.scass_source_update(p, config, sp, eta_n, v_x, data.mix, noise_n,
                                          complex_noise=o.complex_noise, beta=o.kl_beta, h_enc=h_n,
                                          next_h_enc=reuse, u=u_n)

        return _map_sources(one, params, p_axis, (s_power, eta, keys, h_enc, u), S, source_map,
                            xs_axes=(1, 1, 0, 1, 1), out_axes=_SCASS_UPDATE_AXES)

    def es(key, state, eta, data):
        if o.finetune == "off":
            return es_sources(data.params, key, state.s_power, eta, data, state.h_enc), None, None
        params = state.params

        def total(pp):
            upd = es_sources(pp, key, state.s_power, eta, data)
            steps = math.prod(upd.s_power.shape[:1] + upd.s_power.shape[2:-1])   # T * B
            # targets detached as in the reference (E-S runs on detached inputs)
            recon = jax.vmap(lambda pw, vt: observation_nll(
                "is", jax.lax.stop_gradient(pw), Gaussian(jnp.zeros_like(vt), jnp.log(vt)),
                is_eps=config.is_eps), in_axes=1)(upd.s_power, upd.v_theta_s) / steps
            kl = upd.kl
            return jnp.sum(recon + o.kl_beta * kl), upd

        (_, upd), grads = jax.value_and_grad(total, has_aux=True)(params)
        opt = _optimizer(o.finetune, o.finetune_lr, params)
        updates, opt_state = opt.update(grads, state.opt_state, params)
        return jax.tree.map(jax.lax.stop_gradient, upd), optax.apply_updates(params, updates), opt_state

    def step(key, state, data):
        v_x = vx(data.mix)
        bins = _scass_bins(data.mix, v_x)
        if o.order == "es_first":
            eta_es = state.eta
        else:
            eta_es = scass_assignment(data.mix, v_x, state.mu, state.v_phi, o.beta_floor)
            eta_es = jnp.where(state.iteration > 0, eta_es, state.eta)   # no posterior yet at i = 0
        upd, params, opt_state = es(key, state, eta_es, data)
        # the posterior again, on the stacked sources (the update's own v_phi and mu are left unread:
        # computed inside the vmap, they come out with the source axis first and cost transposes)
        v_phi, w = _scass_posterior(eta_es, bins, upd.v_theta_s)
        cost = _scass_cost_from_gain(bins, w, v_phi)
        eta = _softmax_sources(-cost, o.beta_floor, axis=1) if o.order == "es_first" else eta_es
        mu = jax.lax.complex(w * _bins(bins.re), w * _bins(bins.im))
        if o.losses:
            printed, elbo = _scass_diagnostics(eta, cost, w * w * _bins(bins.power), v_phi, upd.v_theta_s,
                                               upd.q, upd.p, upd.loss)
        else:   # nothing reads them: XLA drops the DVAE losses and the sums
            printed, elbo = (jnp.full((), jnp.nan, cost.dtype),) * 5, jnp.full((), jnp.nan, cost.dtype)
        conv = _converged(elbo, state.elbo, state.iteration, o.tol)
        new = SCASSState(upd.s_power, eta, mu, v_phi, params, opt_state, elbo, state.done | conv,
                         state.iteration + 1, upd.h_enc_next if reuse else None)
        if o.tol > 0:
            new = _freeze(state.done, new, state)
        info = SCASSInfo(*printed, elbo, new.done,
                         *((new.eta, new.mu, new.v_phi) if record else (None, None, None)))
        return new, info

    return Algorithm(init, step)


# ----------------------------------------------------------------------------------------------
# Drivers.


def solve(algorithm: Algorithm, key, data, n_iter: int, *, init_key=None, jit: bool = True, devices=None):
    """``init`` then ``n_iter`` steps as one ``lax.scan`` (:func:`~vdvae_jax.inference.base.run`), jitted
    once per shape. ``key`` drives the iterations (typed key, or per-iteration noise with leading axis
    ``n_iter``); ``init_key`` the initialisation (default: derived from a typed ``key``).

    ``devices``: ``None`` runs on the default device. An int ``n`` (the first ``n`` local devices) or a
    list of devices splits the batch axis of the data (``B`` windows / mixtures, divisible by their number)
    into equal groups that run **at once**, one per device (``jax.shard_map``; on a CPU, make one device
    per core with ``jax.config.update("jax_num_cpu_devices", n)`` before JAX starts). Group ``i`` is an
    ordinary VEM run on its windows with keys ``fold_in(init_key, i)`` / ``fold_in(key, i)``, so with
    several devices the random draws differ from the one-device run (same law). Everything that reduces
    over the batch inside a group (printed losses, ELBO, convergence flags and, when fine-tuning, the
    fine-tuned parameters) comes back with a new leading device axis, one value per group.

    Returns ``(final_state, infos)`` with per-iteration infos stacked on a leading axis.
    """
    if init_key is None:
        if not _is_key(key):
            raise ValueError("init_key is required when key is a noise pytree")
        init_key, key = jax.random.split(key)

    small = isinstance(data, MOTData)   # tiny MOT matrices: compiled without YNNPACK fusions (see base)
    devs = resolve_devices(devices)
    if len(devs) > 1:
        if not jit:
            raise ValueError("devices needs jit=True")
        return _sharded(algorithm, n_iter, small, devs, init_key, key, data)(init_key, key, data)
    fn = _jitted(algorithm, n_iter, small) if jit else functools.partial(_go, algorithm, n_iter)
    return fn(init_key, key, data)


def _go(algorithm, n_iter, init_key, key, data):
    state = algorithm.init(init_key, data)
    return run(algorithm, key, state, data, n_iter if _is_key(key) else None)


_JIT_CACHE: dict = {}


def _jitted(algorithm, n_iter, small):
    k = (id(algorithm.init), id(algorithm.step), n_iter, small)
    if k not in _JIT_CACHE:
        jit = jit_small if small else jax.jit
        _JIT_CACHE[k] = (algorithm, jit(functools.partial(_go, algorithm, n_iter)))
    return _JIT_CACHE[k][1]


def _sharded(algorithm, n_iter, small, devs, init_key, key, data):
    """``_go`` under ``shard_map`` over the batch axis of ``data`` (see :func:`solve`), jitted once per
    (algorithm, n_iter, devices, data shapes)."""
    if not _is_key(key):
        raise ValueError("devices needs a typed PRNG key (noise pytrees are not split across devices)")
    n = len(devs)
    arrays = [f for f in data._fields if f != "params"]
    B = getattr(data, arrays[0]).shape[1] if getattr(data, arrays[0]).ndim > 2 else None
    if B is None or any(getattr(data, f).shape[1] != B for f in arrays) or B % n:
        raise ValueError(f"devices={n} splits the batch axis (axis 1) of the data, which must exist and be "
                         f"divisible by {n}; got shapes {[getattr(data, f).shape for f in arrays]}")
    k = (id(algorithm.init), id(algorithm.step), n_iter, small, devs,
         tuple(getattr(data, f).shape for f in arrays))
    if k in _JIT_CACHE:
        return _JIT_CACHE[k][1]
    go = functools.partial(_go, algorithm, n_iter)
    group = data._replace(**{f: getattr(data, f)[:, :B // n] for f in arrays})
    full, part = (jax.eval_shape(go, init_key, key, d) for d in (data, group))

    def spec(f, p):  # the axis that shrinks with the group is the batch axis; no such axis: per group
        axes = [i for i, (a, b) in enumerate(zip(f.shape, p.shape)) if a != b]
        return P(*([None] * axes[0]), "seq") if len(axes) == 1 else "group"

    specs = jax.tree.map(spec, full, part)
    is_spec = lambda x: isinstance(x, (P, str))   # noqa: E731
    stacked = jax.tree.map(lambda sp: isinstance(sp, str), specs, is_leaf=is_spec)
    out_specs = jax.tree.map(lambda sp: P("seq") if isinstance(sp, str) else sp, specs, is_leaf=is_spec)

    def body(ik, kk, d):
        i = jax.lax.axis_index("seq")
        out = go(jax.random.fold_in(ik, i), jax.random.fold_in(kk, i), d)
        return jax.tree.map(lambda leaf, st: leaf[None] if st else leaf, out, stacked)

    mesh = jax.sharding.Mesh(np.asarray(devs), ("seq",))
    in_specs = (P(), P(), data._replace(params=P(), **{f: P(None, "seq") for f in arrays}))
    fn = jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    _JIT_CACHE[k] = (algorithm, (jit_small if small else jax.jit)(fn))
    return _JIT_CACHE[k][1]


def _data_axes(data):
    """Batch axis of every data leaf (time-major leaves and frame0: axis 1; params: not mapped)."""
    return data._replace(params=None, **{f: 1 for f in data._fields if f != "params"})


def vmap_sequences(algorithm: Algorithm) -> Algorithm:
    """The algorithm vmapped over the batch axis of the data (axis 1 of every time-major array and of
    MOT ``frame0``): independent sequences with their own convergence test and, when fine-tuning, their
    own parameter copy and Adam state (reset per sequence). Keys must be typed keys (split per sequence).
    State leaves get a leading sequence axis."""

    def init(key, data, *args):
        B = data[1].shape[1]
        return jax.vmap(lambda k, d: algorithm.init(k, d, *args), in_axes=(0, _data_axes(data)))(
            jax.random.split(key, B), data)

    def step(key, state, data):
        B = data[1].shape[1]
        return jax.vmap(algorithm.step, in_axes=(0, 0, _data_axes(data)))(jax.random.split(key, B), state, data)

    return Algorithm(init, step)
