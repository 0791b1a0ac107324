"""Unsupervised speech enhancement with a pretrained DVAE speech prior and NMF noise (SE-VEM).

Model, for a mixture STFT :math:`X` (here time-major, ``(N, F)``: frames x frequency bins):

.. math::
    X_{nf} = \\sqrt{g_n}\\, S_{nf} + B_{nf}, \\quad
    S_{nf} | z \\sim \\mathcal N_c(0, V_{s,nf}(z)), \\quad B_{nf} \\sim \\mathcal N_c(0, (WH)_{fn}),

with :math:`V_s = \\exp(y)` the frozen DVAE decoder output, :math:`W \\in \\mathbb R_+^{F\\times K}`,
:math:`H \\in \\mathbb R_+^{K\\times N}` and a per-frame gain :math:`g \\in \\mathbb R_+^N`, so that
:math:`X | z \\sim \\mathcal N_c(0, V)` with :math:`V = g \\odot V_s + WH`. With :math:`P = |X|^2`:

**E-step** (``n_epochs_estep`` Adam steps on the *encoder-only* layers, Adam state kept across
iterations): one reparameterised pass of the DVAE on ``P``, and

.. math::
    \\mathcal L_E = \\sum_{n,f} \\Big[\\frac{P}{V} + \\log V\\Big] + w_{KL}\\,
        \\mathrm{KL}\\big(q(z | P) \\| p(z)\\big)

(KL weight 1, the reference KL without the ``-1`` and with no epsilon in the prior variance, sequential
priors evaluated at the sampled past). Then ``R = n_samples_estep`` fresh samples from the updated
encoder give :math:`V_s^{(r)}`.

**M-step** (multiplicative updates, exponent 1/2, :mod:`vdvae_jax.inference.nmf`): ``W``, then ``H``,
then L1-normalise the columns of ``W`` (``H`` absorbs the scale), then ``g``; the monitoring loss is
:math:`\\mathrm{mean}_{r,f,n}(\\log V + P/V)`.

**Output**: ``R' = n_samples_wf`` fresh samples give the Wiener gains
:math:`G_s = \\mathrm{mean}_r\\, g V_s^{(r)} / V^{(r)}`, :math:`G_b = \\mathrm{mean}_r\\, WH / V^{(r)}`;
:math:`\\hat S = G_s \\odot X`, :math:`\\hat B = G_b \\odot X`.

The algorithm is a pure ``(init, step)`` pair (:class:`~vdvae_jax.inference.base.Algorithm`); callers
jit ``step`` once. The noise argument of ``step`` / :func:`wiener_filter` is a typed key, or a dict of
pre-drawn standard normals (conformance): ``{"estep_z": (E, N, Z), "mstep_z": (N, R, Z)}``, resp.
``{"z": (N, R', Z)}``; optional ``"estep_coin"`` (E, N), ``"mstep_coin"`` / ``"coin"`` (N, R) uniforms
for the scheduled-sampling coin of SRNN_ss (zeros when absent; with ``use_pred = 1`` any value in
[0, 1) selects generation mode).

**Variable lengths.** ``SEVEMData.mask`` (N,) marks valid frames: masked frames contribute nothing to
the E-step objective (reconstruction and KL), to the ``W`` update, to the monitoring loss; their
``H`` columns and gains are left unchanged and their Wiener gains are 0. Pad at the end with finite
values (zeros). The mask is also passed to the DVAE's ``forward``, whose anti-causal scans then skip
the padding, so a padded + masked utterance gives the unpadded result for every prior of the zoo.

Reference settings (:data:`VB_SETTINGS`, :data:`WSJ_SETTINGS`) and the defaults of the reference
``enhance()`` function the conformance traces use (:data:`ENHANCE_DEFAULTS`) are provided.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vdvae_jax.distributions import KL_MODES, kl_gaussian
from vdvae_jax.inference import nmf
from vdvae_jax.inference.base import Algorithm

__all__ = [
    "ENCODER_LAYERS",
    "SEVEMConfig",
    "VB_SETTINGS",
    "WSJ_SETTINGS",
    "ENHANCE_DEFAULTS",
    "SEVEMData",
    "SEVEMState",
    "SEVEMInfo",
    "WienerOutput",
    "model_family",
    "trainable_labels",
    "make_se_vem",
    "m_step",
    "wiener_filter",
    "enhance",
]

#: Layers fine-tuned in the E-step per model family (spec §4.2); layers absent from a given
#: parameter tree are simply absent. SRNN excludes ``mlp_x_h``/``rnn_h`` (shared with the decoder).
ENCODER_LAYERS: dict[str, tuple[str, ...]] = {
    "vae": ("mlp_x_z", "inf_mean", "inf_logvar"),
    "dkf": ("mlp_x_gx", "rnn_gx", "mlp_ztm1_g", "mlp_g_z", "inf_mean", "inf_logvar"),
    "rvae": ("mlp_x_gx", "rnn_g_x", "mlp_z_gz", "rnn_g_z", "mlp_g_z", "inf_mean", "inf_logvar"),
    "srnn": ("mlp_hx_g", "rnn_g", "mlp_gz_z", "inf_mean", "inf_logvar"),
}

_FAMILY = {"vae": "vae", "dkf": "dkf", "rvae": "rvae", "rvae_causal": "rvae", "srnn": "srnn",
           "srnn_ss": "srnn"}


@dataclasses.dataclass(frozen=True)
class SEVEMConfig:
    """SE-VEM options. Defaults are the reference VB-DMD experiment settings.

    Attributes:
      n_iter: VEM iterations (VB-DMD 100, WSJ0-QUT 300; ``enhance()`` default 200).
      nmf_rank: K, the NMF rank (experiments 8; ``enhance()`` default 25).
      lr: Adam learning rate of the E-step (experiments 1e-3; ``enhance()`` default 1e-2).
      n_epochs_estep: Adam steps per E-step (1).
      n_samples_estep: R, posterior samples for the M-step (1; the reference never forwards other
        values, spec P11).
      n_samples_wf: R', samples averaged in the Wiener filter (1).
      estep_kl_weight: weight of the KL in the E-step objective (1; the training beta is not used).
      kl_mode: ``"reference"`` (KL without the -1, as the reference) or ``"exact"``; gradients agree.
      kl_var_eps: epsilon in the prior-variance denominator of the KL (0 in the SE E-step).
      use_pred: SRNN_ss only: probability of the prediction-driven decoder chain (1 = generation mode,
        as the reference enhancement).
      nmf_exponent: exponent of the multiplicative updates (1/2).
      init_eps: floor of the uniform W/H initialisation (float64 machine epsilon, as the reference).
      adam_b1, adam_b2, adam_eps: Adam hyper-parameters (torch defaults).
      split_rnn_bias: reproduce Adam on torch's two LSTM biases (b_ih, b_hh, same gradient): the
        update of our summed bias is doubled. True matches the reference; False treats the sum as
        one parameter.
      trainable: top-level parameter names tuned in the E-step; ``None`` = :data:`ENCODER_LAYERS` of
        the model's family.
      reuse_features: for a prior with a deterministic x-only encoder part (``model.features``, e.g.
        the RVAE's LSTMs over x), compute it once per iteration, right after the E-step's Adam update,
        and replay it in that iteration's M-step sample and in the next E-step (both see the same
        encoder weights and the same x). Exact: the outputs equal ``False`` (the reference, which runs
        it twice) up to float rounding. Used only when ``n_epochs_estep = 1``.
      record: if True, ``SEVEMInfo.trace`` holds the E-step posterior/prior statistics and the M-step
        speech variances (memory grows with N x F per iteration under :func:`~vdvae_jax.inference.base.run`).
    """

    n_iter: int = 100
    nmf_rank: int = 8
    lr: float = 1e-3
    n_epochs_estep: int = 1
    n_samples_estep: int = 1
    n_samples_wf: int = 1
    estep_kl_weight: float = 1.0
    kl_mode: str = "reference"
    kl_var_eps: float = 0.0
    use_pred: float = 1.0
    nmf_exponent: float = 0.5
    init_eps: float = float(np.finfo(np.float64).eps)
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    split_rnn_bias: bool = True
    trainable: tuple[str, ...] | None = None
    reuse_features: bool = True
    record: bool = False

    def __post_init__(self):
        for name in ("n_iter", "nmf_rank", "n_epochs_estep", "n_samples_estep", "n_samples_wf"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.kl_mode not in KL_MODES:
            raise ValueError(f"kl_mode must be one of {KL_MODES}, got {self.kl_mode!r}")
        if self.trainable is not None and not isinstance(self.trainable, tuple):
            raise TypeError(f"trainable must be a tuple of layer names or None, got {self.trainable!r}")


#: Reference VB-DMD settings (``_create_json_vb.py``).
VB_SETTINGS = SEVEMConfig()
#: Reference WSJ0-QUT settings (``_create_json_wsj.py``).
WSJ_SETTINGS = SEVEMConfig(n_iter=300)
#: Defaults of the reference ``enhance()`` function (used by the recorded traces, with n_iter 3).
ENHANCE_DEFAULTS = SEVEMConfig(n_iter=200, nmf_rank=25, lr=1e-2)


class SEVEMData(NamedTuple):
    """Observed data of one utterance.

    Attributes:
      power: ``P = |X|^2``, time-major (N, F).
      mask: (N,) valid-frame mask (bool or 0/1), or None for all frames valid.
    """

    power: jax.Array
    mask: jax.Array | None = None

    @classmethod
    def from_stft(cls, X, mask=None) -> "SEVEMData":
        """From a time-major complex STFT ``X`` (N, F)."""
        return cls(jnp.abs(X) ** 2, mask)


class SEVEMState(NamedTuple):
    """What carries over between iterations.

    Attributes:
      params: the full DVAE parameter tree (only the trainable encoder layers change).
      opt_state: Adam state over the trainable layers.
      W: NMF dictionary (F, K). H: activations (K, N). g: per-frame gains (N,).
      iteration: number of completed iterations.
      features: ``model.features(params, P, mask)`` for these params when reused (see
        ``SEVEMConfig.reuse_features``), else None. Recompute it if you replace ``params``.
    """

    params: Any
    opt_state: Any
    W: jax.Array
    H: jax.Array
    g: jax.Array
    iteration: jax.Array
    features: Any = None


class SEVEMInfo(NamedTuple):
    """Diagnostics of one iteration.

    Attributes:
      loss: monitoring loss ``mean(log V + P/V)`` after the M-step (valid frames).
      estep_loss: E-step objective of the last Adam step (before the step).
      estep_kl: its KL term (unweighted).
      trace: ``{}`` unless ``config.record``: ``estep_q_mean``, ``estep_q_logvar``, ``estep_p_mean``,
        ``estep_p_logvar`` (E, N, Z) of the E-step forward passes, ``mstep_vs`` (N, R, F) the speech
        variances used in the M-step.
    """

    loss: jax.Array
    estep_loss: jax.Array
    estep_kl: jax.Array
    trace: dict


class WienerOutput(NamedTuple):
    """Wiener filtering result, all time-major (N, F).

    Attributes:
      gain_speech: :math:`G_s`, in [0, 1]. gain_noise: :math:`G_b = 1 - G_s` for R' = 1.
      speech_variance: the sampled :math:`V_s` (N, R', F).
      speech: :math:`G_s X` (None if no STFT was given). noise: :math:`G_b X` (or None).
    """

    gain_speech: jax.Array
    gain_noise: jax.Array
    speech_variance: jax.Array
    speech: jax.Array | None
    noise: jax.Array | None


def model_family(name: str) -> str:
    """``"vae"``, ``"dkf"``, ``"rvae"`` or ``"srnn"`` for a registered model name."""
    try:
        return _FAMILY[name]
    except KeyError:
        raise KeyError(f"no SE-VEM encoder-layer list for model {name!r}; pass "
                       f"SEVEMConfig(trainable=...) explicitly") from None


def trainable_labels(params, names, *, split_rnn_bias: bool = False) -> dict:
    """Label tree for ``optax.multi_transform``: ``"encoder"`` under the top-level names in ``names``,
    ``"frozen"`` elsewhere; with ``split_rnn_bias`` the summed bias of a recurrent cell (a dict with
    ``kernel_ih``) under a trainable name is labelled ``"encoder_rnn_bias"``."""
    names = set(names)

    def label(node, trainable):
        if isinstance(node, dict):
            is_cell = "kernel_ih" in node
            return {k: ("encoder_rnn_bias" if trainable and split_rnn_bias and is_cell and k == "bias"
                        else label(v, trainable)) for k, v in node.items()}
        return "encoder" if trainable else "frozen"

    return {k: label(v, k in names) for k, v in params.items()}


def _is_key(x) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _mask(data: SEVEMData):
    n = data.power.shape[0]
    if data.mask is None:
        return jnp.ones((n,), data.power.dtype)
    return jnp.asarray(data.mask).astype(data.power.dtype)


def _draw(noise, name: str, shape, kind: str, default=None):
    """A noise array: drawn from the key or read from the dict (``default`` when absent)."""
    if _is_key(noise):
        k = jax.random.fold_in(noise, zlib.crc32(name.encode()) & 0x7FFFFFFF)
        return jax.random.normal(k, shape) if kind == "normal" else jax.random.uniform(k, shape)
    if name in noise:
        arr = jnp.asarray(noise[name])
        if arr.shape != tuple(shape):
            raise ValueError(f"noise[{name!r}] has shape {arr.shape}, expected {tuple(shape)}")
        return arr
    if default is None:
        raise KeyError(f"noise dict lacks {name!r} (shape {tuple(shape)})")
    return jnp.full(shape, default, jnp.float32)


def make_se_vem(model, config: SEVEMConfig = VB_SETTINGS) -> Algorithm:
    """SE-VEM for a DVAE of the zoo (any model with an ``"is"`` observation model).

    Returns:
      ``Algorithm(init, step)`` with

      * ``init(key, params, data, *, W=None, H=None, g=None) -> SEVEMState``: W, H uniform in [0, 1)
        floored at ``init_eps`` (unless given), g = 1, Adam state over the trainable layers;
      * ``step(noise, state, data) -> (SEVEMState, SEVEMInfo)``: one VEM iteration.
    """
    c = config
    names = c.trainable if c.trainable is not None else ENCODER_LAYERS[model_family(model.name)]
    adam = optax.adam(c.lr, b1=c.adam_b1, b2=c.adam_b2, eps=c.adam_eps)
    z_dim = model.config.z_dim
    mode = {"use_pred": c.use_pred} if model.name == "srnn_ss" else {}
    reuse = c.reuse_features and model.features is not None and c.n_epochs_estep == 1

    def features(params, data):
        return model.features(params, data.power, data.mask) if reuse else None

    # torch keeps an LSTM's bias as two parameters (b_ih, b_hh) with identical gradients, so Adam
    # moves their sum twice as far as it moves our single summed bias.
    transforms = {"encoder": adam, "frozen": optax.set_to_zero(),
                  "encoder_rnn_bias": optax.chain(adam, optax.scale(2.0))}

    def optimizer(params):
        return optax.multi_transform(transforms, trainable_labels(params, names,
                                                                  split_rnn_bias=c.split_rnn_bias))

    def init(key, params, data: SEVEMData, *, W=None, H=None, g=None) -> SEVEMState:
        n, f = data.power.shape
        dt = data.power.dtype
        kw, kh = jax.random.split(key)
        if W is None:
            W = jnp.maximum(jax.random.uniform(kw, (f, c.nmf_rank), dt), c.init_eps)
        if H is None:
            H = jnp.maximum(jax.random.uniform(kh, (c.nmf_rank, n), dt), c.init_eps)
        g = jnp.ones((n,), dt) if g is None else g
        W, H, g = (jnp.asarray(a, dt) for a in (W, H, g))
        if W.shape != (f, c.nmf_rank) or H.shape != (c.nmf_rank, n) or g.shape != (n,):
            raise ValueError(f"W {W.shape}, H {H.shape}, g {g.shape} do not match F={f}, N={n}, "
                             f"K={c.nmf_rank}")
        params = jax.tree.map(jnp.asarray, params)
        return SEVEMState(params, optimizer(params).init(params), W, H, g, jnp.zeros((), jnp.int32),
                          features(params, data))

    def speech_variance(params, x, eps, coin, frame_mask, feats=None):
        """``exp(y)`` and the model outputs for one pass on ``x`` (N, [R,] F); ``frame_mask`` (N,)
        or None keeps padding out of the anti-causal scans; ``feats``: replayed ``model.features``."""
        valid = None if frame_mask is None else jnp.broadcast_to(
            jnp.asarray(frame_mask, bool).reshape((-1,) + (1,) * (x.ndim - 2)), x.shape[:-1])
        kw = {} if feats is None else {"features": feats}
        out = model.forward(params, x, {"z": eps, "coin": coin}, mask=valid, **kw, **mode)
        return jnp.exp(out.x_out.logvar), out

    def estep_objective(params, P, eps, coin, WH_t, g, m, frame_mask, feats):
        vs, out = speech_variance(params, P, eps, coin, frame_mask, feats)
        V = g[:, None] * vs + WH_t
        V = jnp.where(m[:, None] > 0, V, 1.0)
        recon = jnp.sum(m[:, None] * (P / V + jnp.log(V)))
        kl_t = jax.vmap(lambda q, p: kl_gaussian(q, p, mode=c.kl_mode, var_eps=c.kl_var_eps))(out.q, out.p)
        kl = jnp.sum(m * kl_t)
        return recon + c.estep_kl_weight * kl, (kl, out.q, out.p)

    def step(noise, state: SEVEMState, data: SEVEMData):
        P = data.power
        n, f = P.shape
        m = _mask(data)
        opt = optimizer(state.params)
        WH_t = nmf._mm(state.W, state.H).T  # (N, F)

        # ---- E-step: n_epochs_estep Adam steps on the encoder layers.
        e = c.n_epochs_estep
        e_eps = _draw(noise, "estep_z", (e, n, z_dim), "normal")
        e_coin = _draw(noise, "estep_coin", (e, n), "uniform", default=0.0)

        def epoch(carry, xs):
            params, opt_state = carry
            eps, coin = xs
            (loss, (kl, q, p)), grads = jax.value_and_grad(estep_objective, has_aux=True)(
                params, P, eps, coin, WH_t, state.g, m, data.mask, state.features)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), (loss, kl, q, p)

        (params, opt_state), (e_loss, e_kl, q, p) = jax.lax.scan(
            epoch, (state.params, state.opt_state), (e_eps, e_coin))

        # ---- R fresh samples from the updated encoder.
        r = c.n_samples_estep
        m_eps = _draw(noise, "mstep_z", (n, r, z_dim), "normal")
        m_coin = _draw(noise, "mstep_coin", (n, r), "uniform", default=0.0)
        feats = features(params, data)
        vs, _ = speech_variance(params, jnp.broadcast_to(P[:, None, :], (n, r, f)), m_eps, m_coin,
                                data.mask, _per_sample(feats, r))

        W, H, g, loss = m_step(P, vs, state.W, state.H, state.g, data.mask, exponent=c.nmf_exponent)

        trace = {}
        if c.record:
            trace = {"estep_q_mean": q.mean, "estep_q_logvar": q.logvar, "estep_p_mean": p.mean,
                     "estep_p_logvar": p.logvar, "mstep_vs": vs}
        new_state = SEVEMState(params, opt_state, W, H, g, state.iteration + 1, feats)
        return new_state, SEVEMInfo(loss, e_loss[-1], e_kl[-1], trace)

    algorithm = Algorithm(init, step)
    return algorithm


def _per_sample(features, r: int):
    """``model.features`` of (N, F) data broadcast to the (N, R, F) of R samples (None stays None)."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a[:, None], (a.shape[0], r) + a.shape[1:]), features)


def m_step(power, vs, W, H, g, mask=None, *, exponent: float = 0.5):
    """The M-step (spec §4.3): ``W``, then ``H``, L1 normalisation, then ``g``; monitoring loss.

    Args:
      power: ``P`` time-major (N, F). vs: unscaled speech variances (N, R, F). W (F, K), H (K, N),
        g (N,): current factors. mask: (N,) valid frames or None.

    Returns:
      ``(W, H, g, loss)`` with ``loss = mean_{r,f,valid n}(log V + P/V)`` at the updated factors.
    """
    P_fn = power.T
    m = jnp.ones(power.shape[:1], power.dtype) if mask is None else jnp.asarray(mask).astype(power.dtype)
    vs_rfn = jnp.transpose(vs, (1, 2, 0))  # (R, F, N)
    kw = dict(mask=m, exponent=exponent)
    W = nmf.update_W(P_fn, W, H, g * vs_rfn, **kw)
    H = nmf.update_H(P_fn, W, H, g * vs_rfn, **kw)
    W, H = nmf.normalize_l1(W, H)
    WH = nmf._mm(W, H)
    g = nmf.update_gain(P_fn, vs_rfn, WH, g, **kw)
    loss = nmf.is_objective(P_fn, jnp.where(m > 0, g * vs_rfn + WH, 1.0), m, reduce="mean")
    return W, H, g, loss


def wiener_filter(model, config: SEVEMConfig, noise, state: SEVEMState, data: SEVEMData,
                  X=None) -> WienerOutput:
    """Wiener gains from ``R' = config.n_samples_wf`` fresh posterior samples of the current encoder.

    Args:
      noise: typed key, or ``{"z": (N, R', Z)[, "coin": (N, R')]}``.
      X: optional time-major complex STFT (N, F) to filter.
    """
    c = config
    P = data.power
    n, f = P.shape
    r = c.n_samples_wf
    mode = {"use_pred": c.use_pred} if model.name == "srnn_ss" else {}
    eps = _draw(noise, "z", (n, r, model.config.z_dim), "normal")
    coin = _draw(noise, "coin", (n, r), "uniform", default=0.0)
    valid = None if data.mask is None else jnp.broadcast_to(jnp.asarray(data.mask, bool)[:, None], (n, r))
    if state.features is not None:   # the state's own replay of model.features (SEVEMConfig.reuse_features)
        mode["features"] = _per_sample(state.features, r)
    out = model.forward(state.params, jnp.broadcast_to(P[:, None, :], (n, r, f)),
                        {"z": eps, "coin": coin}, mask=valid, **mode)
    vs = jnp.exp(out.x_out.logvar)  # (N, R, F)
    wh = nmf._mm(state.W, state.H).T[:, None, :]  # (N, 1, F)
    svar = state.g[:, None, None] * vs
    V = svar + wh
    m = _mask(data)[:, None]
    gs = jnp.mean(svar / V, axis=1) * m
    gb = jnp.mean(wh / V, axis=1) * m
    if X is None:
        return WienerOutput(gs, gb, vs, None, None)
    return WienerOutput(gs, gb, vs, gs * X, gb * X)


def enhance(model, params, X, key, config: SEVEMConfig = VB_SETTINGS, mask=None):
    """Convenience: init, ``config.n_iter`` iterations as one scan, Wiener filter.

    Args:
      X: time-major complex mixture STFT (N, F) (normalise the waveform by its max first, as the
        reference does).
      key: typed PRNG key.

    Returns:
      ``(WienerOutput, final SEVEMState, stacked SEVEMInfo)``.
    """
    from vdvae_jax.inference.base import run

    alg = make_se_vem(model, config)
    data = SEVEMData.from_stft(X, mask)
    k_init, k_run, k_wf = jax.random.split(key, 3)
    state = alg.init(k_init, params, data)
    state, infos = run(alg, k_run, state, data, config.n_iter)
    return wiener_filter(model, config, k_wf, state, data, X), state, infos
