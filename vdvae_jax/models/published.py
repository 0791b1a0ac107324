"""Build zoo models from the reference's configuration files and load published checkpoints.

The DVAE / DVAE_SE code describes a model by the ``[Network]`` section of a ``config.ini``
(``name``, ``x_dim``, ``z_dim``, ``activation``, ``dense_*`` width lists such as ``"64,32"`` or ``""``,
``dim_RNN_*`` sizes, ``num_RNN_*`` layer counts, ``bidir_*`` flags, ``dropout_p``, ``tag``). This module
maps such a section to a :class:`~vdvae_jax.models.base.DVAE`:

=========  =============================================================================
``name``   zoo model
=========  =============================================================================
VAE        ``vae`` (decoder widths = reversed ``dense_x_z``)
DKF        ``dkf``
RVAE       ``rvae`` when ``bidir_g_x``/``bidir_h`` are True (the shipped SE RVAE), else ``rvae_causal``
SRNN       ``srnn_ss`` (DVAE_SE trains SRNN with scheduled sampling), or ``srnn`` with
           ``scheduled_sampling=False``
STORN      ``storn``; VRNN: ``vrnn``; DSAE: ``dsae`` (DVAE master configs)
=========  =============================================================================

Dropout is ignored (p = 0 in every published config; the functions here are the eval-mode model).
Multi-layer RNNs (``num_RNN_* != 1``) are rejected, as are unknown ``dense_*``/``dim_RNN_*`` keys.
By default the models use the reference's KL form (``kl_mode="reference"``, no ``-1``) so that
logged losses match the published numbers.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vdvae_jax.models.base import DVAE

__all__ = ["FLIPPED", "PublishedModelError", "model_from_reference_config", "flipped_modules",
           "check_params_match", "load_published_model"]

#: Recurrent modules the reference runs on time-flipped input (torch ``_l0`` = our ``backward``).
FLIPPED: dict[str, frozenset] = {
    "vae": frozenset(), "dkf": frozenset({"rnn_gx"}), "rvae": frozenset({"rnn_g_x"}),
    "rvae_causal": frozenset({"rnn_g_x"}), "srnn": frozenset({"rnn_g"}), "srnn_ss": frozenset({"rnn_g"}),
    "storn": frozenset(), "vrnn": frozenset(), "dsae": frozenset(),
}

# config.ini key (lower-cased) -> config field, where the names differ
_ALIASES = {
    "dsae": {"dim_rnn_gv": "dim_rnn_g_v", "dim_rnn_gxv": "dim_rnn_g_xv", "dim_rnn_gz": "dim_rnn_g_z"},
}
_IGNORED = {"name", "tag", "dropout_p", "x_dim", "z_dim", "activation"}


class PublishedModelError(ValueError):
    """A config cannot be mapped, or a checkpoint does not match the architecture of its config."""


def _parse(value: str, default):
    value = value.strip()
    if isinstance(default, bool):
        if value.lower() not in ("true", "false", "1", "0"):
            raise PublishedModelError(f"expected a boolean, got {value!r}")
        return value.lower() in ("true", "1")
    if isinstance(default, tuple) or default is None:
        return tuple(int(v) for v in value.split(",") if v.strip())
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


def _zoo_name(net: Mapping[str, str], scheduled_sampling: bool) -> str:
    name = net.get("name", "").strip().upper()
    if name == "RVAE":
        bx = _parse(net.get("bidir_g_x", "False"), False)
        bh = _parse(net.get("bidir_h", "False"), False)
        if bx != bh:
            raise PublishedModelError(f"RVAE with bidir_g_x={bx} and bidir_h={bh} is not supported "
                                      "(the zoo has causal = both False and non-causal = both True)")
        return "rvae" if bx else "rvae_causal"
    if name in ("SRNN", "SRNN_SS"):
        return "srnn_ss" if scheduled_sampling else "srnn"
    known = {"VAE": "vae", "DKF": "dkf", "STORN": "storn", "VRNN": "vrnn", "DSAE": "dsae"}
    if name not in known:
        raise PublishedModelError(f"unknown [Network] name {net.get('name')!r}; "
                                  f"supported: VAE, DKF, RVAE, SRNN, STORN, VRNN, DSAE")
    return known[name]


def model_from_reference_config(cfg: Mapping[str, Mapping[str, str]], *, kl_mode: str = "reference",
                                scheduled_sampling: bool = True, **overrides) -> DVAE:
    """The zoo model described by a reference ``config.ini`` (``cfg[section][key]`` strings).

    Args:
      cfg: parsed ini (e.g. from :func:`vdvae_jax.convert.load_published` or ``model.json["config"]``);
        only ``[Network]`` is read.
      kl_mode: ``"reference"`` (default, logged values match the reference) or ``"exact"``.
      scheduled_sampling: map ``SRNN`` to ``srnn_ss`` (DVAE_SE, default) or to the plain ``srnn``.
      overrides: further config fields (e.g. ``observation``).
    """
    from vdvae_jax.models import REGISTRY  # late import: the registry imports this package's models

    if "Network" not in cfg:
        raise PublishedModelError("config has no [Network] section")
    net = {k.lower(): v for k, v in cfg["Network"].items()}
    zoo = _zoo_name(cfg["Network"], scheduled_sampling)
    cls, builder, fixed = REGISTRY[zoo]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    defaults = cls()
    kw: dict = {"x_dim": int(net["x_dim"]), "z_dim": int(net["z_dim"]), "kl_mode": kl_mode}
    if "activation" in net:
        kw["activation"] = net["activation"].strip()
    aliases = _ALIASES.get(zoo, {})
    for key, value in net.items():
        if key in _IGNORED:
            continue
        if key.startswith("num_rnn"):
            if int(value) != 1:
                raise PublishedModelError(f"{key} = {value}: only single-layer RNNs are supported")
            continue
        if key.startswith("bidir"):
            if zoo.startswith("rvae"):
                continue  # folded into the causal flag
        field = aliases.get(key, key)
        if field not in fields or field in fixed:
            if key.startswith(("dense", "dim_rnn", "bidir")) or key.endswith("_dim"):
                raise PublishedModelError(f"{zoo}: config key {key!r} has no counterpart in {cls.__name__}")
            continue
        try:
            kw[field] = _parse(value, getattr(defaults, field))
        except ValueError as err:
            raise PublishedModelError(f"{key} = {value!r}: {err}") from None
    kw.update(fixed)
    kw.update(overrides)
    return builder(cls(**kw))


def flipped_modules(model: DVAE) -> frozenset:
    """The ``flipped`` set of :func:`vdvae_jax.convert.state_dict_to_params` for ``model``."""
    return FLIPPED.get(model.name, frozenset())


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = tuple(np.shape(v))
    return out


def check_params_match(model: DVAE, params) -> None:
    """Raise :class:`PublishedModelError` listing every missing, unexpected or mis-shaped parameter."""
    expected = _flat(jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, model.config.x_dim))))
    got = _flat(params)
    problems = [f"missing {k} {s}" for k, s in expected.items() if k not in got]
    problems += [f"unexpected {k} {s}" for k, s in got.items() if k not in expected]
    problems += [f"shape of {k}: checkpoint {got[k]} vs architecture {s}"
                 for k, s in expected.items() if k in got and got[k] != s]
    if problems:
        raise PublishedModelError(
            f"weights do not match the {model.name} architecture of the config "
            f"({len(problems)} problems):\n  " + "\n  ".join(problems))


def load_published_model(path_or_dir, *, kl_mode: str = "reference", scheduled_sampling: bool = True,
                         **overrides) -> tuple[DVAE, dict]:
    """Load a published DVAE_SE model folder (``config.ini`` + one ``.pt``) as ``(model, params)``.

    The torch head name ``gen_out`` (DVAE master) is renamed ``gen_logvar``. Every parameter's
    shape is checked against the architecture the config describes.
    """
    from vdvae_jax.convert import load_published, state_dict_to_params

    sd, cfg = load_published(path_or_dir)
    if not cfg:
        raise PublishedModelError(f"{path_or_dir}: no config.ini beside the checkpoint")
    model = model_from_reference_config(cfg, kl_mode=kl_mode, scheduled_sampling=scheduled_sampling,
                                        **overrides)
    sd = {("gen_logvar" + k[len("gen_out"):] if k.startswith("gen_out.") else k): v for k, v in sd.items()}
    try:
        params = state_dict_to_params(sd, flipped_modules(model))
    except ValueError as err:
        raise PublishedModelError(f"{path_or_dir}: {err}") from None
    check_params_match(model, params)
    return model, jax.tree.map(jnp.asarray, params)


def load_published_mixdvae(pt_path, config_ini=None) -> tuple[DVAE, dict]:
    """Load a published MixDVAE SRNN (``model_{mot,scass_wsj,scass_cbf}.pt``) as ``(model, params)``.

    ``config_ini`` defaults to the ``cfg_dvae_single_<tag>.ini`` its authors ship beside the file.
    """
    import configparser
    from pathlib import Path

    from vdvae_jax.convert import read_torch_checkpoint
    from vdvae_jax.models.srnn_mixdvae import (MOTSRNNConfig, config_from_ini, make_srnn_mot,
                                               make_srnn_scass, mixdvae_state_dict_to_params)

    pt_path = Path(pt_path)
    if config_ini is None:
        config_ini = pt_path.with_name("cfg_dvae_single_" + pt_path.stem.removeprefix("model_") + ".ini")
    if not Path(config_ini).is_file():
        raise PublishedModelError(f"{pt_path}: config {config_ini} not found; pass config_ini=")
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str
    parser.read(config_ini)
    config = config_from_ini({s: dict(parser[s]) for s in parser.sections()})
    model = (make_srnn_mot if isinstance(config, MOTSRNNConfig) else make_srnn_scass)(config)
    params = mixdvae_state_dict_to_params(read_torch_checkpoint(pt_path))
    check_params_match(model, params)
    return model, jax.tree.map(jnp.asarray, params)
