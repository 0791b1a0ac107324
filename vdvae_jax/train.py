"""Training: pure train/eval steps, KL warm-up and scheduled-sampling schedules, early stopping, a
resumable loop with orbax checkpoints and JSONL metrics, and data parallelism over local devices.

The step functions are pure and un-jitted; callers ``jax.jit`` them once (``kl_weight`` and ``use_pred``
are traced scalars, so schedules never retrace). Randomness is ``fold_in(key, step)``, and batches come
from ``(seed, epoch)``, so a run killed at any step and resumed from its last checkpoint continues with
exactly the keys, batches and optimiser state of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vdvae_jax.models.base import DVAE, batch_loss

__all__ = [
    "TrainState",
    "TrainConfig",
    "init_train_state",
    "make_train_step",
    "make_eval_step",
    "kl_warmup",
    "scheduled_sampling_prob",
    "EarlyStopping",
    "data_parallel",
    "fit",
]


class TrainState(NamedTuple):
    """What a train step carries: parameters, optimiser state and the global step counter."""

    params: dict
    opt_state: optax.OptState
    step: jax.Array


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (reference speech defaults of DVAE_SE: Adam 1e-3, beta 0.01, linear warm-up
    over 50 epochs, patience 30).

    Attributes:
      kl_warmup: ``"linear"`` (DVAE_SE: epoch / warmup_epochs), ``"steps"`` (DVAE master: 0.2 every 10
        epochs) or ``"none"``.
      best_is_last: reproduce the reference bug that keeps the *last* epoch's parameters under the
        "best" name (the correct behaviour, ``False``, keeps a copy of the best parameters).
      ss_start, ss_end: scheduled-sampling ramp of ``use_pred`` 0 -> 1 (SRNN_ss only).
    """

    lr: float = 1e-3
    beta: float = 0.01
    batch_size: int = 128
    epochs: int = 300
    patience: int = 30
    kl_warmup: str = "linear"
    warmup_epochs: int = 50
    best_is_last: bool = False
    ss_start: int = 50
    ss_end: int = 150
    checkpoint_every: int = 200
    seed: int = 0


def init_train_state(params, optimizer: optax.GradientTransformation) -> TrainState:
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def make_train_step(model: DVAE, optimizer: optax.GradientTransformation, *,
                    time_major: bool = False) -> Callable:
    """``step(state, batch, key, kl_weight, use_pred) -> (state, metrics)``; pure, jit it once.

    ``batch`` is ``(B, T, F)``, or ``(T, B, F)`` with ``time_major=True`` (saves a transpose per step).
    The key of the step is ``fold_in(key, state.step)``: pass the same run key every call.
    """

    def loss_fn(params, batch, key, kl_weight, use_pred):
        mode = {"use_pred": use_pred} if getattr(model.config, "scheduled_sampling", False) else {}
        return batch_loss(model, params, batch, key, kl_weight=kl_weight, time_major=time_major, **mode)

    def step(state: TrainState, batch, key, kl_weight, use_pred=0.0):
        step_key = jax.random.fold_in(key, state.step)
        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, batch, step_key, kl_weight, use_pred)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "recon": terms.recon, "kl": terms.kl,
                   "grad_norm": optax.tree.norm(grads)}
        return TrainState(params, opt_state, state.step + 1), metrics

    return step


def make_eval_step(model: DVAE, *, time_major: bool = False) -> Callable:
    """``eval_step(params, batch, key, kl_weight, use_pred) -> metrics`` (same stochastic pass)."""

    def eval_step(params, batch, key, kl_weight, use_pred=0.0):
        mode = {"use_pred": use_pred} if getattr(model.config, "scheduled_sampling", False) else {}
        loss, terms = batch_loss(model, params, batch, key, kl_weight=kl_weight, time_major=time_major,
                                 **mode)
        return {"loss": loss, "recon": terms.recon, "kl": terms.kl}

    return eval_step


def kl_warmup(epoch: int, kind: str = "linear", warmup_epochs: int = 50) -> float:
    """KL warm-up factor :math:`w_{kl}` at ``epoch``.

    * ``"linear"`` (DVAE_SE): :math:`w = e / E` for :math:`e < E`, else 1.
    * ``"steps"`` (DVAE master): :math:`w = \\min(1, 0.2 \\lfloor e / 10 \\rfloor)`.
    * ``"none"``: 1.
    """
    if kind == "linear":
        return epoch / warmup_epochs if epoch < warmup_epochs else 1.0
    if kind == "steps":
        return min(1.0, 0.2 * (epoch // 10))
    if kind == "none":
        return 1.0
    raise ValueError(f"unknown kl_warmup {kind!r}; expected 'linear', 'steps' or 'none'")


def scheduled_sampling_prob(epoch: int, start: int = 50, end: int = 150) -> float:
    """``use_pred`` of the DVAE_SE schedule: 0 before ``start``, linear to 1 at ``end``."""
    if epoch < start:
        return 0.0
    if epoch >= end:
        return 1.0
    return (epoch - start) / (end - start)


class EarlyStopping:
    """Tracks the best validation loss and keeps a *copy* of the best parameters.

    Patience counts only once the schedules are complete (``counting=True``), as in the reference;
    during warm-up every epoch replaces the best (its losses are not comparable across epochs).
    """

    def __init__(self, patience: int, *, best_is_last: bool = False):
        self.patience = patience
        self.best_is_last = best_is_last
        self.best_loss = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.best_params = None

    def update(self, epoch: int, val_loss: float, params, *, counting: bool = True) -> bool:
        """Record an epoch; returns True when training should stop."""
        if not counting or val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            self.best_params = jax.device_get(params)
        else:
            self.bad_epochs += 1
        if self.best_is_last:  # the reference's live-reference bug: "best" is the latest
            self.best_params = jax.device_get(params)
        return counting and self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best_loss": self.best_loss, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict, best_params) -> None:
        self.best_loss = state["best_loss"]
        self.best_epoch = state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
        self.best_params = best_params


def data_parallel(step: Callable, mesh: Mesh | None = None, *, batch_argnum: int = 1) -> Callable:
    """Jit ``step`` with its batch sharded over all local devices and everything else replicated.

    The batch's leading axis is split across the ``"data"`` mesh axis; XLA inserts the gradient
    all-reduce, so the result equals the single-device step up to float summation order.
    """
    # Auto axes: XLA propagates shardings (Explicit axes would demand out_sharding on every dot).
    mesh = mesh or jax.make_mesh((jax.device_count(),), ("data",),
                                 axis_types=(jax.sharding.AxisType.Auto,))
    batch_sharding = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(step)

    def wrapped(*args):
        args = list(args)
        if args[batch_argnum].shape[0] % mesh.devices.size:
            raise ValueError(f"batch size {args[batch_argnum].shape[0]} is not divisible by "
                             f"{mesh.devices.size} devices")
        for i, a in enumerate(args):
            sharding = batch_sharding if i == batch_argnum else replicated
            args[i] = jax.device_put(a, sharding)
        return jitted(*args)

    wrapped.jitted = jitted
    return wrapped


def _mean_metrics(metrics: list[dict]) -> dict:
    return {k: float(np.mean([float(m[k]) for m in metrics])) for k in metrics[0]}


def fit(*, train_step: Callable, eval_step: Callable, state: TrainState, train_data: np.ndarray,
        val_data: np.ndarray, config: TrainConfig, key, workdir: str | Path | None = None,
        use_ss: bool = False, progress: bool = True, max_steps: int | None = None,
        time_budget_s: float | None = None, time_major: bool = False,
        log: Callable[[str], None] = print) -> tuple[TrainState, EarlyStopping, list[dict]]:
    """Train with epochs, warm-up, early stopping, checkpoints and resume.

    Args:
      train_step, eval_step: the *jitted* functions of :func:`make_train_step`/:func:`make_eval_step`.
      state: initial state (ignored when ``workdir`` holds a checkpoint: the run resumes from it).
      train_data, val_data: (N, T, F) arrays of training/validation sequences.
      key: run key; step keys are ``fold_in(key, step)``, validation keys ``fold_in(val_key, epoch)``.
      workdir: where ``checkpoints/`` and ``metrics.jsonl`` go; None disables both.
      max_steps: stop after this global step (used to simulate a killed run in tests).
      time_budget_s: stop after the first epoch that ends past this many seconds of training.
      time_major: feed ``(T, B, F)`` batches (steps built with ``time_major=True``); the data are
        transposed once here instead of in every step.

    Returns:
      ``(final state, early-stopping record with best_params, per-epoch history)``.
    """
    from tqdm.auto import tqdm

    from vdvae_jax.checkpoint import Checkpointer
    from vdvae_jax.data.datasets import batch_iterator

    axis = 1 if time_major else 0
    if time_major:
        train_data = np.ascontiguousarray(np.swapaxes(train_data, 0, 1))
        val_data = np.ascontiguousarray(np.swapaxes(val_data, 0, 1))
    n_batches = train_data.shape[axis] // config.batch_size
    if n_batches == 0:
        raise ValueError(f"{train_data.shape[axis]} training sequences < batch size {config.batch_size}")
    stopper = EarlyStopping(config.patience, best_is_last=config.best_is_last)
    history: list[dict] = []
    ckpt = metrics_file = None
    if workdir is not None:
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=2)
        if ckpt.latest_step() is not None:
            target = {"state": state, "best_params": state.params}
            restored, meta = ckpt.restore(target)
            state = restored["state"]
            stopper.load_state_dict(meta["early_stopping"], restored["best_params"])
            history = meta["history"]
            log(f"resumed from step {int(state.step)} (epoch {int(state.step) // n_batches})")
        metrics_file = open(workdir / "metrics.jsonl", "a")

    def save(force=False):
        if ckpt is None or ckpt.latest_step() == int(state.step):
            return
        best = stopper.best_params if stopper.best_params is not None else state.params
        ckpt.save(int(state.step), {"state": state, "best_params": best}, force=force,
                  metadata={"early_stopping": stopper.state_dict(), "history": history})

    val_key = jax.random.fold_in(key, 2**31 - 1)
    start_epoch = int(state.step) // n_batches
    bar = tqdm(total=config.epochs * n_batches, initial=int(state.step), disable=not progress,
               desc="train", unit="step")
    stopped = False
    t_start = time.perf_counter()
    try:
        for epoch in range(start_epoch, config.epochs):
            kl_w = config.beta * kl_warmup(epoch, config.kl_warmup, config.warmup_epochs)
            use_pred = scheduled_sampling_prob(epoch, config.ss_start, config.ss_end) if use_ss else 0.0
            skip = int(state.step) - epoch * n_batches
            t0, epoch_metrics = time.perf_counter(), []
            for batch in batch_iterator(train_data, config.batch_size, seed=config.seed, epoch=epoch,
                                        start_batch=skip, axis=axis):
                state, m = train_step(state, batch, key, kl_w, use_pred)
                epoch_metrics.append(m)
                bar.update(1)
                if ckpt is not None and int(state.step) % config.checkpoint_every == 0:
                    save()
                if max_steps is not None and int(state.step) >= max_steps:
                    save(force=True)
                    return state, stopper, history
            val = [eval_step(state.params, batch, jax.random.fold_in(val_key, epoch), kl_w, use_pred)
                   for batch in batch_iterator(val_data, min(config.batch_size, val_data.shape[axis]),
                                               seed=config.seed, epoch=0, axis=axis)]
            record = {"epoch": epoch, "step": int(state.step), "kl_weight": kl_w, "use_pred": use_pred,
                      "seconds": time.perf_counter() - t0,
                      **{f"train_{k}": v for k, v in _mean_metrics(epoch_metrics).items()},
                      **{f"val_{k}": v for k, v in _mean_metrics(val).items()}}
            counting = kl_warmup(epoch, config.kl_warmup, config.warmup_epochs) >= 1.0
            if use_ss:
                counting = counting and use_pred >= 1.0
            stopped = stopper.update(epoch, record["val_loss"], state.params, counting=counting)
            record["best_epoch"] = stopper.best_epoch
            history.append(record)
            if metrics_file is not None:
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
            bar.set_postfix(loss=f"{record['train_loss']:.2f}", val=f"{record['val_loss']:.2f}")
            if stopped:
                log(f"early stop at epoch {epoch}; best epoch {stopper.best_epoch}")
                break
            if time_budget_s is not None and time.perf_counter() - t_start > time_budget_s:
                log(f"time budget of {time_budget_s:.0f} s reached after epoch {epoch}")
                break
        save(force=True)
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if ckpt is not None:
            ckpt.close()
    return state, stopper, history
