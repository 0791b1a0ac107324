"""Layers of the DVAE zoo: dense, MLP and recurrent cells as flax linen modules.

Modules are used only through their pure ``init``/``apply``: a model's parameter tree is a nested dict
``{layer_name: layer_params}`` and the model functions call ``Layer(...).apply({"params": p}, x)``. That
keeps every model a bundle of pure functions (usable inside ``lax.scan`` bodies) while flax owns the
parameter creation.

Parameter layout (also the target of :mod:`vdvae_jax.convert`):

* ``Dense``: ``kernel`` (in, out) and ``bias`` (out,); :math:`y = x K + b`.
* ``LSTMCell``: ``kernel_ih`` (in, 4H), ``kernel_hh`` (H, 4H), ``bias`` (4H,), gate blocks in PyTorch's
  order (i, f, g, o) along the last axis:

  .. math::
     [i, f, g, o] = x K_{ih} + h K_{hh} + b, \\quad
     c' = \\sigma(f) c + \\sigma(i) \\tanh(g), \\quad h' = \\sigma(o) \\tanh(c').

* ``RNNCell`` (vanilla tanh RNN): same keys with H-wide blocks, :math:`h' = \\tanh(x K_{ih} + h K_{hh} + b)`.

Initialisers follow PyTorch's defaults (uniform in :math:`\\pm 1/\\sqrt{\\text{fan}}`), as the reference
models were trained with them.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = [
    "ACTIVATIONS",
    "Dense",
    "MLP",
    "LSTMCell",
    "RNNCell",
    "torch_uniform",
    "dense",
    "mlp",
    "mlp_parts",
    "mlp_out_dim",
    "concat_matmul",
    "unrolled_matmul",
    "lstm_init",
    "lstm_project",
    "lstm_step",
    "lstm_scan",
    "lstm_scan_gates",
    "lstm_scan_residuals",
    "LSTMResiduals",
    "zero_carry",
    "rnn_step",
    "rnn_scan",
]

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "sigmoid": jax.nn.sigmoid,
    "identity": lambda x: x,
}


def torch_uniform(fan: int) -> Callable:
    """Initialiser drawing from U(-1/sqrt(fan), 1/sqrt(fan)) (PyTorch's Linear/LSTM default)."""
    bound = 1.0 / float(fan) ** 0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Dense(nn.Module):
    """Affine layer ``y = x @ kernel + bias`` with PyTorch-style initialisation."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        fan_in = x.shape[-1]
        kernel = self.param("kernel", torch_uniform(fan_in), (fan_in, self.features))
        bias = self.param("bias", torch_uniform(fan_in), (self.features,))
        return x @ kernel + bias


class MLP(nn.Module):
    """``linear{n}`` + activation for every width; an empty width tuple is the identity."""

    widths: Sequence[int]
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for n, width in enumerate(self.widths):
            x = act(Dense(width, name=f"linear{n}")(x))
        return x


class LSTMCell(nn.Module):
    """Parameters of one LSTM direction; ``__call__(carry, x) -> (carry, h)`` runs a single step."""

    hidden: int

    @nn.compact
    def __call__(self, carry, x):
        h = self.hidden
        k_ih = self.param("kernel_ih", torch_uniform(h), (x.shape[-1], 4 * h))
        k_hh = self.param("kernel_hh", torch_uniform(h), (h, 4 * h))
        bias = self.param("bias", _summed_bias_init(h), (4 * h,))
        return lstm_step({"kernel_hh": k_hh}, carry, x @ k_ih + bias)


class RNNCell(nn.Module):
    """Vanilla tanh RNN direction (DSAE encoder); ``__call__(h, x) -> (h, h)``."""

    hidden: int

    @nn.compact
    def __call__(self, h, x):
        k_ih = self.param("kernel_ih", torch_uniform(self.hidden), (x.shape[-1], self.hidden))
        k_hh = self.param("kernel_hh", torch_uniform(self.hidden), (self.hidden, self.hidden))
        bias = self.param("bias", _summed_bias_init(self.hidden), (self.hidden,))
        return rnn_step({"kernel_hh": k_hh}, h, x @ k_ih + bias)


def _summed_bias_init(hidden: int) -> Callable:
    """PyTorch has two biases (b_ih + b_hh), each U(+-1/sqrt(H)); we store their sum."""
    base = torch_uniform(hidden)

    def init(key, shape, dtype=jnp.float32):
        k1, k2 = jax.random.split(key)
        return base(k1, shape, dtype) + base(k2, shape, dtype)

    return init


# ----------------------------------------------------------------------------------------------
# Pure helpers: init one layer, apply it, run recurrences as lax.scan.


def dense(params, x: jax.Array) -> jax.Array:
    """Apply a :class:`Dense` parameter dict."""
    return x @ params["kernel"] + params["bias"]


def pad_columns(params, multiple: int = 16):
    """A :class:`Dense` parameter dict with zero output columns appended up to a multiple of ``multiple``:
    ``dense(pad_columns(p), x)[..., :n]`` equals ``dense(p, x)``. XLA:CPU's product kernels handle such
    widths faster: inside a loop over 50 frames, 2 x (32, 256) x (256, 513) took 9.5 ms, padded to 528 columns
    7.4 ms (``benchmarks/bench_cpu_kernels.py``, one core)."""
    n = params["kernel"].shape[-1]
    extra = -n % multiple
    if extra == 0:
        return params
    return {"kernel": jnp.pad(params["kernel"], ((0, 0),) * (params["kernel"].ndim - 1) + ((0, extra),)),
            "bias": jnp.pad(params["bias"], ((0, 0),) * (params["bias"].ndim - 1) + ((0, extra),))}


def unrolled_matmul(parts: Sequence[jax.Array], kernel: jax.Array) -> jax.Array:
    """``concatenate(parts, -1) @ kernel`` written as a sum of broadcast products, one per kernel row.

    For tiny kernels (a few rows, as in the MixDVAE MOT SRNN) XLA:CPU fuses this with the surrounding
    elementwise ops into a single loop, about twice as fast inside a ``lax.scan`` step as separate dot
    kernels, and the concatenation is never built. Use plain ``@`` for anything wider.
    """
    out, row = None, 0
    for part in parts:
        for j in range(part.shape[-1]):
            term = part[..., j:j + 1] * kernel[row]
            out = term if out is None else out + term
            row += 1
    if row != kernel.shape[0]:
        raise ValueError(f"parts have {row} features in all, kernel has {kernel.shape[0]} rows")
    return out


def concat_matmul(parts: Sequence[jax.Array], kernel: jax.Array) -> jax.Array:
    """``concatenate(parts, -1) @ kernel`` as one dot (the plain counterpart of :func:`unrolled_matmul`)."""
    x = parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
    return x @ kernel


def mlp_parts(params, parts: Sequence[jax.Array], widths: Sequence[int], activation: str = "tanh", *,
              matmul: Callable = concat_matmul) -> list[jax.Array]:
    """:func:`mlp` on the concatenation of ``parts``, with the products done by ``matmul(parts, kernel)``
    (e.g. :func:`unrolled_matmul`, which never builds the concatenation). Returns ``[output]``, or
    ``parts`` itself when ``widths`` is empty."""
    act = ACTIVATIONS[activation]
    for n in range(len(widths)):
        layer = params[f"linear{n}"]
        parts = [act(matmul(parts, layer["kernel"]) + layer["bias"])]
    return list(parts)


def mlp(params, x: jax.Array, widths: Sequence[int], activation: str = "tanh") -> jax.Array:
    """Apply an :class:`MLP` parameter dict (identity when ``widths`` is empty)."""
    return mlp_parts(params, [x], widths, activation)[0]


def mlp_out_dim(in_dim: int, widths: Sequence[int]) -> int:
    return widths[-1] if widths else in_dim


def lstm_init(key, in_dim: int, hidden: int):
    """Parameters of one LSTM direction."""
    carry = (jnp.zeros((hidden,)), jnp.zeros((hidden,)))
    return LSTMCell(hidden).init(key, carry, jnp.zeros((in_dim,)))["params"]


def lstm_project(params, xs: jax.Array) -> jax.Array:
    """Input half of the gates, ``xs @ kernel_ih + bias``, for a whole sequence at once."""
    return xs @ params["kernel_ih"] + params["bias"]


def _lstm_cell(kernel_hh, carry, gates_x, *, matmul: Callable = concat_matmul,
               sigmoid: Callable = jax.nn.sigmoid):
    """One LSTM step (the equations of the module docstring) with the activations the backward pass of
    :func:`lstm_scan` needs: ``((h', c'), (i, f, g, o, tanh c'))``, gates after their nonlinearities."""
    h, c = carry
    i, f, g, o = jnp.split(gates_x + matmul([h], kernel_hh), 4, axis=-1)
    i, f, g, o = sigmoid(i), sigmoid(f), jnp.tanh(g), sigmoid(o)
    c = f * c + i * g
    tc = jnp.tanh(c)
    return (o * tc, c), (i, f, g, o, tc)


def _lstm_cell_bwd(d_h, d_c, c_prev, acts):
    """Backward pass of one :func:`_lstm_cell` step: from the gradients of its outputs h' and c' (the
    latter without the path through h') and its activations ``acts = (i, f, g, o, tanh c')``, the
    gradient of the gate pre-activations and the total gradient of c' (``d_c * f`` reaches c)."""
    i, f, g, o, tc = acts
    d_c = d_c + d_h * o * (1.0 - tc * tc)
    d_gates = jnp.concatenate([d_c * g * i * (1.0 - i), d_c * c_prev * f * (1.0 - f),
                               d_c * i * (1.0 - g * g), d_h * tc * o * (1.0 - o)], axis=-1)
    return d_gates, d_c


def _outer_over_frames(u, d):
    """:math:`\\sum_t u_t^\\top d_t` over every axis but the last (time and batch): the weight gradient
    of a layer :math:`a = u W` from the gradients ``d`` of its outputs, as one product."""
    axes = list(range(u.ndim - 1))
    return jnp.tensordot(u, d, axes=(axes, axes))


def lstm_step(params, carry, gates_x: jax.Array, *, matmul: Callable = concat_matmul,
              sigmoid: Callable = jax.nn.sigmoid):
    """One LSTM step from precomputed input gates. ``carry = (h, c)``; returns ``((h, c), h)``.

    ``matmul(parts, kernel)`` does the recurrent product (:func:`unrolled_matmul` for tiny cells);
    ``sigmoid`` may be swapped for an equal formula that is cheaper on some backends."""
    new, _ = _lstm_cell(params["kernel_hh"], carry, gates_x, matmul=matmul, sigmoid=sigmoid)
    return new, new[0]


def zero_carry(batch_shape: tuple, hidden: int, dtype=jnp.float32):
    """Zero LSTM state ``(h, c)`` for the given batch shape, in ``dtype`` (pass the data's dtype:
    a default-dtype carry would silently promote float32 models to float64 under ``jax_enable_x64``)."""
    return jnp.zeros(batch_shape + (hidden,), dtype), jnp.zeros(batch_shape + (hidden,), dtype)


def frame_inputs(tree):
    """The frame a scan step reads from its sequences, materialised first on a CPU.

    XLA:CPU otherwise fuses the slice of the scanned array into the step's elementwise fusion, and that
    fusion runs much slower: 50 LSTM steps on (2, 32, 512) gates took 10.1 ms, with the frame
    materialised 4.4 ms (``benchmarks/bench_cpu_kernels.py``, one core); the copy of one frame costs far
    less. Other backends: unchanged.
    """
    return jax.lax.optimization_barrier(tree) if jax.default_backend() == "cpu" else tree


def row_major_transpose(kernel: jax.Array) -> jax.Array:
    """``kernel.T`` as an array of its own (swapped last two axes), for products inside a loop.

    XLA:CPU folds a transpose into the product that reads it, and a product with a transposed right
    operand runs slower than a plain one (50 steps of 2 x (32, 512) x (512, 128): 4.3 against 3.4 ms,
    ``benchmarks/bench_cpu_kernels.py``); transposing once before the loop avoids it."""
    return jax.lax.optimization_barrier(jnp.swapaxes(kernel, -1, -2))


def _lstm_forward(kernel_hh, gates, carry, mask, reverse, keep):
    """The recurrence of :func:`lstm_scan` on precomputed input gates; ``keep`` also returns the
    residuals of :func:`_lstm_recurrence`'s backward pass."""
    def step(state, inputs):
        g, m = frame_inputs(inputs)
        new, acts = _lstm_cell(kernel_hh, state, g)
        out = new[0]
        if m is not None:
            new = jax.tree.map(lambda a, b: jnp.where(m[..., None], a, b), new, state)
        return new, ((out, state, acts) if keep else out)

    return jax.lax.scan(step, carry, (gates, mask), reverse=reverse)[1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _lstm_recurrence(kernel_hh, gates, carry, mask, reverse):
    return _lstm_forward(kernel_hh, gates, carry, mask, reverse, keep=False)


def _lstm_recurrence_fwd(kernel_hh, gates, carry, mask, reverse):
    hs, prev, acts = _lstm_forward(kernel_hh, gates, carry, mask, reverse, keep=True)
    return hs, (kernel_hh, prev, acts, mask)


def _lstm_recurrence_bwd(reverse, res, d_hs):
    """Backward scan over the gate gradients only; the kernel's gradient is then one product over all
    frames, :math:`\\partial K_{hh} = \\sum_t h_{t-1}^\\top \\partial z_t`, instead of a rank-1 update of
    an (H, 4H) accumulator per frame (and per sequence when vmapped over per-sequence weights)."""
    kernel_hh, (h_prev, c_prev), acts, mask = res

    def step(d_state, inputs):
        d_h_next, d_c_next = d_state
        d_out, cp, acts_t, m = inputs
        if m is None:
            d_h, d_c = d_out + d_h_next, d_c_next
        else:
            keep = m[..., None]
            d_h, d_c = d_out + jnp.where(keep, d_h_next, 0.0), jnp.where(keep, d_c_next, 0.0)
        d_z, d_c = _lstm_cell_bwd(d_h, d_c, cp, acts_t)
        d_h_prev, d_c_prev = d_z @ kernel_t, d_c * acts_t[1]
        if m is not None:
            d_h_prev = d_h_prev + jnp.where(keep, 0.0, d_h_next)
            d_c_prev = d_c_prev + jnp.where(keep, 0.0, d_c_next)
        return (d_h_prev, d_c_prev), d_z

    zero = jnp.zeros_like(d_hs[0])
    kernel_t = row_major_transpose(kernel_hh)
    d_carry, d_z = jax.lax.scan(step, (zero, zero), (d_hs, c_prev, acts, mask), reverse=not reverse)
    return _outer_over_frames(h_prev, d_z), d_z, d_carry, None


_lstm_recurrence.defvjp(_lstm_recurrence_fwd, _lstm_recurrence_bwd)


class LSTMResiduals(NamedTuple):
    """What :func:`lstm_scan_residuals` keeps of one LSTM direction's pass, all time-major (T, ..., H):
    the hidden states ``hs``, the state ``prev = (h, c)`` entering every frame and the activations
    ``acts = (i, f, g, o, tanh c')``."""

    hs: jax.Array
    prev: tuple
    acts: tuple


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _lstm_replay(params, xs, carry, mask, reverse, residuals):
    return residuals.hs


def _lstm_replay_fwd(params, xs, carry, mask, reverse, residuals):
    return residuals.hs, (params, xs, residuals, mask)


def _lstm_replay_bwd(reverse, res, d_hs):
    """The backward pass of :func:`lstm_scan` from stored residuals; the input projection's gradients
    are computed here too, so the replayed forward pass has no matrix product left at all."""
    params, xs, residuals, mask = res
    d_kernel_hh, d_gates, d_carry, _ = _lstm_recurrence_bwd(
        reverse, (params["kernel_hh"], residuals.prev, residuals.acts, mask), d_hs)
    d_params = {"kernel_ih": _outer_over_frames(xs, d_gates), "kernel_hh": d_kernel_hh,
                "bias": jnp.sum(d_gates, axis=tuple(range(xs.ndim - 1)))}
    return d_params, d_gates @ params["kernel_ih"].T, d_carry, None, jax.tree.map(jnp.zeros_like, residuals)


_lstm_replay.defvjp(_lstm_replay_fwd, _lstm_replay_bwd)


def _default_carry_and_mask(params, inputs, carry, mask):
    """A zero initial state for the batch axes of ``inputs`` (the sequence or its input gates) and a
    boolean mask."""
    if carry is None:
        dtype = jnp.result_type(inputs, params["kernel_hh"])
        carry = zero_carry(inputs.shape[1:-1], params["kernel_hh"].shape[0], dtype)
    return carry, None if mask is None else jnp.asarray(mask, bool)


def lstm_scan_residuals(params, xs: jax.Array, *, reverse: bool = False, carry=None,
                        mask=None) -> LSTMResiduals:
    """:func:`lstm_scan`'s forward pass, keeping what its backward pass needs.

    ``lstm_scan(params, xs, ..., residuals=lstm_scan_residuals(params, xs, ...))`` with the same
    ``params``, ``xs``, ``reverse``, ``carry`` and ``mask`` returns the same hidden states and the same
    gradients without running the pass again (neither the recurrence nor the input projection). For
    callers that run one pass twice with the same weights, e.g. SE-VEM, whose M-step sample and next
    E-step see the same encoder."""
    carry, mask = _default_carry_and_mask(params, xs, carry, mask)
    gates = lstm_project(params, xs)
    return LSTMResiduals(*_lstm_forward(params["kernel_hh"], gates, carry, mask, reverse, keep=True))


def lstm_scan(params, xs: jax.Array, *, reverse: bool = False, carry=None, mask=None,
              residuals: LSTMResiduals | None = None) -> jax.Array:
    """Run one LSTM direction over time-major ``xs`` (T, ..., in); returns hidden states (T, ..., H).

    Axes between time and features are batch axes. The input projection is one matrix product for
    the whole sequence; the scan only carries the recurrent product. ``reverse=True`` is the
    anti-causal direction: output ``t`` summarises ``x_{t:T}`` (the reference's flip-run-flip trick),
    and outputs stay time-aligned.

    ``mask`` (T, ...) marks valid frames: on masked frames the state passes through unchanged, so
    padding at the end of a sequence does not reach the valid frames of an anti-causal scan.

    Gradients come from a hand-written backward scan (:func:`_lstm_recurrence_bwd`) that leaves the
    recurrent kernel's gradient to one product after the loop; autodiff of the plain scan would update an
    (H, 4H) accumulator at every frame, a memory-bound step, slowest when every sequence has its own
    weights (``python benchmarks/bench_lstm_grad.py`` compares the two).

    ``residuals`` (from :func:`lstm_scan_residuals` on the same arguments) replays a pass already run:
    its hidden states are returned as they are, and gradients flow through them as through the pass.
    """
    if residuals is None:
        return lstm_scan_gates(params, lstm_project(params, xs), reverse=reverse, carry=carry, mask=mask)
    if residuals.hs.shape[:-1] != xs.shape[:-1]:
        raise ValueError(f"residuals are for frames and batch {residuals.hs.shape[:-1]}, "
                         f"xs has {xs.shape[:-1]}")
    carry, mask = _default_carry_and_mask(params, xs, carry, mask)
    return _lstm_replay({k: params[k] for k in ("kernel_ih", "kernel_hh", "bias")}, xs, carry, mask,
                        reverse, residuals)


def lstm_scan_gates(params, gates: jax.Array, *, reverse: bool = False, carry=None, mask=None) -> jax.Array:
    """:func:`lstm_scan` from its input gates ``gates = lstm_project(params, xs)`` (T, ..., 4H): the
    recurrence alone, with the same backward pass (gradients reach ``gates`` and ``kernel_hh``).

    For callers that compute the projection themselves, e.g. the MixDVAE SRNNs' h chain, whose input
    gates (``models.srnn_mixdvae.h_input_gates``) the SC-ASS decoder recursion also steps on."""
    carry, mask = _default_carry_and_mask(params, gates, carry, mask)
    return _lstm_recurrence(params["kernel_hh"], gates, carry, mask, reverse)


def rnn_step(params, h, gates_x):
    h = jnp.tanh(gates_x + h @ params["kernel_hh"])
    return h, h


def rnn_scan(params, xs: jax.Array, *, reverse: bool = False) -> jax.Array:
    """Vanilla tanh RNN over time-major ``xs`` (T, ..., in) -> (T, ..., H)."""
    hidden = params["kernel_hh"].shape[0]
    gates = xs @ params["kernel_ih"] + params["bias"]
    _, hs = jax.lax.scan(lambda h, g: rnn_step(params, h, g), jnp.zeros(xs.shape[1:-1] + (hidden,), gates.dtype), gates,
                         reverse=reverse)
    return hs
