r"""Rows per second of each built-in reward value on pilot rows, and MiniLM coherence against PyTorch.

  python -m benchmarks.rewards                       # 1,000 rows of the MAP authors' OPT pilot data
  python -m benchmarks.rewards --values=coherence --rows=1000

Each value is built (model load not timed), warmed up by a first pass over the rows (jit compiles every
shape they need; timed separately as "warm-up"), then timed over the same rows again. The reference for coherence is sentence-transformers when installed,
otherwise transformers' PyTorch `BertModel` + mean pooling + L2 on the very same all-MiniLM-L6-v2 weights
and the same rows (the output says which), with the same length-sorted batches of the same size, so the
comparison is of the forward passes, not of the batching. perplexity (SmolLM2-135M, ~58 tokens per row of
the reference data) is timed on --perplexity_rows rows because a full 1,000 takes minutes on 2 CPU cores; its
row also says how far it is from the limit: the useful FLOPs (every real token through the layers, every
response token through the vocabulary head) per second of its run, beside a jitted chain of the model's
weight matmuls at 1,024 rows measured in the same run, and the rows/s that peak would give.
"""

import json
import os
import time

from absl import app, flags, logging
import numpy as np

FLAGS = flags.FLAGS
REFERENCE = os.path.join(
  os.path.dirname(__file__), "..", "examples", "map_reference", "opt1.3b-Anthropic-harmless.json"
)
ALL = ["diversity", "length", "positiveness", "harmlessness", "coherence", "humor", "interesting", "perplexity"]


def define_flags():
  flags.DEFINE_list("values", ALL, "Values to time.")
  flags.DEFINE_integer("rows", 1000, "Pilot rows to score.")
  flags.DEFINE_integer("perplexity_rows", 200, "Rows for the perplexity value.")
  flags.DEFINE_integer("batch_size", 64, "Batch size of the MiniLM values and of the PyTorch reference.")
  flags.DEFINE_string("data", REFERENCE, "Pilot JSON/JSONL with prompt and generated (prompt + response).")


def pilot_rows(path, n):
  """(prompts, responses) of the first n rows; synthetic chat-like rows when the reference data is absent."""
  if os.path.isfile(path):
    with open(path) as f:
      rows = json.load(f) if path.endswith(".json") else [json.loads(line) for line in f]
    rows = rows[:n]
    prompts = [r["prompt"] for r in rows]
    return prompts, [r["generated"][len(r["prompt"]) :] for r in rows], path
  rng = np.random.default_rng(0)
  words = "the a cat dog sat ran happy sad tell me about why how what is good bad day night food trip".split()
  prompts = [" ".join(rng.choice(words, 12)) + "?" for _ in range(n)]
  return prompts, [" ".join(rng.choice(words, 40)) for _ in range(n)], "synthetic rows (reference data absent)"


def time_value(name, prompts, responses, batch_size):
  from map_jax.rewards import get_reward

  kw = {"batch_size": batch_size} if name in ("coherence", "humor", "interesting", "upbeat") else {}
  t = time.perf_counter()
  value = get_reward(name, **kw)
  load = time.perf_counter() - t
  t = time.perf_counter()
  value(prompts, responses)  # every shape the rows need compiles here, not in the timed pass
  warm = time.perf_counter() - t
  t = time.perf_counter()
  value(prompts, responses)
  run = time.perf_counter() - t
  value.close()
  return load, warm, run


def perplexity_roofline(prompts, responses, run_seconds, repeats: int = 3) -> str:
  """Useful GFLOP/s of a perplexity run against the same-shape matmul peak (Llama-family base models)."""
  from benchmarks.generate import matmul_flops_per_s, projection_shapes
  from map_jax.rewards import get_reward

  value = get_reward("perplexity")
  if not hasattr(value.config, "head_dim"):
    return "(roofline: Llama-family base models only)"
  p_ids, r_ids = value._ids(prompts, responses)
  shapes = projection_shapes(value.config)
  per_token, head = sum(2 * i * o for i, o in shapes[:-1]), 2 * shapes[-1][0] * shapes[-1][1]
  tokens, scored = sum(len(p) + len(r) for p, r in zip(p_ids, r_ids)), sum(len(r) for r in r_ids)
  useful = tokens * per_token + scored * head
  value.close()
  peak = matmul_flops_per_s(shapes, 1024, repeats)
  return (
    f"   <- {tokens} real tokens ({scored} scored): {useful / run_seconds / 1e9:.1f} useful GFLOP/s of "
    f"{peak / 1e9:.1f} for the same matmuls at 1,024 rows ({useful / run_seconds / peak:.0%}); at that peak "
    f"{len(prompts) / (useful / peak):.1f} rows/s"
  )


def torch_coherence(prompts, responses, batch_size):
  """Rows/s of the PyTorch reference for coherence; returns (label, seconds, cosines)."""
  import torch

  texts = list(prompts) + list(responses)
  try:
    from sentence_transformers import SentenceTransformer

    from map_jax.models.loading import builtin_path

    model = SentenceTransformer(os.path.dirname(builtin_path("all-minilm-l6-v2")), device="cpu")
    model.encode(texts[:batch_size], batch_size=batch_size)
    t = time.perf_counter()
    e = model.encode(texts, batch_size=batch_size, normalize_embeddings=True)
    secs, label = time.perf_counter() - t, "sentence-transformers (PyTorch)"
  except ImportError:
    from transformers import AutoTokenizer, BertModel

    from map_jax.models.loading import builtin_path

    d = os.path.dirname(builtin_path("all-minilm-l6-v2"))
    tok, model = AutoTokenizer.from_pretrained(d), BertModel.from_pretrained(d).eval()
    lengths = [len(i) for i in tok(texts, truncation=True, max_length=256)["input_ids"]]
    order = np.argsort(lengths, kind="stable")

    def run(idx):
      b = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=256, return_tensors="pt")
      with torch.inference_mode():
        h = model(**b).last_hidden_state
      m = b["attention_mask"][..., None].float()
      return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()

    run(order[:batch_size])
    e = np.zeros((len(texts), 384), np.float32)
    t = time.perf_counter()
    for s in range(0, len(texts), batch_size):
      idx = order[s : s + batch_size]
      e[idx] = run(idx)
    secs = time.perf_counter() - t
    label = (
      "transformers BertModel + mean pooling (PyTorch, sentence-transformers not installed), "
      f"{torch.get_num_threads()} threads"
    )
  n = len(prompts)
  return label, secs, np.sum(e[:n] * e[n:], -1)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
  prompts, responses, source = pilot_rows(FLAGS.data, FLAGS.rows)
  print(f"{len(prompts)} rows from {source}; {os.cpu_count()} CPU cores\n")
  print(f"{'value':>14} {'rows':>6} {'load s':>8} {'warm-up s':>10} {'run s':>8} {'rows/s':>10}")
  for name in FLAGS.values:
    n = min(FLAGS.perplexity_rows, len(prompts)) if name == "perplexity" else len(prompts)
    load, warm, run = time_value(name, prompts[:n], responses[:n], FLAGS.batch_size)
    note = perplexity_roofline(prompts[:n], responses[:n], run) if name == "perplexity" else ""
    print(f"{name:>14} {n:>6} {load:>8.2f} {warm:>10.2f} {run:>8.2f} {n / run:>10.1f}{note}", flush=True)
    if name == "coherence":
      from map_jax.rewards import get_reward

      label, secs, ref = torch_coherence(prompts, responses, FLAGS.batch_size)
      ours = get_reward("coherence", batch_size=FLAGS.batch_size)(prompts, responses)
      nonempty = np.array([r.strip() != "" for r in responses])
      err = np.abs(ours - ref)[nonempty].max()
      print(
        f"{'  reference':>14} {len(prompts):>6} {'':>8} {'':>10} {secs:>8.2f} {len(prompts) / secs:>10.1f}"
        f"   <- {label}; max |Δ cosine| vs map-jax {err:.1e}; map-jax/reference speed "
        f"{secs / run:.2f}x",
        flush=True,
      )


if __name__ == "__main__":
  define_flags()
  app.run(main)
