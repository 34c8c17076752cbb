"""map-jax: multi-value alignment of language models (MAP) in JAX."""
