"""Pilot sampling over 1, 2, 4, 8 devices (data parallelism): tokens/s and the scaling efficiency against one device.

    python -m benchmarks.sharded_generate                           # SmolLM2, 1/2/4/8 simulated CPU devices
    python -m benchmarks.sharded_generate --model=llama-tiny-random --devices=1,2 --repeats=1   # smoke test
    python -m benchmarks.sharded_generate --real --model=llama-1b-random   # the accelerators of this machine

Each device count runs the pilot set's sampling as the pipeline does (`map_jax.sampling.generate` with a
`data=n` mesh, the weights placed once, --rows prompt rows x --samples samples, --new_tokens new tokens, top-k
50): one warm-up (compile) call, then the best of --repeats. Simulated CPU devices
(`--xla_force_host_platform_device_count=n`, one process per count) share this machine's cores, so on CPU the
table shows the cost of the sharded program, not a speed-up; on real devices (`--real`, in one process, the
first n of `jax.devices()`) the efficiency column is the share of linear scaling (goal: 85%+). The reference
is the one-device row of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from benchmarks.generate import PROMPTS
from benchmarks.hardware import RANDOM_MODELS


def measure(args, n: int) -> dict:
  """tokens/s of one pilot batch on the first n devices (a data=n mesh; n=1: no mesh, as a one-device run)."""
  import jax

  from map_jax import parallel
  from map_jax.sampling import for_decoding, generate

  if args.model == "smollm2":
    from map_jax.models.loading import load_model

    cfg, params, tok = load_model("smollm2-135m-instruct")
    prompts, chat = [PROMPTS[i % len(PROMPTS)] for i in range(args.rows)], True
  else:
    from benchmarks.accelerator import model

    cfg, params = model(args.model, "bfloat16", "bfloat16")
    tok, chat = None, False
    prompts = [[3 + (7 * i + j) % (cfg.vocab_size - 3) for j in range(24)] for i in range(args.rows)]
  module, params = for_decoding(cfg.module(), params)
  mesh = parallel.make_mesh(data=n, fsdp=1, devices=jax.devices()[:n]) if n > 1 else None
  if mesh is not None:
    params = parallel.place_model(module, params, mesh)
  kw = dict(key=jax.random.key(0), max_new_tokens=args.new_tokens, top_k=50, chat=chat)
  kw.update(num_return_sequences=args.samples, eos_ids=())  # EOS does not stop rows: a fixed token count
  generate(module, params, tok, prompts, mesh=mesh, **kw)  # compile
  best = float("inf")
  for _ in range(args.repeats):
    t = time.perf_counter()
    generate(module, params, tok, prompts, mesh=mesh, **kw)
    best = min(best, time.perf_counter() - t)
  tokens = args.rows * args.samples * args.new_tokens
  return {"devices": n, "seconds": best, "tokens_per_s": tokens / best, "kind": jax.devices()[0].device_kind}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", default="smollm2", choices=["smollm2", *RANDOM_MODELS])
  p.add_argument("--devices", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2, 4, 8])
  p.add_argument("--rows", type=int, default=16, help="prompts per batch (a multiple of every device count)")
  p.add_argument("--samples", type=int, default=1, help="samples per prompt")
  p.add_argument("--new_tokens", type=int, default=32)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--real", action="store_true", help="this machine's devices, in this process")
  p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # one simulated count, JSON out
  args = p.parse_args()
  if args.worker:
    print(json.dumps(measure(args, args.worker)))
    return
  rows = []
  for n in args.devices:
    if args.real:
      rows.append(measure(args, n))
      continue
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
    argv = [sys.executable, "-m", "benchmarks.sharded_generate", f"--worker={n}"]
    argv += [f"--{k}={getattr(args, k)}" for k in ("model", "rows", "samples", "new_tokens", "repeats")]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
      sys.exit(f"{n} devices failed:\n{proc.stderr[-3000:]}")
    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
  base = rows[0]["tokens_per_s"] / rows[0]["devices"]
  where = "simulated CPU devices sharing" if not args.real else "devices of"
  print(
    f"{args.model}: {args.rows} prompts x {args.samples} samples x {args.new_tokens} new tokens; {where} "
    f"this machine ({rows[0]['kind']}, {os.cpu_count()} cores); the reference is the one-device row\n"
  )
  print("| devices | tokens/s | seconds | speed-up | scaling efficiency |")
  print("|---|---|---|---|---|")
  for r in rows:
    up = r["tokens_per_s"] / base
    print(f"| {r['devices']} | {r['tokens_per_s']:.1f} | {r['seconds']:.2f} | {up:.2f}x | {up / r['devices']:.0%} |")


if __name__ == "__main__":
  main()
