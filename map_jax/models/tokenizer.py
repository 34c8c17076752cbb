"""Tokenizers (transformers `AutoTokenizer`, also from GGUF), chat templates, and left-padded bucketed batches."""

from __future__ import annotations

import hashlib
import os
import shutil
from typing import Sequence

import numpy as np


def load_tokenizer(path: str, gguf_file: str | None = None):
  """`AutoTokenizer` for a local directory / hub id (or a GGUF file inside `path`), set up for decoding.

  Padding goes on the left, so that the last column of a batch is every prompt's last token; a tokenizer
  without a pad token pads with EOS (pad positions are masked out everywhere, the id never matters).
  """
  from transformers import AutoTokenizer

  try:
    if gguf_file:
      tok = _gguf_tokenizer(path, gguf_file)
    else:
      tok = AutoTokenizer.from_pretrained(path)
  except Exception as e:
    where = os.path.join(path, gguf_file) if gguf_file else path
    raise ValueError(f"{where}: cannot load tokenizer ({type(e).__name__}: {e})") from e
  tok.padding_side = "left"
  if tok.pad_token is None and tok.eos_token is not None:
    tok.pad_token = tok.eos_token
  return tok


def cache_dir() -> str:
  """Where map-jax caches derived files: $MAP_JAX_CACHE, else ~/.cache/map_jax."""
  return os.environ.get("MAP_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "map_jax")


def _gguf_tokenizer(path: str, gguf_file: str):
  """Tokenizer from a GGUF file; the conversion (~5 s) is cached as tokenizer.json, keyed by the file's stat."""
  from transformers import AutoTokenizer

  full = os.path.abspath(os.path.join(path, gguf_file))
  st = os.stat(full)
  key = hashlib.sha1(f"{full}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
  cached = os.path.join(cache_dir(), "tokenizers", f"{os.path.splitext(gguf_file)[0]}-{key}")
  if os.path.isfile(os.path.join(cached, "tokenizer.json")):
    return AutoTokenizer.from_pretrained(cached)
  tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file)
  try:
    tmp = f"{cached}.tmp{os.getpid()}"
    tok.save_pretrained(tmp)
    os.replace(tmp, cached)  # atomic, so a concurrent reader never sees half a directory
  except OSError:  # read-only home or a racing writer: the cache is only an optimisation
    shutil.rmtree(tmp, ignore_errors=True)
  return tok


def chat_prompt(tokenizer, prompt: str | Sequence[dict], system: str | None = None) -> str:
  """Format a user prompt (or a list of chat messages) with the tokenizer's chat template, ready to generate."""
  messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
  if system is not None:
    messages = [{"role": "system", "content": system}] + messages
  return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def bucket(n: int, minimum: int = 16) -> int:
  """Round a length up to the next bucket 16, 24, 32, 48, 64, 96, ... (powers of two and 1.5x them).

  jit compiles once per bucket, so buckets bound the number of compiles (two per doubling of length) while
  wasting at most a third of the padded compute (pure powers of two can waste half of a prefill).
  """
  b = max(1, int(minimum))
  while b < n:
    b = b * 3 // 2 if (b & (b - 1)) == 0 and b % 2 == 0 else (b // 3) * 4 if b % 3 == 0 else b * 2
  return b


def pad_id(tokenizer) -> int:
  """The id that pads batches: the tokenizer's pad token, else 0 (also with no tokenizer: ids given as text)."""
  pad = getattr(tokenizer, "pad_token_id", None)
  return 0 if pad is None else int(pad)


def pad_left(
  seqs: Sequence[Sequence[int]], pad_id: int, length: int | None = None, min_bucket: int = 16
) -> tuple[np.ndarray, np.ndarray]:
  """Left-pad token lists to one bucketed length: (tokens int32 [B, T], mask bool [B, T])."""
  longest = max((len(s) for s in seqs), default=1)
  T = length if length is not None else bucket(longest, min_bucket)
  if longest > T:
    raise ValueError(f"a sequence of {longest} tokens does not fit the length {T}")
  tokens = np.full((len(seqs), T), pad_id, np.int32)
  mask = np.zeros((len(seqs), T), bool)
  for i, s in enumerate(seqs):
    if len(s):
      tokens[i, T - len(s) :] = s
      mask[i, T - len(s) :] = True
  return tokens, mask


def pad_right(
  seqs: Sequence[Sequence[int]], pad_id: int, length: int | None = None, min_bucket: int = 16
) -> tuple[np.ndarray, np.ndarray]:
  """Right-pad token lists (continuations) to one bucketed length: (tokens [B, C], mask [B, C])."""
  longest = max((len(s) for s in seqs), default=1)
  C = length if length is not None else bucket(longest, min_bucket)
  tokens = np.full((len(seqs), C), pad_id, np.int32)
  mask = np.zeros((len(seqs), C), bool)
  for i, s in enumerate(seqs):
    tokens[i, : len(s)] = s
    mask[i, : len(s)] = True
  return tokens, mask


def pad_rows(arrays: Sequence[np.ndarray], rows: int) -> list[np.ndarray]:
  """Pad each array's first axis up to `rows` with copies of row 0 (copies, not zeros: a fully masked row
  could make attention produce NaN, and extra rows are dropped anyway)."""
  out = []
  for a in arrays:
    extra = rows - a.shape[0]
    out.append(a if extra <= 0 else np.concatenate([a, np.repeat(a[:1], extra, 0)]))
  return out


def encode(tokenizer, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
  """Token ids of each text (no padding); BOS is added iff the tokenizer is configured to add it."""
  return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]]
