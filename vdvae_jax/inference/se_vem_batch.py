"""Batched SE-VEM: many utterances of different lengths through one compiled program.

Each utterance :math:`u` keeps its own SE-VEM problem (its STFT :math:`X_u`, NMF factors
:math:`W_u, H_u`, gains :math:`g_u`, encoder fine-tuned by its own Adam state, its own key):

.. math::
    (\\hat S_u, \\hat B_u) = \\mathrm{SEVEM}(X_u, \\mathrm{mask}_u, \\mathrm{key}_u), \\qquad u = 1..U,

computed as ``jax.vmap`` of :func:`vdvae_jax.inference.se_vem.enhance` over stacked, end-padded STFTs
``X (U, N, F)`` with frame masks ``mask (U, N)`` and keys ``(U,)``. The prior's parameters enter
unbatched: ``vmap`` batches the trainable encoder layers (and their Adam state) as soon as the first
E-step updates them, i.e. every utterance gets its own encoder copy, while the frozen decoder layers
stay shared, so their matrix products run once on all utterances' frames. Because padding is exact
(masked frames do not reach valid ones, see :mod:`~vdvae_jax.inference.se_vem`), utterance ``u`` of a
batch gives the same result as ``se_vem.enhance(model, params, X[u], keys[u], config, mask[u])``.

**Chunks.** With per-utterance encoder copies every recurrent step of the encoder becomes a batched
matrix-*vector* product (one 128 x 512 ``W_hh`` per utterance and step, plus a per-utterance weight
gradient accumulated at every step of the backward scans). XLA on CPU runs those slower per utterance
than the unbatched program (compare ``python benchmarks/bench_vem.py --chunk all`` with ``--chunk 1``).
``chunk`` therefore picks how many utterances are vmapped together inside a ``lax.map``
over the batch: ``"auto"`` is 1 (a loop inside one compiled program) on CPU and all of them on
accelerators.

:func:`enhance_waveforms` is the host driver for a list of waveforms: the pre-processing of
:func:`vdvae_jax.enhance.enhance` (validation, peak normalisation, zero-padded sine-window STFT), frame
counts rounded up to a multiple of ``bucket``, utterances grouped by that length and cut into batches
whose size is a power of two (at most ``batch_size``), so a folder of mixed lengths costs one
compilation per (bucket length, batch size) pair.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from vdvae_jax.inference.base import resolve_devices, run
from vdvae_jax.inference.se_vem import VB_SETTINGS, SEVEMConfig, SEVEMData, make_se_vem, wiener_filter

__all__ = ["resolve_chunk", "batch_fn", "enhance_stft_batch", "enhance_waveforms"]


def resolve_chunk(chunk="auto"):
    """``"auto"``: 1 on CPU (see the module docstring), None (all utterances vmapped) elsewhere."""
    if chunk == "auto":
        return 1 if jax.default_backend() == "cpu" else None
    if chunk is not None and (not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be 'auto', None or an int >= 1, got {chunk!r}")
    return chunk


def batch_fn(model, config: SEVEMConfig = VB_SETTINGS, chunk: int | None = None):
    """The pure, unjitted batched enhancer ``(params, X (U,N,F), mask (U,N), keys (U,)) ->
    (S_hat, B_hat)`` (both (U, N, F) complex; masked frames are 0).

    ``chunk``: None vmaps all U utterances at once; an int ``C`` runs ``lax.map`` over groups of C
    vmapped utterances (``batch_size=C``; ``C = 1`` is a loop over utterances inside the program).
    """
    chunk = resolve_chunk(chunk)
    alg = make_se_vem(model, config)

    def one(params, X, mask, key):
        data = SEVEMData.from_stft(X, mask)
        k_init, k_run, k_wf = jax.random.split(key, 3)  # as se_vem.enhance
        state = alg.init(k_init, params, data)
        state, _ = run(alg, k_run, state, data, config.n_iter)
        out = wiener_filter(model, config, k_wf, state, data, X)
        return out.speech, out.noise

    if chunk is None:
        return jax.vmap(one, in_axes=(None, 0, 0, 0))

    def mapped(params, X, mask, keys):
        return jax.lax.map(lambda a: one(params, *a), (X, mask, keys), batch_size=chunk)

    return mapped


@functools.lru_cache(maxsize=16)
def _runner(model, config: SEVEMConfig, chunk: int | None, devices: tuple = ()):
    """``jax.jit(batch_fn(model, config, chunk))``, one per (model, config, chunk, devices); traced once per
    (U, N). With several ``devices`` the utterance axis is split over them (``jax.shard_map``): each
    device runs ``batch_fn`` on its U / len(devices) utterances, all devices at once."""
    fn = batch_fn(model, config, chunk)
    if len(devices) > 1:
        mesh = jax.sharding.Mesh(np.asarray(devices), ("utt",))
        utt = jax.sharding.PartitionSpec("utt")
        fn = jax.shard_map(fn, mesh=mesh, in_specs=(jax.sharding.PartitionSpec(), utt, utt, utt),
                           out_specs=utt, check_vma=False)
    return jax.jit(fn)


def _check_config(config):
    if not isinstance(config, SEVEMConfig):
        raise TypeError(f"batched enhancement runs the SE-VEM of an SEVEMConfig (e.g. "
                        f"vdvae_jax.enhance.PRESETS['vb']), got {type(config).__name__}")


def _check_batch(X, mask, keys, x_dim: int):
    if X.ndim != 3:
        raise ValueError(f"X must be (U, N, F) complex STFTs, got shape {X.shape}")
    if not jnp.iscomplexobj(X):
        raise TypeError(f"X must be complex (an STFT), got dtype {X.dtype}")
    u, n, f = X.shape
    if f != x_dim:
        raise ValueError(f"X has {f} frequency bins, the prior models {x_dim}")
    if mask.shape != (u, n):
        raise ValueError(f"mask must be (U, N) = {(u, n)}, got {mask.shape}")
    if not (isinstance(keys, jax.Array) and jnp.issubdtype(keys.dtype, jax.dtypes.prng_key)):
        raise TypeError("keys must be typed PRNG keys, e.g. jax.random.split(jax.random.key(0), U)")
    if keys.shape != (u,):
        raise ValueError(f"keys must have shape (U,) = ({u},), got {keys.shape}")


def enhance_stft_batch(model, params, X, mask, keys, config: SEVEMConfig = VB_SETTINGS, *,
                       chunk="auto", devices=None):
    """SE-VEM + Wiener filter on a batch of end-padded STFTs.

    Args:
      model, params: the DVAE speech prior.
      X: time-major complex STFTs (U, N, F), each normalised as for ``se_vem.enhance`` and zero-padded
        at the end to the common N.
      mask: (U, N) valid frames (bool or 0/1).
      keys: (U,) typed PRNG keys, one per utterance.
      config: SE-VEM settings (``record`` is ignored).
      chunk: utterances vmapped together (see :func:`batch_fn`); ``"auto"``: 1 on CPU, all elsewhere.
      devices: ``None`` (the default device), an int ``n`` (the first ``n`` local devices) or a list of
        devices: the U utterances (U divisible by their number) are split over them and enhanced at once
        (on a CPU, one device per core: ``jax.config.update("jax_num_cpu_devices", n)`` before JAX
        starts). Utterance ``u`` still uses ``keys[u]``, so the result is the one-device result.

    Returns:
      ``(S_hat, B_hat)``, (U, N, F) complex speech and noise estimates (0 on masked frames).
    """
    _check_config(config)
    X = jnp.asarray(X)
    mask = jnp.asarray(mask)
    _check_batch(X, mask, keys, model.config.x_dim)
    devs = resolve_devices(devices)
    if len(devs) > 1 and X.shape[0] % len(devs):
        raise ValueError(f"{X.shape[0]} utterances cannot be split evenly over {len(devs)} devices")
    run_batch = _runner(model, dataclasses.replace(config, record=False), resolve_chunk(chunk), devs)
    return run_batch(params, X, mask.astype(bool), keys)


def _next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


def enhance_waveforms(waves, sr: int, prior, config: SEVEMConfig = VB_SETTINGS, key=None, *,
                      bucket: int = 64, batch_size: int = 16, chunk="auto", devices=None,
                      return_noise: bool = False, progress: bool = True):
    """Enhance a list of noisy waveforms with batched SE-VEM.

    Utterance ``i`` uses the key ``jax.random.split(key, len(waves))[i]`` whatever the grouping, so
    its result equals ``vdvae_jax.enhance.enhance(waves[i], sr, prior, config=config, key=keys[i],
    bucket=bucket)`` up to float rounding.

    Args:
      waves: list of 1-D float waveforms (any lengths).
      sr: their sample rate (16 kHz).
      prior: ``(model, params)`` or a path (see :func:`vdvae_jax.enhance.load_prior`).
      config: SE-VEM settings.
      key: typed PRNG key (default ``jax.random.key(0)``).
      bucket: frame counts are rounded up to a multiple of this.
      batch_size: most utterances per compiled call (batches are padded to a power of two by
        repeating an utterance, whose extra result is dropped).
      chunk, devices: see :func:`enhance_stft_batch` (batches are padded to a multiple of the number
        of devices).
      return_noise: also return the noise estimates.
      progress: show a tqdm bar (utterances done).

    Returns:
      The enhanced waveforms in input order (same lengths and scales), or ``(speech, noise)`` lists.
    """
    from tqdm.auto import tqdm

    from vdvae_jax.data.stft import istft_librosa
    from vdvae_jax.enhance import STFT, analyse, check_bins, load_prior
    from vdvae_jax.evaluation import bucket_length

    _check_config(config)
    if bucket < 1 or batch_size < 1:
        raise ValueError(f"bucket and batch_size must be >= 1, got {bucket}, {batch_size}")
    waves = list(waves)
    if not waves:
        return ([], []) if return_noise else []
    model, params = load_prior(prior)
    check_bins(model)
    f = STFT.n_fft // 2 + 1
    key = jax.random.key(0) if key is None else key
    keys = jax.random.split(key, len(waves))
    n_dev = max(len(resolve_devices(devices)), 1)

    xs, peaks, stfts = zip(*(analyse(w, sr, f"noisy waveform {i}") for i, w in enumerate(waves)))

    groups: dict[int, list[int]] = {}
    for i, X in enumerate(stfts):  # X: (N_i, F)
        groups.setdefault(bucket_length(X.shape[0], bucket), []).append(i)

    speech, noise = [None] * len(waves), [None] * len(waves)
    with tqdm(total=len(waves), desc="enhance", unit="utt", disable=not progress) as bar:
        for n_pad, idx in sorted(groups.items()):
            for start in range(0, len(idx), batch_size):
                part = idx[start:start + batch_size]
                u = min(batch_size, _next_pow2(len(part)))
                u = -(-u // n_dev) * n_dev
                rows = part + [part[0]] * (u - len(part))
                X = np.zeros((u, n_pad, f), np.complex64)
                mask = np.zeros((u, n_pad), bool)
                for r, i in enumerate(rows):
                    X[r, :stfts[i].shape[0]] = stfts[i]
                    mask[r, :stfts[i].shape[0]] = True
                S, B = enhance_stft_batch(model, params, X, mask, keys[np.asarray(rows)], config,
                                          chunk=chunk, devices=devices)
                S, B = np.asarray(S), np.asarray(B)
                for r, i in enumerate(part):
                    n = stfts[i].shape[0]
                    speech[i] = istft_librosa(S[r, :n], STFT, length=len(xs[i])) * peaks[i]
                    if return_noise:
                        noise[i] = istft_librosa(B[r, :n], STFT, length=len(xs[i])) * peaks[i]
                bar.update(len(part))
    return (speech, noise) if return_noise else speech
