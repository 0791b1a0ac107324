"""Conformance checks against the MixDVAE reference vectors (``reference/mixdvae/``).

``python -m vdvae_jax.reference_mixdvae [REFERENCE_DIR]`` prints one line per model x mode.

* :func:`check_model_dir` checks one ``mixdvae/<tag>/`` folder (``weights.npz``, ``model.json``,
  ``vectors.npz``): the pre-training SRNN in modes ``tf``, ``ss_pred0``, ``ss_pred1`` and one VEM-time
  E-S/E-Z call (``vem``; SC-ASS also ``vem_init``), with the recorded noise.
* :func:`check_vem_trace` checks ``vem_trace_{mot,scass}.npz``, the whole 2-iteration algorithm
  (initialisation, E-W, E-S/E-Z, printed losses) through :mod:`vdvae_jax.inference.mixdvae`;
  :func:`check_all` runs both.

The reference's model outputs are batch-major (B, T, .) (SC-ASS input x is (B, F, T)) and its noise is
time-major (T, B, .); our functions are time-major, so layouts are converted only here. Every shape is
taken from the files. An array passes when ``max|ours - ref| <= rtol * max|ref|``.

Tolerances and precision. ``rtol`` is 1e-4 for teacher-forced outputs and ``RTOL_FEEDBACK`` = 1e-3 for the
modes that feed the model's own output back into its LSTM (``ss_pred1``, ``vem``, the traces): the
reference README measures float32 noise about 10x larger there. The checks run in **float64** by default
(weights and inputs are the float32 files, cast up): the CBF spectrograms reach 4e4, and the first layer
``mlp_x_h`` then cancels terms of 1e5 into tanh pre-activations of order 1, so a float32 port's result
depends on the matmul's summation order at the 1e-4 level, which the ``exp(y)`` feedback of ``ss_pred1``
amplifies to several percent. In float64 the remaining difference is the reference's own float32 noise
(at most 4.5e-4 relative, CBF ``ss_pred1``). ``dtype="float32"`` runs the float32 computation instead.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vdvae_jax.conformance import CheckResult, compare_arrays, summarise
from vdvae_jax.inference import mixdvae_source as ms
from vdvae_jax.inference.base import run
from vdvae_jax.models.base import loss_from_outputs
from vdvae_jax.models.srnn_mixdvae import (MOTSRNNConfig, config_from_ini, make_srnn_mot, make_srnn_scass,
                                           mixdvae_state_dict_to_params)

__all__ = ["RTOL", "load_model_dir", "check_model_dir", "check_vem_trace", "check_all", "main"]

RTOL = 1e-4
RTOL_FEEDBACK = 1e-3
FEEDBACK_MODES = ("ss_pred1", "vem")
SINGLE_MODES = {"tf": (False, 0.0), "ss_pred0": (True, 0.0), "ss_pred1": (True, 1.0)}


def _tm(a):
    """Batch-major (B, T, ...) -> time-major (T, B, ...)."""
    return jnp.swapaxes(jnp.asarray(a), 0, 1)


def _bm(a):
    return np.swapaxes(np.asarray(a), 0, 1)


def _cast(a, dtype):
    a = np.asarray(a)
    if np.issubdtype(a.dtype, np.complexfloating):
        return a.astype(np.complex128 if dtype == "float64" else np.complex64)
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(dtype)
    return a


def load_model_dir(path, dtype: str = "float32"):
    """``(config, params, vectors, meta)`` of one ``mixdvae/<tag>`` folder (config from model.json).

    ``params`` and ``vectors`` are numpy arrays cast to ``dtype`` (float32 or float64).
    """
    path = Path(path)
    meta = json.loads((path / "model.json").read_text())
    with np.load(path / "weights.npz") as w:
        params = mixdvae_state_dict_to_params({k: _cast(w[k], dtype) for k in w.files})
    with np.load(path / "vectors.npz") as v:
        vectors = {k: _cast(v[k], dtype) for k in v.files}
    return config_from_ini(meta["config_single"]), params, vectors, meta


def _builder(config):
    return make_srnn_mot if isinstance(config, MOTSRNNConfig) else make_srnn_scass


def _single_mode(config, params, vec, mode):
    ss, use_pred = SINGLE_MODES[mode]
    cfg = dataclasses.replace(config, scheduled_sampling=ss)
    model = _builder(cfg)(cfg)
    mot = isinstance(cfg, MOTSRNNConfig)
    x = _tm(vec["x"]) if mot else jnp.transpose(jnp.asarray(vec["x"]), (2, 0, 1))  # (T, B, F)
    noise = {"z": jnp.asarray(vec["eps_z"]), "coin": jnp.zeros(x.shape[:-1])}
    if mot and ss:
        noise["x"] = jnp.asarray(vec["eps_x"])
    beta = float(vec["beta"])
    out = model.forward(params, x, noise, use_pred=use_pred) if ss else model.forward(params, x, noise)
    terms = loss_from_outputs(cfg, x, out, beta)
    ours = {"z": out.z, "z_mean_inf": out.q.mean, "z_logvar_inf": out.q.logvar,
            "z_mean_prior": out.p.mean, "z_logvar_prior": out.p.logvar}
    ours = {k: _bm(v) for k, v in ours.items()}
    if mot:
        ours["x_gen_mean"] = _bm(out.x_out.mean)
        ours["x_gen_var"] = _bm(jnp.exp(out.x_out.logvar))
    else:
        ours["x_gen"] = _bm(jnp.exp(out.x_out.logvar))
    ours.update(loss_recon=terms.recon, loss_KLD=terms.kl, loss_tot=terms.loss)
    return ours


def _vem_mot(config, params, vec):
    phi_inv = np.einsum("btkii->btki", vec["vem/phi_inv"])
    res = ms.mot_source_update(
        params, config, _tm(vec["vem/x_init"]), _tm(vec["vem/eta"]), _tm(phi_inv), _tm(vec["vem/obs"]),
        jnp.asarray(vec["vem/frame0"]), {"z": jnp.asarray(vec["vem/eps_z"])}, beta=float(vec["beta"]))
    var = _bm(res.var)
    return {
        "x_mean_vem": _bm(res.mean),
        "x_var_vem": var[..., :, None] * np.eye(var.shape[-1], dtype=var.dtype),
        "x_mean_dec": _bm(res.dec.mean),
        "x_logvar_dec": _bm(res.dec.logvar),
        "z": _bm(res.z),
        "loss_recon": res.recon, "loss_KLD": res.kl, "loss_tot": res.loss,
    }


def _vem_scass(config, params, vec):
    mix = _tm(vec["vem/mix_stft"])                                  # (T, B, F) complex
    power = jnp.real(mix) ** 2 + jnp.imag(mix) ** 2
    init = ms.scass_vem_initialization(params, config, power, {"z": jnp.asarray(vec["vem/eps_z"])})
    s_power_init = _tm(vec["vem/s_power_init"])
    v_x = 0.03 * power
    res = ms.scass_source_update(
        params, config, s_power_init, 0.5, v_x, mix,
        {"z": jnp.asarray(vec["vem/eps_z_forward"]), "u_re": jnp.asarray(vec["vem/u_real"]),
         "u_im": jnp.asarray(vec["vem/u_imag"])},
        complex_noise="uniform", beta=float(vec["beta"]))
    vem = {
        "v_theta_s": _bm(res.v_theta_s), "v_phi_s": _bm(res.v_phi), "mu_phi_s": _bm(res.mu),
        "s_sampled": _bm(res.s), "s_sampled_power": _bm(res.s_power), "z": _bm(res.z),
        "loss_recon": res.recon, "loss_KLD": res.kl, "loss_tot": res.loss,
    }
    return {"s_power_init": _bm(init)}, vem


def _compare(tag, mode, ours, vec, prefix, rtol):
    errors = []
    for key in sorted(ours):
        ref_key = f"{prefix}/{key}"
        if ref_key in vec:
            errors.append(compare_arrays(ref_key, np.asarray(ours[key]), vec[ref_key], rtol=rtol))
    missing = [k for k in vec if k.startswith(prefix + "/") and k.split("/", 1)[1] not in ours
               and not k.split("/", 1)[1].startswith(("eps", "u_", "x_init", "eta", "phi_inv", "obs",
                                                      "frame0", "mix_stft", "s_power_init"))]
    res = summarise(tag, mode, errors)
    if missing:
        res = res._replace(passed=False, failures=res.failures + tuple(f"not compared: {k}" for k in missing))
    return res


def _rtol(mode, rtol, rtol_feedback):
    return rtol_feedback if mode in FEEDBACK_MODES else rtol


def check_model_dir(path, *, dtype: str = "float64", rtol: float = RTOL,
                    rtol_feedback: float = RTOL_FEEDBACK) -> list[CheckResult]:
    """Check one ``mixdvae/<tag>/`` folder: modes ``tf``, ``ss_pred0``, ``ss_pred1``, ``vem``
    (SC-ASS: also ``vem_init``). One :class:`CheckResult` per mode.

    The reference arrays are compared as stored (float32); ``dtype`` is the precision our computation
    runs in (see the module docstring); ``rtol_feedback`` applies to ``ss_pred1`` and ``vem``.
    """
    path = Path(path)
    tag = path.name
    with jax.enable_x64(dtype == "float64"):
        config, params, vec, _ = load_model_dir(path, dtype)
        _, _, ref, _ = load_model_dir(path, "float32")
        params = jax.tree.map(jnp.asarray, params)
        results = []
        for mode in SINGLE_MODES:
            ours = _single_mode(config, params, vec, mode)
            results.append(_compare(tag, mode, ours, ref, mode, _rtol(mode, rtol, rtol_feedback)))
        if isinstance(config, MOTSRNNConfig):
            results.append(_compare(tag, "vem", _vem_mot(config, params, vec), ref, "vem", rtol_feedback))
        else:
            init, vem = _vem_scass(config, params, vec)
            results.append(summarise(tag, "vem_init", [compare_arrays(
                "vem/s_power_init", init["s_power_init"], ref["vem/s_power_init"], rtol=rtol)]))
            results.append(_compare(tag, "vem", vem, ref, "vem", rtol_feedback))
    return results


PRINTED = ("loss_elbo", "loss_dvae", "loss_qw_qs", "loss_qw", "loss_qs")
PRINTED_ATOL = 5e-5   # the console shows tensor-valued losses with 4 decimals
RTOL_TRACE_E2E = 2e-2  # SC-ASS end to end, see check_vem_trace


def _full_diag(d):
    """(..., D) diagonal -> (..., D, D) matrix."""
    d = np.asarray(d)
    return d[..., :, None] * np.eye(d.shape[-1], dtype=d.dtype)


def _trace_mot(base, t, dtype):
    from vdvae_jax.inference import mixdvae as mv

    config, params, _, _ = load_model_dir(base / "mot", dtype)
    params = jax.tree.map(jnp.asarray, params)
    obs = jnp.swapaxes(jnp.asarray(t["obs"]), 0, 1)                     # (T, B, K, 4)
    T = obs.shape[0]
    n_init_iter = t["init_eps_z"].shape[1]
    chunk_len = T // t["init_eps_z"].shape[0]
    options = mv.MOTOptions.reference(init_iters=n_init_iter, init_chunk_len=chunk_len,
                                      kl_beta=float(_beta_of(base / "mot")))
    alg = mv.mot_vem(config, options)
    data = mv.mot_data(params, obs, num_sources=t["x_mean_init"].shape[0])
    state0 = alg.init({"z": jnp.asarray(t["init_eps_z"])}, data)
    _, info = jax.jit(lambda s, d: run(alg, {"z": jnp.asarray(t["it_eps_z"])}, s, d))(state0, data)
    init = {"Phi_init": _full_diag(np.swapaxes(state0.phi, 0, 1)),
            "Phi_inv_init": _full_diag(1.0 / np.swapaxes(np.asarray(state0.phi), 0, 1)),
            "x_mean_init": np.swapaxes(state0.mean, 1, 2),
            "x_var_init": _full_diag(np.swapaxes(state0.var, 1, 2))}
    iters = {"Eta_iter": np.swapaxes(info.eta, 2, 3), "x_mean_iter": np.swapaxes(info.mean, 2, 3),
             "x_var_iter": _full_diag(np.swapaxes(info.var, 2, 3))}
    return init, iters, info, {}


def _trace_scass(base, t, dtype):
    from vdvae_jax.inference import mixdvae as mv

    config, p_cbf, _, _ = load_model_dir(base / "scass_cbf", dtype)
    config_wsj, p_wsj, _, _ = load_model_dir(base / "scass_wsj", dtype)
    if config_wsj != config:
        raise ValueError("the two SC-ASS priors have different architectures")
    params = mv.stack_params([jax.tree.map(jnp.asarray, p_cbf), jax.tree.map(jnp.asarray, p_wsj)])
    mix = jnp.transpose(jnp.asarray(t["mix_stft"]), (2, 0, 1))           # (T, B, F)
    options = mv.SCASSOptions.reference(kl_beta=float(_beta_of(base / "scass_cbf")))
    alg = mv.scass_vem(config, options)
    data = mv.scass_data(params, mix)
    state0 = alg.init({"z": jnp.asarray(t["init_eps_z"])}, data)
    noise = {"z": jnp.asarray(t["it_eps_z"]), "u_re": jnp.asarray(t["it_u_real"]),
             "u_im": jnp.asarray(t["it_u_imag"])}
    iterate = jax.jit(lambda s, d: run(alg, noise, s, d))
    # iterations from the recorded initial power (isolates the loop from the init's float32 noise) ...
    recorded = alg.init({"z": jnp.asarray(t["init_eps_z"])}, data,
                        s_power=jnp.transpose(jnp.asarray(t["s_power_init"]), (2, 0, 1, 3)))
    _, info = iterate(recorded, data)
    # ... and end to end from our own initialisation
    _, info_e2e = iterate(state0, data)
    init = {"s_power_init": np.transpose(state0.s_power, (1, 2, 0, 3))}     # (S, B, T, F) as recorded
    iters = {"mu_phi_s_iter": np.transpose(info.mu, (0, 2, 3, 1, 4))}
    e2e = {"mu_phi_s_iter": np.transpose(info_e2e.mu, (0, 2, 3, 1, 4))}
    return init, iters, info, e2e


def _beta_of(model_dir):
    with np.load(Path(model_dir) / "vectors.npz") as v:
        return float(v["beta"])


def check_vem_trace(path, *, dtype: str = "float64", rtol: float = RTOL,
                    rtol_feedback: float = RTOL_FEEDBACK) -> list[CheckResult]:
    """Check a ``vem_trace_{mot,scass}.npz`` file: the whole reference VEM (initialisation, E-W, E-S/E-Z,
    2 iterations) with the recorded noise, run through :mod:`vdvae_jax.inference.mixdvae` with the
    reference options (:meth:`~vdvae_jax.inference.mixdvae.MOTOptions.reference`,
    :meth:`~vdvae_jax.inference.mixdvae.SCASSOptions.reference`). The model weights come from the
    ``mot`` / ``scass_cbf`` + ``scass_wsj`` folders beside the file.

    Three results per file: ``trace_init`` (MOT ``Phi_init``, ``Phi_inv_init``, ``x_mean_init``,
    ``x_var_init``; SC-ASS ``s_power_init``; ``rtol``), ``trace_iter`` (MOT ``Eta_iter``,
    ``x_mean_iter``, ``x_var_iter``; SC-ASS ``mu_phi_s_iter``; ``rtol_feedback``) and ``trace_loss``
    (the printed losses, ``rtol_feedback`` plus ``PRINTED_ATOL`` for the console's 4 decimals).

    SC-ASS: ``trace_iter`` and ``trace_loss`` start the iterations from the *recorded* ``s_power_init``;
    ``trace_e2e`` runs from our own initialisation and is held to the documented bound
    ``RTOL_TRACE_E2E`` = 2e-2 (measured 8.2e-3). Reason: the loop feeds the sampled power
    :math:`|\tilde s|^2` (up to ~1e4) back into the LSTM through ``mlp_x_h``, and is chaotic at the float32
    level: in float64, a random relative perturbation of 1e-6 of ``s_power_init`` moves ``mu_phi_s`` by up to
    0.37 (max |mu| 131) after 2 iterations, and our initial power differs from the reference's float32 one
    by 1.4e-5 relative (its own float32 rounding, see the module docstring). Our float32 run differs from
    our float64 run by up to 5.0 on the same trace. From the recorded init the gap is 4e-4 relative.
    """
    path = Path(path)
    base = path.parent
    kind = "mot" if "mot" in path.stem else "scass"
    tag = f"vem_trace_{kind}"
    with jax.enable_x64(dtype == "float64"):
        with np.load(path) as f:
            t = {k: _cast(f[k], dtype) for k in f.files}
            ref = {k: np.asarray(f[k]) for k in f.files}
        init, iters, info, e2e = (_trace_mot if kind == "mot" else _trace_scass)(base, t, dtype)
        results = [
            summarise(tag, "trace_init", [compare_arrays(k, v, ref[k], rtol=rtol) for k, v in init.items()]),
            summarise(tag, "trace_iter", [compare_arrays(k, v, ref[k], rtol=rtol_feedback)
                                          for k, v in iters.items()]),
            summarise(tag, "trace_loss", [compare_arrays(f"printed/{k}", np.asarray(getattr(info, k)),
                                                         ref[f"printed/{k}"], rtol=rtol_feedback,
                                                         atol=PRINTED_ATOL) for k in PRINTED]),
        ]
        if e2e:
            results.append(summarise(tag, "trace_e2e", [compare_arrays(k, v, ref[k], rtol=RTOL_TRACE_E2E)
                                                        for k, v in e2e.items()],
                                     note=f"documented bound rtol {RTOL_TRACE_E2E:g}: init float32 noise "
                                          "amplified by the sampled-power feedback"))
    return results


def check_all(root) -> list[CheckResult]:
    root = Path(root)
    base = root / "mixdvae" if (root / "mixdvae").is_dir() else root
    results = []
    for tag in sorted(p.name for p in base.iterdir() if (p / "vectors.npz").is_file()):
        results += check_model_dir(base / tag)
    for name in ("vem_trace_mot.npz", "vem_trace_scass.npz"):
        if (base / name).is_file():
            results += check_vem_trace(base / name)
    return results


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1].parent / "shared" / "reference"
    results = check_all(root)
    for r in results:
        print(r.line())
        for f in r.failures:
            print("      ", f)
    return 0 if results and all(r.passed for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
