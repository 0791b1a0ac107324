"""The DVAE zoo. ``build(name, **overrides)`` returns a :class:`~vdvae_jax.models.base.DVAE`.

``REGISTRY`` maps each registered name to ``(config class, builder, fixed config fields)``.
"""

from __future__ import annotations

import dataclasses

from vdvae_jax.models.base import DVAE, DVAEConfig, LossTerms, Outputs, batch_loss, count_params
from vdvae_jax.models.dkf import DKFConfig, make_dkf
from vdvae_jax.models.dsae import DSAEConfig, make_dsae
from vdvae_jax.models.rvae import RVAEConfig, make_rvae
from vdvae_jax.models.srnn import SRNNConfig, make_srnn
from vdvae_jax.models.srnn_mixdvae import MIXDVAE_MODELS
from vdvae_jax.models.storn import STORNConfig, make_storn
from vdvae_jax.models.vae import VAEConfig, make_vae
from vdvae_jax.models.vrnn import VRNNConfig, make_vrnn

__all__ = [
    "REGISTRY",
    "build",
    "config_for",
    "DVAE",
    "DVAEConfig",
    "LossTerms",
    "Outputs",
    "batch_loss",
    "count_params",
    "VAEConfig",
    "RVAEConfig",
    "SRNNConfig",
    "make_vae",
    "make_rvae",
    "make_srnn",
    "DKFConfig",
    "STORNConfig",
    "VRNNConfig",
    "DSAEConfig",
    "make_dkf",
    "make_storn",
    "make_vrnn",
    "make_dsae",
]

REGISTRY: dict[str, tuple[type, object, dict]] = {
    "vae": (VAEConfig, make_vae, {}),
    "rvae": (RVAEConfig, make_rvae, {"causal": False}),
    "rvae_causal": (RVAEConfig, make_rvae, {"causal": True}),
    "srnn": (SRNNConfig, make_srnn, {"scheduled_sampling": False}),
    "srnn_ss": (SRNNConfig, make_srnn, {"scheduled_sampling": True}),
    "dkf": (DKFConfig, make_dkf, {}),
    "storn": (STORNConfig, make_storn, {}),
    "vrnn": (VRNNConfig, make_vrnn, {}),
    "dsae": (DSAEConfig, make_dsae, {}),
    **{name: (cls, builder, {}) for name, (cls, builder) in MIXDVAE_MODELS.items()},
}


def config_for(name: str, **overrides) -> DVAEConfig:
    """The config of registered model ``name`` with ``overrides`` applied (unknown fields raise)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; registered: {sorted(REGISTRY)}")
    cls, _, fixed = REGISTRY[name]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(overrides) - names
    if unknown:
        raise TypeError(f"{name}: unknown config fields {sorted(unknown)}; valid: {sorted(names)}")
    clash = {k for k in overrides if k in fixed and overrides[k] != fixed[k]}
    if clash:
        raise ValueError(f"{name}: fields {sorted(clash)} are fixed by the model name")
    return cls(**{**fixed, **overrides})


def build(name: str, config: DVAEConfig | None = None, **overrides) -> DVAE:
    """Build registered model ``name`` from ``config`` or from its defaults plus ``overrides``."""
    if config is None:
        config = config_for(name, **overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    return REGISTRY[name][1](config)
