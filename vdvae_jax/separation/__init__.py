"""Single-channel audio source separation (speech + flute) for MixDVAE: data, priors, baselines, metrics.

Modules (one concept each):

* :mod:`~vdvae_jax.separation.flute` — procedural dizi-like flute melodies (additive model), cached;
* :mod:`~vdvae_jax.separation.mixtures` — speech + flute mixtures at a chosen speech-to-music ratio,
  STFTs, single-source training spectrograms (source index 0 = flute, 1 = speech, as the reference);
* :mod:`~vdvae_jax.separation.priors` — per-source SC-ASS SRNN pretraining, cached;
* :mod:`~vdvae_jax.separation.vem` — MixDVAE separation through :mod:`vdvae_jax.inference.mixdvae`;
* :mod:`~vdvae_jax.separation.baselines` — supervised IS-NMF (vanilla / inverse-gamma Markov chain
  smoothness) with Wiener masks, ideal-binary-mask oracle;
* :mod:`~vdvae_jax.separation.metrics` — SI-SDR, wide-band PESQ, RMSE per source.

The experiment is ``experiments/mixdvae_scass.py``. Submodules are imported on demand (no heavy imports
here).
"""
