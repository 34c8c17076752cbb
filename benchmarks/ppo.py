"""Throughput of one MAP-F PPO iteration (rollout, reward, scoring, update) against plain sampling in the same run.

    taskset -c 0 python -m benchmarks.ppo  # SmolLM2-135M on CPU, positiveness + diversity
    python -m benchmarks.ppo --model=llama-1b-random        # 1B Llama shape, random bf16 weights, accelerator
    python -m benchmarks.ppo --model=llama-tiny-random --repeats=1   # smoke test of that path on CPU

An iteration samples one response of exactly --new_tokens tokens (EOS does not stop rows) for each of --batch
prompts, scores them on the host, computes π_old / p0 log-probs, values and GAE (`make_batch`), and runs the
update (--ppo_epochs passes over --minibatches minibatches). tokens/s = batch · new_tokens / seconds, best of
--repeats after one warm-up (compile) iteration; the phases are reported as shares of the iteration.

Reference, measured in the same run: plain sampling of the same batch with the same model (`generate.sample`,
the rollout alone, i.e. what serving costs). iteration ÷ sampling tokens/s says what training costs on top of
generating. On an accelerator the update's model-FLOPs utilisation is printed too: 6 · params · tokens · epochs
(forward and backward of every prompt + response token per PPO pass) over the update's time and the device's
peak bf16 FLOP/s (goal: >= 30%).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import hardware
from benchmarks.hardware import RANDOM_MODELS
from map_jax import parallel
from map_jax.align import ppo
from map_jax.models import loading
from map_jax.models import tokenizer as tok_lib
from map_jax.models.llama import LlamaConfig

PROMPTS = [
  "Tell me something that made you laugh this week.",
  "What's your favourite way to spend a rainy afternoon?",
  "I just got back from a long trip and I'm exhausted.",
  "Do you have any plans for the weekend?",
  "What do you think about learning a new language as an adult?",
  "My cat keeps knocking things off the table.",
  "Any recommendations for a good book?",
  "How was your day?",
]


def _token_fraction(prompts, responses):
  return np.array([r.split().count("7") / max(1, len(r.split())) for r in responses])


_token_fraction.name = "frac7"


def setup(args):
  """(module, params, tokens, mask, prompts, values, lam, detokenize, pad_id) for the chosen model."""
  if args.model == "smollm2":
    cfg, params, tok = loading.load_model("smollm2-135m-instruct")
    prompts = (PROMPTS * args.batch)[: args.batch]
    ids = [p[-args.prompt_len :] for p in tok_lib.encode(tok, [tok_lib.chat_prompt(tok, p) for p in prompts])]
    tokens, mask = tok_lib.pad_left(ids, tok.pad_token_id, length=args.prompt_len)
    from map_jax.rewards import get_reward

    values = [get_reward("positiveness"), get_reward("diversity")]
    detok = lambda ids: tok.batch_decode(ids, skip_special_tokens=True)  # noqa: E731
    return cfg, params, tokens, mask, prompts, values, [1.0, 1.0], detok, tok.pad_token_id
  cfg = LlamaConfig(
    **RANDOM_MODELS[args.model], max_position_embeddings=4096, dtype=args.dtype, param_dtype="float32", eos_token_ids=()
  )
  module = cfg.module()
  params = jax.jit(lambda k: module.init(k, jnp.zeros((1, 1), jnp.int32))["params"])(jax.random.key(0))
  tokens = np.random.RandomState(0).randint(3, cfg.vocab_size, (args.batch, args.prompt_len)).astype(np.int32)
  detok = lambda ids: [" ".join(map(str, t)) for t in ids]  # noqa: E731
  return (cfg, params, tokens, np.ones_like(tokens, bool), ["x"] * args.batch, [_token_fraction], [1.0], detok, 0)


def best(fn, repeats):
  fn()  # compile / warm up
  runs = [fn() for _ in range(repeats)]
  return min(runs, key=lambda r: r[0])


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="smollm2", choices=["smollm2", *RANDOM_MODELS])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--prompt_len", type=int, default=64)
  p.add_argument("--new_tokens", type=int, default=32)
  p.add_argument("--ppo_epochs", type=int, default=2)
  p.add_argument("--minibatches", type=int, default=2)
  p.add_argument(
    "--kl_estimator",
    default="sample",
    choices=ppo.KL_ESTIMATORS,
    help="'exact' adds p0's log-probs over the vocabulary to scoring and a KL term to the update",
  )
  p.add_argument("--dtype", default=None, help="compute dtype of the random models (default: bf16 on GPU)")
  p.add_argument("--repeats", type=int, default=2)
  args = p.parse_args()
  on_cpu = jax.devices()[0].platform == "cpu"
  args.dtype = args.dtype or ("float32" if on_cpu else "bfloat16")
  print(
    f"jax {jax.__version__} on {jax.device_count()} x {jax.devices()[0].device_kind}, load average "
    f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
  )
  cfg, params, tokens, mask, prompts, values, lam, detok, pad_id = setup(args)
  module = cfg.module()
  n_params = sum(x.size for x in jax.tree.leaves(params))
  pcfg = ppo.PPOConfig(
    max_new_tokens=args.new_tokens,
    ppo_epochs=args.ppo_epochs,
    num_minibatches=args.minibatches,
    learning_rate=1e-6,
    kl_estimator=args.kl_estimator,
  )
  pcfg.validate(args.batch)
  mesh = parallel.make_mesh()
  state = ppo.compile_init(module, pcfg, mesh)(params, jax.random.key(0))
  ref = parallel.shard(
    jax.tree.map(jnp.copy, state.params["policy"]), ppo.state_shardings(module, pcfg, mesh).params["policy"]
  )
  n_tok = args.batch * args.new_tokens
  step = iter(range(10**6))

  def sampling():
    t = time.perf_counter()
    out = ppo.rollout(module, state, tokens, mask, jax.random.key(next(step)), pcfg, eos_ids=(), pad_id=pad_id)
    jax.block_until_ready(out.tokens)
    return (time.perf_counter() - t,)

  def iterate():
    nonlocal state
    res = ppo.iteration(
      module,
      state,
      ref,
      prompts,
      tokens,
      mask,
      values,
      lam,
      pcfg,
      mesh=mesh,
      step=next(step),
      detokenize=detok,
      eos_ids=(),
      pad_id=pad_id,
    )
    state = res.state
    m = res.metrics
    phases = (m["time_generate"], m["time_reward"], m["time_score"], m["time_update"])
    return (sum(phases), *phases)

  (t_sample,) = best(sampling, args.repeats)
  t_iter, t_gen, t_rew, t_score, t_upd = best(iterate, args.repeats)
  print(
    f"model {args.model}: {n_params / 1e6:.0f}M params, batch {args.batch}, prompt {args.prompt_len}, "
    f"new {args.new_tokens}, {args.ppo_epochs} PPO epochs x {args.minibatches} minibatches, "
    f"{args.kl_estimator} KL"
  )
  print(f"PPO iteration : {n_tok / t_iter:8.1f} tokens/s  ({t_iter:.2f} s)")
  for name, t in (("generate", t_gen), ("reward", t_rew), ("score", t_score), ("update", t_upd)):
    print(f"  {name:<12}: {t / t_iter:6.1%}  ({t:.2f} s)")
  print(f"sampling only : {n_tok / t_sample:8.1f} tokens/s  ({t_sample:.2f} s, reference)")
  print(f"ratio         : {t_sample / t_iter:8.2f}x of plain sampling throughput")
  peak = (hardware.nominal() or (None, None))[0]
  flops = 6 * n_params * args.batch * (args.prompt_len + args.new_tokens) * args.ppo_epochs
  print(
    f"update        : {flops / t_upd / 1e12:8.2f} TFLOP/s (6·params·tokens·epochs)"
    + (f" = {flops / t_upd / peak:.1%} MFU of {peak / 1e12:.0f} TFLOP/s bf16 peak" if peak else "")
  )


if __name__ == "__main__":
  main()
