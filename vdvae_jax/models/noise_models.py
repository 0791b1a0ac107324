"""Deep dynamical generative noise models of the DDGM (spec §5.2): LV, NO and NOLV.

Each model outputs the log noise variance :math:`\\log v_{n,t} \\in \\mathbb R^F` of a complex Gaussian
noise :math:`b_t \\sim \\mathcal N_c(0, \\mathrm{diag}\\, v_{n,t})`, time-major ``(T, [B,] F)``:

=====  ==================================================  ===================================================
kind   conditioning                                        network
=====  ==================================================  ===================================================
lv     :math:`v_{n,t} = f(z_{1:T})`                        bi-LSTM over z -> dense tanh -> head
no     :math:`v_{n,t} = f(x_{1:t-1})`                      LSTM over x, shifted one step -> dense tanh -> head
nolv   :math:`v_{n,t} = f(x_{1:t-1}, z_{1:t})`             [shifted LSTM over x, LSTM over z] -> dense -> head
=====  ==================================================  ===================================================

"Shifted" means :math:`\\tilde h_1 = 0, \\tilde h_t = h_{t-1}`, so frame t never sees :math:`x_t`. The
head is affine, ``log v = W h + b`` (``noise_log_scale`` in the reference). Parameter names:
``rnn_z`` (``forward`` [+ ``backward``]), ``rnn_x/forward``, ``dense`` (an MLP block), ``head``.

Options beyond the reference (named, off = reference behaviour):

* ``input_transform="log"``: the x-LSTM reads :math:`\\log(x + \\epsilon)` instead of the raw power,
  whose values (up to ~1e5) saturate the gates; the reference reads the raw power (``"none"``).
* ``head_bias``: :func:`init` accepts an initial head bias (e.g. the log of a per-frequency noise-floor
  estimate of the utterance), instead of the random affine initialisation.

:func:`make_noise_model` returns pure ``init`` / ``apply`` (one ``lax.scan`` per recurrence) and, for
the causal kinds, ``step``: one frame of the recurrence, equal to ``apply`` frame by frame.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from vdvae_jax.models.heads import init_dense
from vdvae_jax.nn.layers import (ACTIVATIONS, MLP, dense, lstm_init, lstm_project, lstm_scan, lstm_step,
                                 mlp, mlp_out_dim, zero_carry)

__all__ = ["NOISE_KINDS", "NoiseModelConfig", "NoiseModel", "make_noise_model"]

NOISE_KINDS = ("lv", "no", "nolv")


@dataclasses.dataclass(frozen=True)
class NoiseModelConfig:
    """Noise-network sizes (reference: ``noise_dim_rnn`` 128, one dense layer of 128, tanh).

    Attributes:
      kind: ``"lv"``, ``"no"`` or ``"nolv"``.
      x_dim: frequency bins F. z_dim: speech latent size.
      dim_rnn: LSTM width. dense: widths of the dense block after the LSTMs.
      activation: of the dense block.
      input_transform: ``"none"`` (reference: raw power into the x-LSTM) or ``"log"``.
      input_floor: epsilon of the ``"log"`` transform.
    """

    kind: str = "nolv"
    x_dim: int = 513
    z_dim: int = 16
    dim_rnn: int = 128
    dense: tuple[int, ...] = (128,)
    activation: str = "tanh"
    input_transform: str = "log"
    input_floor: float = 1e-6

    def __post_init__(self):
        if self.kind not in NOISE_KINDS:
            raise ValueError(f"unknown noise model kind {self.kind!r}; expected one of {NOISE_KINDS}")
        if min(self.x_dim, self.z_dim, self.dim_rnn) < 1:
            raise ValueError(f"x_dim, z_dim, dim_rnn must be positive: {self}")
        if not isinstance(self.dense, tuple):
            raise TypeError(f"dense must be a tuple of ints, got {self.dense!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}")
        if self.input_transform not in ("none", "log"):
            raise ValueError(f"input_transform must be 'none' or 'log', got {self.input_transform!r}")

    @property
    def uses_x(self) -> bool:
        return self.kind in ("no", "nolv")

    @property
    def uses_z(self) -> bool:
        return self.kind in ("lv", "nolv")


class NoiseModel(NamedTuple):
    """Pure functions of a noise network.

    Attributes:
      config: the :class:`NoiseModelConfig`.
      init: ``(key, head_bias=None) -> params``; ``head_bias`` (F,) overrides the head's bias.
      apply: ``(params, x, z, mask=None) -> log v_n`` with ``x`` (T, [B,] F) power, ``z`` (T, [B,] Z)
        (either may be ``None`` when the kind does not use it), ``mask`` (T, [B]) valid frames.
      step: causal kinds only (else ``None``): ``(params, carry, x_t, z_t) -> (carry, log v_t)``:
        ``log v_t`` from the carry (built from :math:`x_{1:t-1}`) [and :math:`z_t`], then the carry
        reads ``x_t``; start from ``init_carry(batch_shape)``.
      init_carry: ``(batch_shape) -> carry`` for ``step``.
    """

    config: NoiseModelConfig
    init: Callable
    apply: Callable
    step: Callable | None
    init_carry: Callable | None


def make_noise_model(config: NoiseModelConfig) -> NoiseModel:
    c = config
    z_dirs = ("forward", "backward") if c.kind == "lv" else ("forward",)
    feat = (c.dim_rnn if c.uses_x else 0) + (len(z_dirs) * c.dim_rnn if c.uses_z else 0)

    def read_x(x):
        return jnp.log(x + c.input_floor) if c.input_transform == "log" else x

    def init(key, head_bias=None):
        k = jax.random.split(key, 4)
        params = {}
        if c.uses_x:
            params["rnn_x"] = {"forward": lstm_init(k[0], c.x_dim, c.dim_rnn)}
        if c.uses_z:
            params["rnn_z"] = {d: lstm_init(kd, c.z_dim, c.dim_rnn)
                               for d, kd in zip(z_dirs, jax.random.split(k[1], len(z_dirs)))}
        if c.dense:
            params["dense"] = MLP(c.dense, c.activation).init(k[2], jnp.zeros((feat,)))["params"]
        params["head"] = init_dense(k[3], mlp_out_dim(feat, c.dense), c.x_dim)
        if head_bias is not None:
            head_bias = jnp.asarray(head_bias, jnp.float32)
            if head_bias.shape != (c.x_dim,):
                raise ValueError(f"head_bias must have shape ({c.x_dim},), got {head_bias.shape}")
            params["head"] = {**params["head"], "bias": head_bias}
        return params

    def head(params, h):
        return dense(params["head"], mlp(params.get("dense"), h, c.dense, c.activation))

    def apply(params, x, z, mask=None):
        feats = []
        if c.uses_x:
            if x is None:
                raise ValueError(f"noise model {c.kind!r} needs the noisy power x")
            h = lstm_scan(params["rnn_x"]["forward"], read_x(x))
            feats.append(jnp.concatenate([jnp.zeros_like(h[:1]), h[:-1]], axis=0))  # h~_t = h_{t-1}
        if c.uses_z:
            if z is None:
                raise ValueError(f"noise model {c.kind!r} needs the speech latents z")
            feats += [lstm_scan(params["rnn_z"][d], z, reverse=(d == "backward"), mask=mask) for d in z_dirs]
        return head(params, jnp.concatenate(feats, axis=-1))

    if c.kind == "lv":
        return NoiseModel(c, init, apply, None, None)

    def init_carry(batch_shape=()):
        """``(x-LSTM state, shifted output h~_t, [z-LSTM state])``; h~_1 = 0."""
        carry = (zero_carry(tuple(batch_shape), c.dim_rnn), jnp.zeros(tuple(batch_shape) + (c.dim_rnn,)))
        return carry + ((zero_carry(tuple(batch_shape), c.dim_rnn),) if c.uses_z else ())

    def step(params, carry, x_t, z_t=None):
        """Frame t: ``log v_t`` from h~_t (built from x_{1:t-1}) [and z_{1:t}]; then reads x_t."""
        px = params["rnn_x"]["forward"]
        feats = [carry[1]]
        new_z = ()
        if c.uses_z:
            pz = params["rnn_z"]["forward"]
            state_z, hz = lstm_step(pz, carry[2], lstm_project(pz, z_t))
            feats.append(hz)
            new_z = (state_z,)
        out = head(params, jnp.concatenate(feats, axis=-1))
        state_x, hx = lstm_step(px, carry[0], lstm_project(px, read_x(x_t)))
        return (state_x, hx) + new_z, out

    return NoiseModel(c, init, apply, step, init_carry)
