"""What the benchmarks share about models and machines: random-weight model shapes, the nominal peaks of known
accelerators (for roofline and MFU figures), and in-run measurements of this machine's own peaks.

Nominal figures are the vendors' dense bf16 FLOP/s and HBM bandwidth. A device kind not listed (a CPU, a new
chip) gets the figures measured in the same run: `measure_bandwidth` (a jitted elementwise pass over a large
array) and `measure_matmul_flops` (a jitted square matmul).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

# Llama-architecture shapes with random weights (no checkpoint needed); "llama-tiny-random" runs the same code
# paths on CPU in seconds.
RANDOM_MODELS = {
  "llama2-7b-random": dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_layers=32,
    num_heads=32,
    num_kv_heads=32,
    head_dim=128,
  ),  # Llama-2-7B
  "llama-1b-random": dict(
    vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_layers=22, num_heads=32, num_kv_heads=4, head_dim=64
  ),  # TinyLlama-1.1B
  "llama-tiny-random": dict(
    vocab_size=512, hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32
  ),
}

# Device kind substring -> (dense bf16 FLOP/s, HBM bytes/s). The first match wins: list specific names first.
NOMINAL = {
  "H200": (989e12, 4.8e12),
  "H100 PCIe": (756e12, 2.0e12),
  "H100": (989e12, 3.35e12),
  "A100-SXM4-80GB": (312e12, 2.039e12),
  "A100": (312e12, 1.555e12),
  "L4": (121e12, 0.3e12),
  "TPU v5 lite": (197e12, 0.819e12),
  "TPU v5p": (459e12, 2.765e12),
  "TPU v4": (275e12, 1.2e12),
}


def nominal(kind: str | None = None) -> tuple[float, float] | None:
  """(peak bf16 FLOP/s, HBM bytes/s) of a device kind (default: the first device's), or None if unknown."""
  kind = kind or jax.devices()[0].device_kind
  return next((v for k, v in NOMINAL.items() if k in kind), None)


def best_seconds(fn, repeats: int) -> float:
  """Seconds of the fastest of `repeats` calls of fn (its result awaited), after one warm-up (compile) call."""
  jax.block_until_ready(fn())  # compile
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t)
  return best


def measure_bandwidth(num_bytes: int = 1 << 30, dtype=jnp.bfloat16, repeats: int = 5) -> float:
  """Bytes/s of a jitted x * 2 over an array of `num_bytes` (each element read once and written once)."""
  x = jnp.ones((num_bytes // jnp.dtype(dtype).itemsize,), dtype)
  f = jax.jit(lambda a: a * jnp.asarray(2, dtype))
  return 2 * num_bytes / best_seconds(lambda: f(x), repeats)


def measure_matmul_flops(n: int = 4096, dtype=jnp.bfloat16, repeats: int = 5) -> float:
  """FLOP/s of a jitted [n, n] @ [n, n] matmul (2n³ flops)."""
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  return 2 * n**3 / best_seconds(lambda: f(a), repeats)
