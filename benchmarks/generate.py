"""Sampling throughput of map-jax's jit'd KV-cache decoder against transformers' `generate` in the same run.

    python -m benchmarks.generate                               # SmolLM2-135M on CPU, batch 16 and 1 (~5 min)
    taskset -c 0 python -m benchmarks.generate                  # the same pinned to one core
    python -m benchmarks.generate --model=llama2-7b-random      # Llama-2-7B shape, random bf16, accelerator
    python -m benchmarks.generate --model=llama-tiny-random --repeats=1   # smoke test of that path on CPU

SmolLM2: both sides sample the same prompts with top-k 50 for exactly --new_tokens tokens (EOS does not stop
rows), so tokens/s = batch * new_tokens / seconds; ours samples with the weights laid out once by
`map_jax.sampling.for_decoding`, as the pipeline does. After one warm-up (compile) call each, the two sides run
in alternating rounds (ours then theirs, then theirs then ours, ...): a shared VM's speed drifts by tens of
percent over minutes, which would otherwise land on whichever side ran later. Reported: each side's best
round, and the median over rounds of the per-round ratio. Ours is also split into prefill (a call with one
new token) and decode steps, each with its achieved FLOP/s beside a jitted matmul of the same shapes (every
projection of every layer and the vocabulary head at the same rows, the faster of x @ W and the weights-major
form the sampler uses on CPU) measured in the same run: the roofline share. The 7B mode has no PyTorch
reference; it reports decode tokens/s against the memory-bandwidth roofline (every decode step must read all
weights and the KV cache once).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import hardware
from benchmarks.hardware import RANDOM_MODELS
from map_jax import sampling as G
from map_jax.models import layers as L
from map_jax.models import loading
from map_jax.models import tokenizer as tok_lib
from map_jax.models.llama import LlamaConfig

PROMPTS = [
  "Write a short story about a robot learning to paint.",
  "Explain why the sky is blue.",
  "What are three tips for staying productive when working from home?",
  "Summarize the plot of Romeo and Juliet in two sentences.",
  "Give me a recipe for a quick vegetarian dinner.",
  "How do vaccines work?",
  "Translate 'good morning, how are you?' into French and Spanish.",
  "What is the difference between weather and climate?",
]


def projection_shapes(cfg) -> list[tuple[int, int]]:
  """(in, out) of every weight matmul of one token through a Llama: each layer's projections, then the head."""
  E, D, I = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
  layer = [(E, cfg.num_heads * D), (E, cfg.num_kv_heads * D), (E, cfg.num_kv_heads * D), (cfg.num_heads * D, E)]
  layer += [(E, I), (E, I), (I, E)]
  return layer * cfg.num_layers + [(E, cfg.vocab_size)]


def matmul_flops_per_s(shapes, rows: int, repeats: int) -> float:
  """FLOP/s of a jitted chain of x[rows, in] times W over `shapes` (distinct weights, as a forward reads), the
  faster of x @ W[in, out] and `layers.weights_major_product` with W stored [out, in] (the sampler's form)."""
  rng = np.random.default_rng(0)
  ws = [jnp.asarray(rng.standard_normal((i, o), np.float32) * 0.02) for i, o in shapes]
  xs = {i: jnp.asarray(rng.standard_normal((rows, i), np.float32)) for i, _ in shapes}
  plain = jax.jit(lambda ws, xs: [xs[w.shape[0]] @ w for w in ws])
  major = jax.jit(lambda ws, xs: [L.weights_major_product(xs[w.shape[1]], w) for w in ws])
  ws_t = [w.T for w in ws]  # a transposed copy
  seconds = min(
    hardware.best_seconds(lambda: plain(ws, xs), repeats), hardware.best_seconds(lambda: major(ws_t, xs), repeats)
  )
  return sum(2 * rows * i * o for i, o in shapes) / seconds


def bench_smollm2(args):
  cfg, params, tok = loading.load_model("smollm2-135m-instruct")
  # Weights laid out for decoding once, as the pipeline does before its batches (on CPU: split per layer).
  module, params = G.for_decoding(cfg.module(), params)
  hf = None
  if not args.no_reference:
    import torch
    from transformers import AutoModelForCausalLM

    path = loading.builtin_path("smollm2-135m-instruct")
    hf = AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    ).eval()
    print(f"reference: transformers with torch {torch.__version__}, {torch.get_num_threads()} threads")
  print(
    "| batch | map-jax tokens/s | transformers tokens/s | ratio (median of rounds) | prefill GFLOP/s (share) "
    "| decode GFLOP/s (share) |"
  )
  print("|---|---|---|---|---|---|")
  for batch in args.batches:
    bench_batch(args, batch, module, params, tok, hf)


def bench_batch(args, batch, module, params, tok, hf):
  cfg, N = module.config, args.new_tokens
  prompts = [tok_lib.chat_prompt(tok, p) for p in (PROMPTS * batch)[:batch]]
  tokens, mask = tok_lib.pad_left(tok_lib.encode(tok, prompts), tok.pad_token_id)
  keys = iter(jax.random.split(jax.random.key(0), 1000))

  def ours(n=N):
    return lambda: (
      G.sample(
        module,
        params,
        tokens,
        mask,
        next(keys),
        jnp.float32(1.0),
        max_new_tokens=n,
        top_k=args.top_k,
        eos_ids=(),
        pad_id=tok.pad_token_id,
      ).tokens
    )

  def timed(fn):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start

  t_ours, t_hf, ratios = [], [], []
  run_ours = ours()
  timed(run_ours)  # compile
  if hf is not None:
    import torch

    enc = tok(prompts, return_tensors="pt", padding=True)

    def theirs():
      with torch.no_grad():
        return hf.generate(
          **enc,
          do_sample=True,
          top_k=args.top_k,
          max_new_tokens=N,
          min_new_tokens=N,
          pad_token_id=tok.pad_token_id,
        )

    timed(theirs)  # warm-up
  for r in range(args.repeats):
    if hf is None:
      t_ours.append(timed(run_ours))
      continue
    pair = (run_ours, theirs) if r % 2 == 0 else (theirs, run_ours)
    a, b = timed(pair[0]), timed(pair[1])
    mine, ref = (a, b) if r % 2 == 0 else (b, a)
    t_ours.append(mine)
    t_hf.append(ref)
    ratios.append(ref / mine)
  # Prefill (one new token: the prompt's forward and one pick) and decode steps, with the same-shape matmuls.
  t_pre = hardware.best_seconds(ours(1), args.repeats)
  t_all = min(t_ours)
  B, T = tokens.shape
  shapes = projection_shapes(cfg)
  per_token = sum(2 * i * o for i, o in shapes[:-1])
  head = 2 * cfg.hidden_size * cfg.vocab_size
  pre_flops = B * T * per_token + B * head  # the vocabulary head runs on the last position only
  step_flops = B * (per_token + head)
  decode_s = (t_all - t_pre) / (N - 1)
  peak_pre = matmul_flops_per_s(shapes[:-1], B * T, args.repeats)
  peak_dec = matmul_flops_per_s(shapes, B, args.repeats)
  tok_s = B * N / t_all
  ref = f"{B * N / min(t_hf):.1f}" if t_hf else "-"
  ratio = f"{statistics.median(ratios):.2f}x" if ratios else "-"
  print(
    f"| {B} | {tok_s:.1f} | {ref} | {ratio} | {pre_flops / t_pre / 1e9:.1f} of {peak_pre / 1e9:.1f} "
    f"({pre_flops / t_pre / peak_pre:.0%}) | {step_flops / decode_s / 1e9:.1f} of {peak_dec / 1e9:.1f} "
    f"({step_flops / decode_s / peak_dec:.0%}) |",
    flush=True,
  )


def bench_random_llama(args):
  """Llama-shaped model with random bf16 weights: prefill and decode tokens/s vs the HBM roofline."""
  cfg = LlamaConfig(**RANDOM_MODELS[args.model], max_position_embeddings=4096, dtype="bfloat16", param_dtype="bfloat16")
  module = cfg.module()
  params = jax.jit(lambda k: module.init(k, jnp.zeros((1, 1), jnp.int32))["params"])(jax.random.key(0))
  n_params = sum(x.size for x in jax.tree.leaves(params))
  T = args.prompt_len
  rng = np.random.RandomState(0)
  tokens = rng.randint(3, cfg.vocab_size, (args.batch, T)).astype(np.int32)
  mask = np.ones_like(tokens, bool)
  key = jax.random.key(0)

  def run(n):
    return lambda: jax.block_until_ready(
      G.sample(
        module, params, tokens, mask, key, jnp.float32(1.0), max_new_tokens=n, top_k=args.top_k, eos_ids=(), pad_id=0
      ).tokens
    )

  t1 = hardware.best_seconds(run(1), args.repeats)  # prefill + one token
  tn = hardware.best_seconds(run(args.new_tokens), args.repeats)
  decode_s = (tn - t1) / (args.new_tokens - 1)
  kind = jax.devices()[0].device_kind
  bw = args.bandwidth_gbps or (hardware.nominal(kind) or (0.0, 0.0))[1] / 1e9
  kv_bytes = 2 * cfg.num_layers * args.batch * (T + args.new_tokens) * cfg.num_kv_heads * cfg.head_dim * 2
  step_bytes = n_params * 2 + kv_bytes / 2  # weights + on average half the final cache
  print(f"device {kind}: {n_params / 1e9:.2f}B params, batch {args.batch}, prompt {T}, new {args.new_tokens}")
  print(f"prefill      : {args.batch * T / t1:10.1f} tokens/s ({t1 * 1e3:.1f} ms incl. one decode step)")
  print(f"decode       : {args.batch / decode_s:10.1f} tokens/s ({decode_s * 1e3:.2f} ms/step)")
  if bw:
    roof_s = step_bytes / (bw * 1e9)
    print(
      f"roofline     : {args.batch / roof_s:10.1f} tokens/s at {bw:.0f} GB/s "
      f"-> {roof_s / decode_s:.0%} of the memory-bandwidth bound"
    )


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="smollm2", choices=["smollm2", *RANDOM_MODELS])
  p.add_argument("--batch", type=int, default=16, help="7B mode: batch")
  p.add_argument("--batches", type=lambda v: [int(x) for x in v.split(",")], default=[16, 1], help="SmolLM2 mode")
  p.add_argument("--new_tokens", type=int, default=48)
  p.add_argument("--top_k", type=int, default=50)
  p.add_argument("--prompt_len", type=int, default=128, help="7B mode: prompt tokens")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--bandwidth_gbps", type=float, default=None, help="7B mode: override the roofline bandwidth")
  p.add_argument("--no_reference", action="store_true", help="skip transformers")
  args = p.parse_args()
  # Both sides share the CPU with whatever else runs: the load average says how much to trust the numbers.
  print(
    f"jax {jax.__version__} on {jax.devices()[0].platform}, load average {os.getloadavg()[0]:.1f} "
    f"on {os.cpu_count()} cores"
  )
  (bench_smollm2 if args.model == "smollm2" else bench_random_llama)(args)


if __name__ == "__main__":
  main()
