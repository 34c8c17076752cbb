"""Tokenizers (transformers `AutoTokenizer`, also from GGUF), chat templates, and left-padded bucketed batches."""

from __future__ import annotations

import bisect
import hashlib
import os
import shutil
from typing import NamedTuple, Sequence

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


class Packed(NamedTuple):
  """Sequences packed into rows (`pack`).

  tokens:   [R, length] int32, right-padded with the pad id.
  segments: [R, length] int32, 1, 2, ... for a row's sequences in order, 0 on padding (what
            `layers.attend` and `layers.positions_from_mask` take for packed sequences).
  index:    [n] int64, the flat position (row * length + offset) of each sequence's first token.
  """

  tokens: np.ndarray
  segments: np.ndarray
  index: np.ndarray


def ragged_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
  """The positions starts[i], ..., starts[i] + lengths[i] - 1 of every run i, concatenated (int64)."""
  starts, lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
  return np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())


def pack(seqs: Sequence[Sequence[int]], length: int, pad: int = 0) -> Packed:
  """Pack sequences into as few rows of `length` tokens as best-fit decreasing finds: longest first, each
  into the fullest row that still has room (a sorted list of free spaces), so rows of any lengths share a
  forward pass with little padding. Every sequence must fit (1 <= len <= length)."""
  lens = np.array([len(q) for q in seqs], np.int64)
  if len(lens) and (lens.min() < 1 or lens.max() > length):
    bad = int(np.flatnonzero((lens < 1) | (lens > length))[0])
    raise ValueError(f"sequence {bad} has {lens[bad]} tokens; packing needs 1 to {length}")
  free: list[tuple[int, int]] = []  # (free tokens, row), sorted
  fill: list[int] = []
  where = np.zeros((len(lens), 2), np.int64)
  for i in np.argsort(-lens, kind="stable"):
    j = bisect.bisect_left(free, (int(lens[i]), -1))
    if j == len(free):
      row = len(fill)
      fill.append(0)
    else:
      row = free.pop(j)[1]
    where[i] = row, fill[row]
    fill[row] += int(lens[i])
    if fill[row] < length:
      bisect.insort(free, (length - fill[row], row))
  tokens = np.full((len(fill), length), pad, np.int32)
  segments = np.zeros((len(fill), length), np.int32)
  index = where[:, 0] * length + where[:, 1]
  flat = ragged_positions(index, lens)
  tokens.reshape(-1)[flat] = np.concatenate([np.asarray(q, np.int32) for q in seqs]) if len(seqs) else []
  # A row's sequences are numbered in order of their offsets: 1 + how many start before them in the row.
  order = np.lexsort((where[:, 1], where[:, 0]))
  seg = np.empty(len(lens), np.int32)
  first_of_row = np.r_[True, where[order[1:], 0] != where[order[:-1], 0]] if len(order) else np.zeros(0, bool)
  run = np.arange(len(order)) - np.maximum.accumulate(np.where(first_of_row, np.arange(len(order)), 0))
  seg[order] = run + 1
  segments.reshape(-1)[flat] = np.repeat(seg, lens)
  return Packed(tokens, segments, index)


def encode(tokenizer, texts: Sequence[str], add_special_tokens: bool = True) -> list[list[int]]:
  """Token ids of each text (no padding); BOS is added iff the tokenizer is configured to add it."""
  return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=add_special_tokens)["input_ids"]]
