"""Sampling throughput of map-jax's jit'd KV-cache decoder against transformers' `generate` in the same run.

    python -m benchmarks.generate                               # SmolLM2-135M on CPU, vs transformers (~2 min)
    python -m benchmarks.generate --model=llama2-7b-random      # Llama-2-7B shape, random bf16, accelerator
    python -m benchmarks.generate --model=llama-tiny-random --repeats=1   # smoke test of that path on CPU

Both sides sample the same prompts with top-k 50 for exactly --new_tokens tokens (EOS does not stop rows), so
tokens/s = batch * new_tokens / seconds, best of --repeats after one warm-up (compile) run. The 7B mode has no
PyTorch reference; it reports decode tokens/s against the memory-bandwidth roofline (every decode step must
read all weights and the KV cache once).
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import hardware
from benchmarks.hardware import RANDOM_MODELS
from map_jax import sampling as G
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


def bench_smollm2(args):
  cfg, params, tok = loading.load_model("smollm2-135m-instruct")
  module = cfg.module()
  prompts = [tok_lib.chat_prompt(tok, p) for p in (PROMPTS * args.batch)[: args.batch]]
  ids = tok_lib.encode(tok, prompts)
  tokens, mask = tok_lib.pad_left(ids, tok.pad_token_id)
  n_tok = args.batch * args.new_tokens
  key = iter(jax.random.split(jax.random.key(0), 100))

  def ours():
    out = G.sample(
      module,
      params,
      tokens,
      mask,
      next(key),
      jnp.float32(1.0),
      max_new_tokens=args.new_tokens,
      top_k=args.top_k,
      eos_ids=(),
      pad_id=tok.pad_token_id,
    )
    jax.block_until_ready(out.tokens)

  t_ours = hardware.best_seconds(ours, args.repeats)
  print(f"map-jax      : {n_tok / t_ours:8.1f} tokens/s  ({t_ours:.2f} s for {args.batch} x {args.new_tokens})")
  if args.no_reference:
    return
  import torch
  from transformers import AutoModelForCausalLM

  path = loading.builtin_path("smollm2-135m-instruct")
  hf = AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
  ).eval()
  batch = tok(prompts, return_tensors="pt", padding=True)

  def theirs():
    with torch.no_grad():
      hf.generate(
        **batch,
        do_sample=True,
        top_k=args.top_k,
        max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens,
        pad_token_id=tok.pad_token_id,
      )

  t_hf = hardware.best_seconds(theirs, args.repeats)
  print(
    f"transformers : {n_tok / t_hf:8.1f} tokens/s  ({t_hf:.2f} s, torch {torch.__version__}, "
    f"{torch.get_num_threads()} threads)"
  )
  print(f"ratio        : {t_hf / t_ours:8.2f}x  (goal >= 1.5x)")


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
  p.add_argument("--batch", type=int, default=16)
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
