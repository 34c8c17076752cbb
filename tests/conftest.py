"""Test-wide setup: importing map_jax first sets the CPU XLA flags it relies on."""

import map_jax  # noqa: F401  (sets XLA_FLAGS before any backend starts; see map_jax/__init__.py)
