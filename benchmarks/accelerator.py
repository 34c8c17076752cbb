"""The prepared accelerator check: one table of what MAP at the paper's scale costs on the device at hand.

    python -m benchmarks.accelerator --out=accelerator.json     # a GPU/TPU: 7B and 1B shapes (≤ 8 min, one H200)
    python -m benchmarks.accelerator --tiny                     # the same code on CPU with tiny shapes (tested)

Rows (random weights of the Llama shapes in `benchmarks.hardware`; nothing is downloaded):

  sample 7B, batch 1 / 16   decode tokens/s of `map_jax.sampling.sample` (bf16 weights and cache, temperature 1,
                            --new_tokens after a --prompt_len prompt), as a share of the HBM roofline: each
                            decode step reads every weight once and the KV cache written so far (on average
                            half the final cache), so step time >= those bytes / bandwidth. Goal: >= 70% at
                            batch 1.
  PPO update 1B             one `map_jax.align.ppo.update` (one epoch, one minibatch) on a batch of --batch
                            rollouts of prompt_len + new_tokens tokens, float32 master weights, bf16 compute:
                            model-FLOPs utilisation 6·params·tokens / time / peak. Goal: >= 30%.
  PPO update 1B / 7B LoRA   the same with rank-16 adapters on every projection and a frozen bf16 base (the
                            reference p0 is the base: no second copy); model FLOPs 4·params·tokens (the forward
                            pass and the activations' gradients; the frozen weights get none).
  solver                    `map_jax.solve_dual` vmapped over --palettes palettes of the MAP authors' OPT-1.3B
                            pilot set (n = 2,312, m = 6), float32. Goal: >= 1,000,000 palettes/s.

Peaks: the device kind's nominal bf16 FLOP/s and HBM bandwidth when known (`hardware.NOMINAL`), else (a CPU)
a matmul and an elementwise pass measured in this run; both measured figures are printed either way. "memory"
is the compiled program's device footprint (arguments + outputs + temporaries − donated), from XLA's memory
analysis. Each row is timed best of --repeats after a warm-up (compile) run.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import hardware
from map_jax import parallel
from map_jax.align import ppo
from map_jax.core.dual import solve_dual
from map_jax.models.llama import LlamaConfig
from map_jax.sampling import sample

REFERENCE = os.path.join(
  os.path.dirname(__file__), "..", "examples", "map_reference", "opt1.3b-Anthropic-harmless.json"
)


def compile_once(jitted, *args, **kwargs):
  """(the compiled program, called with the dynamic arguments only; the device footprint XLA plans for one call:
  arguments + outputs + temporaries − donated buffers)."""
  compiled = jitted.lower(*args, **kwargs).compile()
  m = compiled.memory_analysis()
  if m is None:
    return compiled, float("nan")
  return compiled, float(
    m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
  )


def model(name: str, dtype: str, param_dtype: str) -> tuple[LlamaConfig, dict]:
  cfg = LlamaConfig(
    **hardware.RANDOM_MODELS[name], max_position_embeddings=4096, dtype=dtype, param_dtype=param_dtype, eos_token_ids=()
  )
  module = cfg.module()
  params = jax.jit(lambda k: nn.meta.unbox(module.init(k, jnp.zeros((1, 1), jnp.int32))["params"]))(jax.random.key(0))
  return cfg, params


def sampling_row(name: str, batch: int, args, bandwidth: float) -> dict:
  cfg, params = model(name, "bfloat16", "bfloat16")
  module = cfg.module()
  n_params = sum(x.size for x in jax.tree.leaves(params))
  T, N = args.prompt_len, args.new_tokens
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, cfg.vocab_size, (batch, T)), jnp.int32)
  mask = jnp.ones_like(tokens, bool)
  key, temperature = jax.random.key(0), jnp.float32(1.0)
  first, _ = compile_once(sample, module, params, tokens, mask, key, temperature, max_new_tokens=1, eos_ids=())
  whole, memory = compile_once(sample, module, params, tokens, mask, key, temperature, max_new_tokens=N, eos_ids=())
  t1 = hardware.best_seconds(lambda: first(params, tokens, mask, key, temperature).tokens, args.repeats)
  tn = hardware.best_seconds(lambda: whole(params, tokens, mask, key, temperature).tokens, args.repeats)
  step = (tn - t1) / (N - 1)
  cache_bytes = 2 * cfg.num_layers * batch * (T + N) * cfg.num_kv_heads * cfg.head_dim * 2
  roof = (n_params * 2 + cache_bytes / 2) / bandwidth
  return {
    "row": f"sample {name}, batch {batch}",
    "result": f"{batch / step:,.1f} tokens/s ({step * 1e3:.2f} ms/step)",
    "share": roof / step,
    "of": "HBM roofline",
    "memory": memory,
  }


def update_row(name: str, lora_rank: int, args, peak_flops: float) -> dict:
  lora = lora_rank > 0
  cfg, params = model(name, "bfloat16", "bfloat16" if lora else "float32")
  n_params = sum(x.size for x in jax.tree.leaves(params))
  pcfg = ppo.PPOConfig(max_new_tokens=args.new_tokens, ppo_epochs=1, num_minibatches=1, lora_rank=lora_rank)
  module = cfg.module(lora=pcfg.lora)
  mesh = parallel.make_mesh()
  base = (parallel.shard(params, ppo.base_shardings(module, mesh)),) if lora else ()
  state = ppo.compile_init(module, pcfg, mesh)(params, jax.random.key(0))
  if not lora:
    del params  # the state holds the policy now
  B, T, N = args.batch, args.prompt_len, args.new_tokens
  rng = np.random.default_rng(0)
  f32 = lambda shape: jnp.asarray(rng.normal(size=shape), jnp.float32)  # noqa: E731
  batch = ppo.Batch(
    jnp.asarray(rng.integers(3, cfg.vocab_size, (B, T)), jnp.int32),
    jnp.ones((B, T), bool),
    jnp.asarray(rng.integers(3, cfg.vocab_size, (B, N)), jnp.int32),
    jnp.ones((B, N), bool),
    -jnp.abs(f32((B, N))) - 5.0,
    f32((B, N)),
    f32((B, N)),
    f32((B, N)),
  )
  update, memory = compile_once(ppo.compile_update(module, pcfg, mesh), state, batch, jax.random.key(1), *base)
  times = []
  for i in range(args.repeats + 1):  # the first call warms up
    t = time.perf_counter()
    state, metrics = update(state, batch, jax.random.key(i), *base)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  seconds = min(times[1:])
  trained = sum(x.size for x in jax.tree.leaves(state.params["policy"]))
  flops = (4 if lora else 6) * n_params * B * (T + N)
  return {
    "row": f"PPO update {name}" + (f", LoRA r={lora_rank} ({trained / 1e6:.1f}M trained)" if lora else ""),
    "result": f"{seconds * 1e3:,.0f} ms, {flops / seconds / 1e12:.2f} TFLOP/s",
    "share": flops / seconds / peak_flops,
    "of": "peak FLOP/s (MFU)",
    "memory": memory,
  }


def solver_row(args) -> dict:
  if os.path.exists(REFERENCE) and not args.tiny:
    from map_jax.data.pilot import load_pilot

    R = np.asarray(load_pilot(REFERENCE)[0], np.float32)
  else:
    R = np.random.default_rng(0).normal(size=(500 if args.tiny else 2312, 6)).astype(np.float32)
  rng = np.random.default_rng(1)
  lo, hi = R.mean(0), np.quantile(R, 0.75, axis=0)
  palettes = jnp.asarray(lo + rng.uniform(size=(args.palettes, R.shape[1])) * (hi - lo), jnp.float32)
  rewards = jnp.asarray(R)
  solve, memory = compile_once(jax.jit(jax.vmap(lambda c: solve_dual(rewards, c).lam)), palettes)
  seconds = hardware.best_seconds(lambda: solve(palettes), args.repeats)
  return {
    "row": f"solver, {args.palettes:,} palettes (n = {R.shape[0]:,}, m = {R.shape[1]})",
    "result": f"{args.palettes / seconds:,.0f} palettes/s",
    "share": float("nan"),
    "of": "",
    "memory": memory,
  }


def _size(num_bytes: float) -> str:
  return f"{num_bytes / 2**30:.2f} GB" if num_bytes >= 2**30 else f"{num_bytes / 2**20:.1f} MB"


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tiny", action="store_true", help="tiny shapes (CPU): the code path, not the numbers")
  p.add_argument("--batch", type=int, default=None, help="PPO rollouts per update (default 16; tiny 2)")
  p.add_argument("--prompt_len", type=int, default=None, help="default 128 (tiny 8)")
  p.add_argument("--new_tokens", type=int, default=None, help="default 128 (tiny 8)")
  p.add_argument("--palettes", type=int, default=None, help="default 100,000 (tiny 256)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--rows", default="sample,update,lora,solver", help="which rows to run")
  p.add_argument("--out", default=None, help="also write the table as JSON here")
  args = p.parse_args()
  for field, full, tiny in (
    ("batch", 16, 2),
    ("prompt_len", 128, 8),
    ("new_tokens", 128, 8),
    ("palettes", 100_000, 256),
  ):
    if getattr(args, field) is None:
      setattr(args, field, tiny if args.tiny else full)
  big, small = ("llama-tiny-random",) * 2 if args.tiny else ("llama2-7b-random", "llama-1b-random")
  device = jax.devices()[0]
  measured_bw = hardware.measure_bandwidth(1 << (24 if args.tiny else 30))
  measured_flops = hardware.measure_matmul_flops(512 if args.tiny else 8192)
  flops, bandwidth = hardware.nominal(device.device_kind) or (measured_flops, measured_bw)
  print(
    f"jax {jax.__version__}, {jax.device_count()} x {device.device_kind} ({device.platform}); peaks used: "
    f"{flops / 1e12:.1f} TFLOP/s, {bandwidth / 1e9:.0f} GB/s "
    f"({'nominal' if hardware.nominal(device.device_kind) else 'measured'}); measured here: bf16 matmul "
    f"{measured_flops / 1e12:.1f} TFLOP/s, elementwise pass {measured_bw / 1e9:.0f} GB/s"
  )
  wanted = set(args.rows.split(","))
  rows = []
  if "sample" in wanted:
    rows += [sampling_row(big, b, args, bandwidth) for b in (1, 16)]
  if "update" in wanted:
    rows.append(update_row(small, 0, args, flops))
  if "lora" in wanted:
    rows += [update_row(name, 16, args, flops) for name in dict.fromkeys((small, big))]  # one when tiny
  if "solver" in wanted:
    rows.append(solver_row(args))
  print(f"\n| {'measurement':<56} | {'result':<34} | {'share':>6} | {'of':<18} | {'memory':>10} |")
  print(f"|{'-' * 58}|{'-' * 36}|{'-' * 8}|{'-' * 20}|{'-' * 12}|")
  for r in rows:
    share = "" if np.isnan(r["share"]) else f"{r['share']:.1%}"
    print(f"| {r['row']:<56} | {r['result']:<34} | {share:>6} | {r['of']:<18} | {_size(r['memory']):>10} |")
  stats = device.memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    print(f"\npeak device memory of the whole run: {stats['peak_bytes_in_use'] / 2**30:.1f} GB")
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"device": device.device_kind, "peak_flops": flops, "bandwidth": bandwidth, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
