"""vdvae_jax: dynamical variational autoencoders (DVAEs) and their Bayesian inference in JAX."""

__version__ = "0.1.0"
