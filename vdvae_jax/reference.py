"""Conformance of the JAX models with vectors recorded from the PyTorch reference.

Usage::

    python -m vdvae_jax.reference check DIR [--rtol 1e-4] [--gen-rtol 1e-3] [--only TAG ...] [--strict]
    python -m vdvae_jax.reference golden [CHECKPOINTS_DIR]

``check`` walks ``DIR`` laid out as the shared reference export:

* ``dvae_se/<tag>/{weights.npz, model.json, vectors.npz}``: the model is built from
  ``model.json["config"]`` (the checkpoint's ``config.ini``, never from the tag), the weights are
  the torch state dict key for key, and every mode present in ``vectors.npz`` is run with the
  recorded noise (``train`` for VAE/DKF/RVAE; ``tf``/``gen`` = SRNN_ss with ``use_pred`` 0/1 and
  ``plain`` = the teacher-forced SRNN for SRNN). Every recorded array of a mode is compared
  (outputs, latents, prior, losses, RNN outputs, and ``grad/<key>``/``gradnorm/<key>`` of
  d loss_tot / d parameter mapped back to torch keys; a torch LSTM's ``bias_ih`` and ``bias_hh``
  both receive the gradient of our summed bias).
* ``mixdvae/vem_trace_*.npz`` (the whole MixDVAE VEM, 2 iterations) ->
  :func:`vdvae_jax.reference_mixdvae.check_vem_trace`.
* ``mixdvae/<tag>/`` -> :func:`vdvae_jax.reference_mixdvae.check_model_dir` and ``se_vem/`` ->
  :func:`vdvae_jax.inference.se_vem_check.check_se_vem_dir`, when those modules import (a SKIP
  line otherwise, a failure only with ``--strict``).

Errors are scale-relative (see :mod:`vdvae_jax.conformance`): an array passes when
``max|ours - ref| <= rtol * max|ref|``; SRNN generation mode (``gen/*``, whose float32 drift the
reference export documents) uses ``--gen-rtol``. One line per model x mode; exit status 0 only
when every check passes.

``golden`` prints the spec's §7.5 table (posterior means fed back, T = 20, B = 1) for the published
checkpoints in ``CHECKPOINTS_DIR/dvae_se/<tag>/``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import sys
from pathlib import Path
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from vdvae_jax.conformance import CheckResult, compare_arrays, summarise
from vdvae_jax.models.base import loss_from_outputs

__all__ = ["check_directory", "check_dvae_se_dir", "is_skip", "golden_values", "main"]


def is_skip(result: CheckResult) -> bool:
    """True for the placeholder result of a check that could not run (module not importable)."""
    return result.mode == "skip"


def _skip(model: str, why: str, strict: bool) -> CheckResult:
    return CheckResult(model, "skip", 0, 0.0, 0.0, "-", not strict, (why,))


def _arrays_of(out, terms) -> dict[str, jax.Array]:
    arrays = {"y_logvar": out.x_out.logvar, "z": out.z, "z_mean": out.q.mean, "z_logvar": out.q.logvar,
              "z_mean_p": out.p.mean, "z_logvar_p": out.p.logvar, "loss_recon": terms.recon,
              "loss_kl": terms.kl, "loss_tot": terms.loss}
    for name, value in out.extras.items():
        if isinstance(value, jax.Array):
            arrays[f"rnn_out.{name}"] = value
            arrays[f"rnn_out_steps.{name}"] = value
            arrays[name] = value
    return arrays


def _grad_arrays(grads, flipped) -> dict[str, np.ndarray]:
    from vdvae_jax.convert import params_to_state_dict

    sd = params_to_state_dict(jax.tree.map(np.asarray, grads), flipped, split_bias="ih")
    out = {}
    for key, value in sd.items():
        if "bias_hh_l" in key:  # d/d b_hh = d/d b_ih = d/d (summed bias)
            value = sd[key.replace("bias_hh_l", "bias_ih_l")]
        out[f"grad/{key}"] = value
        out[f"gradnorm/{key}"] = np.linalg.norm(value.ravel())
    return out


def _mode_runner(cfg: dict, sd: dict, mode: str, x: np.ndarray, eps: np.ndarray, beta: float):
    """``(arrays dict, grad fn or None)`` for one recorded mode."""
    from vdvae_jax.convert import state_dict_to_params
    from vdvae_jax.models.published import flipped_modules, model_from_reference_config

    family = cfg["Network"]["name"].strip().upper()
    kw: dict = {}
    if family == "SRNN":
        if mode not in ("tf", "gen", "plain"):
            raise ValueError(f"unknown SRNN mode {mode!r}")
        model = model_from_reference_config(cfg, scheduled_sampling=(mode != "plain"))
        noise = {"z": eps}
        if mode != "plain":
            noise["coin"] = np.zeros(x.shape[:-1], np.float32)
            kw["use_pred"] = 1.0 if mode == "gen" else 0.0
    else:
        if mode != "train":
            raise ValueError(f"unknown {family} mode {mode!r}")
        model = model_from_reference_config(cfg)
        noise = {"z": eps}
    flipped = flipped_modules(model)
    params = jax.tree.map(jnp.asarray, state_dict_to_params(sd, flipped))
    noise = {k: jnp.asarray(v) for k, v in noise.items()}
    run = _compiled(model.name, model.config)
    _, (out, terms), grads = run(params, jnp.asarray(x), noise, jnp.float32(beta),
                                 jnp.float32(kw.get("use_pred", 0.0)))
    arrays = {k: np.asarray(v) for k, v in _arrays_of(out, terms).items()}
    return arrays, lambda: _grad_arrays(grads, flipped)


@functools.lru_cache(maxsize=32)
def _compiled(name: str, config):
    """One jitted ``(params, x, noise, beta, use_pred) -> (loss, (outputs, terms), grads)`` per
    architecture (vb/wsj checkpoints and the SRNN tf/gen modes share it)."""
    from vdvae_jax.models import build

    model = build(name, config)

    def run(p, x, noise, beta, use_pred):
        kw = {"use_pred": use_pred} if name == "srnn_ss" else {}
        out = model.forward(p, x, noise, **kw)
        terms = loss_from_outputs(model.config, x, out, beta)
        return terms.loss, (out, terms)

    def run_grad(p, x, noise, beta, use_pred):
        (loss, aux), grads = jax.value_and_grad(run, has_aux=True)(p, x, noise, beta, use_pred)
        return loss, aux, grads

    return jax.jit(run_grad)


def check_dvae_se_dir(path, *, rtol: float = 1e-4, gen_rtol: float = 1e-3,
                      name: str | None = None) -> list[CheckResult]:
    """Check one ``dvae_se/<tag>`` folder; one :class:`CheckResult` per recorded mode."""
    path = Path(path)
    name = name or path.name
    meta = json.loads((path / "model.json").read_text())
    cfg = meta["config"]
    with np.load(path / "weights.npz") as w:
        sd = {k: w[k] for k in w.files}
    with np.load(path / "vectors.npz") as v:
        vec = {k: v[k] for k in v.files}
    x, eps = vec["x"], vec["eps_z"]
    beta = float(vec["beta"]) if "beta" in vec else float(cfg.get("Training", {}).get("beta", "1"))
    modes = sorted({k.split("/", 1)[0] for k in vec if "/" in k})
    results = []
    for mode in modes:
        tol = gen_rtol if mode == "gen" else rtol
        keys = sorted(k.split("/", 1)[1] for k in vec if k.startswith(mode + "/"))
        try:
            ours, grads_fn = _mode_runner(cfg, sd, mode, x, eps, beta)
        except Exception as err:  # noqa: BLE001 - reported as a failed check
            results.append(CheckResult(name, mode, 0, float("inf"), float("inf"), "-", False,
                                       (f"cannot run: {type(err).__name__}: {err}",)))
            continue
        if any(k.startswith("grad") for k in keys):
            ours.update(grads_fn())
        errors = []
        for key in keys:
            ref = vec[f"{mode}/{key}"]
            if key == "y_logvar_maxabsdiff_vs_tf":
                # the reference stores only how far its plain y is from its tf y: ours must be as close
                tf_ref = vec.get("tf/y_logvar")
                if tf_ref is None:
                    continue
                diff = float(np.max(np.abs(ours["y_logvar"] - tf_ref)))
                scale = float(np.max(np.abs(tf_ref)))
                err = compare_arrays(f"{key}(y vs tf)", diff, float(ref), rtol=0.0, atol=tol * scale)
                errors.append(err._replace(max_rel=abs(diff - float(ref)) / scale))
                continue
            if key not in ours:
                errors.append(compare_arrays(key + " (not computed)", np.full((1,), np.nan), np.zeros(1),
                                             rtol=tol)._replace(max_abs=float("inf"), max_rel=float("inf")))
                continue
            errors.append(compare_arrays(key, ours[key], ref, rtol=tol))
        results.append(summarise(name, mode, errors))
    return results


def _optional(module: str, func: str) -> tuple[Callable | None, str]:
    try:
        mod = importlib.import_module(module)
    except Exception as err:  # noqa: BLE001
        return None, f"{module} not importable ({type(err).__name__}: {err})"
    fn = getattr(mod, func, None)
    if fn is None:
        return None, f"{module}.{func} missing"
    return fn, ""


def _selected(tag: str, rel: str, only) -> bool:
    return not only or tag in only or rel in only


def check_directory(path, rtol: float = 1e-4, gen_rtol: float = 1e-3, *, only: Iterable[str] | None = None,
                    strict: bool = False, echo: Callable[[str], None] | None = None) -> list[CheckResult]:
    """Run every check under ``path`` (layout in the module docstring); ``echo`` gets each line."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    only = set(only) if only else None
    results: list[CheckResult] = []

    def add(rs):
        for r in rs:
            results.append(r)
            if echo:
                echo(format_line(r))

    se = root / "dvae_se"
    if se.is_dir():
        for d in sorted(p for p in se.iterdir() if p.is_dir()):
            if _selected(d.name, f"dvae_se/{d.name}", only) and (d / "vectors.npz").is_file():
                add(check_dvae_se_dir(d, rtol=rtol, gen_rtol=gen_rtol))
    mix = root / "mixdvae"
    if mix.is_dir():
        dirs = [d for d in sorted(mix.iterdir()) if d.is_dir() and _selected(d.name, f"mixdvae/{d.name}", only)]
        if dirs:
            fn, why = _optional("vdvae_jax.reference_mixdvae", "check_model_dir")
            for d in dirs:
                add(fn(d) if fn else [_skip(f"mixdvae/{d.name}", why, strict)])
        traces = [f for f in sorted(mix.glob("vem_trace_*.npz")) if _selected(f.stem, f"mixdvae/{f.stem}", only)]
        if traces:
            fn, why = _optional("vdvae_jax.reference_mixdvae", "check_vem_trace")
            for f in traces:
                add(fn(f) if fn else [_skip(f"mixdvae/{f.stem}", why, strict)])
    vem = root / "se_vem"
    if vem.is_dir() and _selected("se_vem", "se_vem", only):
        fn, why = _optional("vdvae_jax.inference.se_vem_check", "check_se_vem_dir")
        add(fn(vem) if fn else [_skip("se_vem", why, strict)])
    return results


def format_line(r: CheckResult) -> str:
    if is_skip(r):
        return f"SKIP  {r.model:<16} {'-':<12} {r.failures[0] if r.failures else ''}"
    line = r.line()
    if not r.passed:
        line += "\n      " + "\n      ".join(r.failures[:8])
        if len(r.failures) > 8:
            line += f"\n      ... {len(r.failures) - 8} more"
    return line


# ----------------------------------------------------------------------------------------------
# Golden values (spec §7.5): posterior means fed back, T = 20, B = 1.


def golden_input(T: int = 20, F: int = 513) -> np.ndarray:
    t = np.arange(T)[:, None]
    f = np.arange(F)[None, :]
    return (0.01 + ((7 * t + 3 * f) % 50) / 10).astype(np.float32)[:, None, :]


def golden_values(model, params, *, use_pred: float = 1.0) -> dict[str, float]:
    """Σy, y[0,0,0:3], y[19,0,512], Σ z_mean, Σ z_logvar and the reference KL (sum) of §7.5."""
    from vdvae_jax.distributions import kl_gaussian

    x = jnp.asarray(golden_input())
    noise = {"z": jnp.zeros(x.shape[:-1] + (model.config.z_dim,)), "coin": jnp.zeros(x.shape[:-1])}
    kw = {"use_pred": use_pred} if model.name == "srnn_ss" else {}
    out = model.forward(params, x, noise, **kw)
    y = np.asarray(out.x_out.logvar)
    kl = kl_gaussian(out.q, out.p, mode="reference", var_eps=1e-10)
    return {"sum_y": float(y.sum()), "y000": tuple(float(v) for v in y[0, 0, :3]),
            "y_last": float(y[-1, 0, -1]), "sum_z_mean": float(np.sum(out.q.mean)),
            "sum_z_logvar": float(np.sum(out.q.logvar)), "kl": float(kl)}


def _golden(ckpt_root: Path) -> int:
    from vdvae_jax.models.published import load_published_model

    base = ckpt_root / "dvae_se" if (ckpt_root / "dvae_se").is_dir() else ckpt_root
    print(f"{'ckpt':<10} {'Σy':>11} {'y[0,0,0:3]':>26} {'y[19,0,512]':>12} {'Σz_mean':>10} "
          f"{'Σz_logvar':>11} {'KL':>10}")
    for d in sorted(p for p in base.iterdir() if p.is_dir()):
        model, params = load_published_model(d)
        g = golden_values(model, params)
        y0 = ", ".join(f"{v:.4f}" for v in g["y000"])
        print(f"{d.name:<10} {g['sum_y']:11.3f} {y0:>26} {g['y_last']:12.4f} {g['sum_z_mean']:10.4f} "
              f"{g['sum_z_logvar']:11.3f} {g['kl']:10.3f}")
    return 0


def _default_shared() -> Path:
    import os

    env = os.environ.get("VDVAE_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vdvae_jax.reference", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    chk = sub.add_parser("check", help="compare the JAX models with recorded reference vectors")
    chk.add_argument("dir", type=Path)
    chk.add_argument("--rtol", type=float, default=1e-4)
    chk.add_argument("--gen-rtol", type=float, default=1e-3)
    chk.add_argument("--only", nargs="+", default=None, metavar="TAG")
    chk.add_argument("--strict", action="store_true", help="count skipped checks as failures")
    gold = sub.add_parser("golden", help="print the spec §7.5 golden values of the published checkpoints")
    gold.add_argument("dir", type=Path, nargs="?", default=None)
    args = parser.parse_args(argv)
    if args.cmd == "golden":
        return _golden(args.dir or _default_shared() / "reference" / "checkpoints")
    try:
        results = check_directory(args.dir, args.rtol, args.gen_rtol, only=args.only, strict=args.strict,
                                  echo=lambda s: print(s, flush=True))
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not results:
        print("FAIL  no checks found", flush=True)
        return 1
    n_fail = sum(not r.passed for r in results)
    n_skip = sum(is_skip(r) for r in results)
    print(f"{len(results) - n_fail - (n_skip if not args.strict else 0)} passed, {n_fail} failed, "
          f"{n_skip} skipped")
    return 0 if n_fail == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
