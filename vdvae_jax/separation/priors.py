"""Per-source SC-ASS SRNN priors for MixDVAE: short pretraining on single-source spectrograms, cached.

Each source (flute, speech) gets the reference SC-ASS SRNN (``models.build("srnn_scass")``, raw power
input, IS loss, reference KL, scheduled sampling; spec §2.2–§2.3) trained with
:func:`vdvae_jax.train.fit` on :func:`~vdvae_jax.separation.mixtures.source_training_spectrograms`
(T = 50 frames) of the ``train`` split, validated on ``val``. The reference schedule (KL warm-up over 20
epochs, scheduled sampling ramp 20 → 100, hundreds of epochs) is compressed: warm-up over
``warmup_epochs``, scheduled-sampling ramp over the next ``ss_epochs``, then stop after ``max_epochs``
(the best-validation parameters are kept). ``budget_s`` adds an optional wall-clock limit; it is off
by default because a run stopped by the clock depends on the machine's load and is not reproducible.

``power_scale`` (default 1, the reference) multiplies the training power spectra; the VEM must then see
the mixture STFT multiplied by ``sqrt(power_scale)``. The reference feeds raw power of peak-normalised
audio (bins up to ~1e5) to tanh layers, which saturate; a scale of 1e-4 (peak level -40 dB) keeps the
loud bins in the layers' linear range. The IS loss is scale-invariant, so losses stay comparable.
``init_output_bias`` starts the decoder log-variance bias at the log of the mean training power per
bin (otherwise Adam needs thousands of steps to move it from 0 to the data's level). The trained model is cached as an ``.npz``
(:func:`vdvae_jax.models.io.save_model`) under ``<cache>/scass_priors/<hash>/<source>.npz``, the hash
covering every setting below.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path

import jax
import numpy as np
import optax

from vdvae_jax import models
from vdvae_jax.models.io import load_model, save_model
from vdvae_jax.separation.mixtures import SOURCES, MixtureConfig, source_training_spectrograms
from vdvae_jax.train import TrainConfig, fit, init_train_state, make_eval_step, make_train_step

__all__ = ["PriorConfig", "pretrain_prior", "source_priors"]

_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PriorConfig:
    """Pretraining settings (reference: Adam 2e-3, beta 0.01; batch reduced for CPU)."""

    lr: float = 2e-3
    beta: float = 0.01
    batch_size: int = 32
    warmup_epochs: int = 3
    ss_epochs: int = 4
    max_epochs: int = 24
    budget_s: float | None = None
    max_train: int = 640
    max_val: int = 64
    n_frames: int = 50
    seed: int = 0
    power_scale: float = 1.0       # training power (and VEM mixture power) multiplied by this
    init_output_bias: bool = True  # decoder log-variance bias = log mean training power per bin
    overrides: tuple = ()          # (name, value) pairs passed to models.build("srnn_scass", ...)


def _cache_path(source: str, config: PriorConfig, cache_dir) -> Path:
    from vdvae_jax.data.corpus import default_cache_dir

    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    tag = json.dumps({**dataclasses.asdict(config), "version": _VERSION, "source": source}, sort_keys=True,
                     default=str)
    return base / "scass_priors" / hashlib.sha1(tag.encode()).hexdigest()[:12] / f"{source}.npz"


@functools.lru_cache(maxsize=8)
def _steps(overrides: tuple, lr: float):
    """Model, optimiser and jitted train/eval steps, shared by every source with the same settings."""
    model = models.build("srnn_scass", **dict(overrides))
    opt = optax.adam(lr)
    return (model, opt, jax.jit(make_train_step(model, opt, time_major=True)),
            jax.jit(make_eval_step(model, time_major=True)))


def pretrain_prior(source: str, config: PriorConfig = PriorConfig(), *, cache_dir=None, log=print,
                   data: tuple[np.ndarray, np.ndarray] | None = None):
    """``(model, params, info)`` of the SC-ASS SRNN prior of ``source`` ("flute" or "speech").

    Loads the cached model when present; otherwise trains (``data`` = (train, val) (N, T, 513) power
    arrays overrides the default data) and caches it. ``info`` holds the history when trained here.
    """
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    path = _cache_path(source, config, cache_dir)
    if path.is_file():
        model, params = load_model(path)
        return model, params, {"cached": str(path)}
    if data is None:
        mc = MixtureConfig()
        train = source_training_spectrograms(source, "train", config.n_frames, config=mc)
        val = source_training_spectrograms(source, "val", config.n_frames, config=mc)
    else:
        train, val = data
    rng = np.random.default_rng(config.seed)
    train, val = train * np.float32(config.power_scale), val * np.float32(config.power_scale)
    train = train[rng.permutation(len(train))[: config.max_train]]
    val = val[rng.permutation(len(val))[: config.max_val]]
    model, opt, step, evs = _steps(config.overrides, config.lr)
    key = jax.random.key(config.seed)
    params = model.init(jax.random.fold_in(key, 1), train[0])
    if config.init_output_bias:
        bias = np.log(np.mean(train, axis=(0, 1)) + 1e-10).astype(np.float32)
        params = {**params, "gen_logvar": {**params["gen_logvar"], "bias": jax.numpy.asarray(bias)}}
    tc = TrainConfig(lr=config.lr, beta=config.beta, batch_size=min(config.batch_size, len(train)),
                     epochs=config.max_epochs, patience=config.max_epochs, kl_warmup="linear",
                     warmup_epochs=config.warmup_epochs, ss_start=config.warmup_epochs,
                     ss_end=config.warmup_epochs + config.ss_epochs, seed=config.seed)
    _, stopper, history = fit(train_step=step, eval_step=evs, state=init_train_state(params, opt),
                              train_data=train, val_data=val, config=tc, key=key, use_ss=True,
                              progress=False, time_budget_s=config.budget_s, time_major=True, log=log)
    best = stopper.best_params if stopper.best_params is not None else params
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{source}.{os.getpid()}.npz")
    save_model(tmp, model, best)
    os.replace(tmp, path)
    (path.parent / f"{source}_history.json").write_text(json.dumps(history))
    return model, best, {"history": history, "path": str(path)}


def source_priors(config: PriorConfig = PriorConfig(), *, cache_dir=None, log=print):
    """``(model, [params_flute, params_speech], infos)``: both priors (same architecture)."""
    out = [pretrain_prior(s, config, cache_dir=cache_dir, log=log) for s in SOURCES]
    return out[0][0], [o[1] for o in out], {s: o[2] for s, o in zip(SOURCES, out)}
