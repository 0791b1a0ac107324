"""Save and load trained models as a framework-neutral ``.npz`` (parameters + model name + config)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp

from vdvae_jax.checkpoint import export_npz, load_npz
from vdvae_jax.models.base import DVAE

__all__ = ["save_model", "load_model"]


def save_model(path: str | Path, model: DVAE, params) -> None:
    """Write ``params`` with ``{"model": name, "config": fields}`` to ``path`` (an ``.npz`` file)."""
    config = {"model": model.name, "config": dataclasses.asdict(model.config)}
    export_npz(jax.device_get(params), path, config)


def load_model(path: str | Path) -> tuple[DVAE, dict]:
    """Inverse of :func:`save_model`; checks every parameter shape against the rebuilt model."""
    from vdvae_jax.models import REGISTRY, build

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model file at {path}")
    params, meta = load_npz(path)
    if not meta or meta.get("model") not in REGISTRY:
        raise ValueError(f"{path}: not a vdvae_jax model file (missing or unknown 'model' entry)")
    cls = REGISTRY[meta["model"]][0]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items() if k in fields}
    model = build(meta["model"], cls(**kwargs))
    expected = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, model.config.x_dim)))
    got = jax.tree.map(lambda a: (a.shape, a.dtype), params)
    want = jax.tree.map(lambda a: (a.shape, a.dtype), expected)
    if got != want:
        raise ValueError(f"{path}: parameters do not match the {meta['model']} architecture of its config")
    return model, jax.tree.map(jnp.asarray, params)
