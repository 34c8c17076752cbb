"""Batched KV-cache sampling and log-probability scoring for the Flax decoders, compiled whole with jit."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

from absl import logging
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from map_jax import parallel
from map_jax.models import tokenizer as tok_lib
from map_jax.models.layers import KVCache, positions_from_mask, unstack_layers, weights_major_params


class SampleOutput(NamedTuple):
  """Arrays from `sample`; rows are prompt-major: row r continues prompt r // num_return_sequences.

  tokens:      [B*k, N] int32 sampled tokens, `pad_id` after a row's EOS.
  logprobs:    [B*k, N] float32 log p(token | prefix) under the model itself (temperature 1, no top-k/p),
               the quantity MAP needs for KL terms and perplexity rewards; 0 after the end.
  sample_logprobs: [B*k, N] log-probability under the distribution actually sampled from (after
               temperature / top-k / top-p); 0 for greedy decoding and after the end.
  lengths:     [B*k] number of generated tokens, EOS included.
  """

  tokens: jax.Array
  logprobs: jax.Array
  sample_logprobs: jax.Array
  lengths: jax.Array


def token_logprob(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """log softmax(logits)[..., token] for logits [..., V] and int tokens [...], in float32 or wider.

  The log-sum-exp's sum over the vocabulary is a product with a vector of ones: over SmolLM2's 49,152 logits
  XLA:CPU's reduction costs half as much again as the head's matmul that made them (512 positions: 205 ms
  for the head, 310 with `jax.nn.logsumexp`, 225 this way), and no [..., V] array of log-probs is formed.
  """
  x = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  top = jax.lax.stop_gradient(jnp.max(x, axis=-1, keepdims=True))
  lse = jnp.log(jnp.exp(x - top) @ jnp.ones(x.shape[-1], x.dtype)) + top[..., 0]
  return jnp.take_along_axis(x, tokens[..., None], axis=-1)[..., 0] - lse


def _choose(logits, key, temperature, top_k, top_p):
  """Pick one token per row from float32 logits [R, V]; returns (token, model logprob, sampling logprob)."""
  if top_k is not None:
    vals, idx = jax.lax.top_k(logits, top_k)  # sorted descending, so the greedy pick is column 0
  elif top_p is not None:
    idx = jnp.argsort(-logits, axis=-1)
    vals = jnp.take_along_axis(logits, idx, axis=-1)
  else:
    vals, idx = logits, None
  scaled = vals / jnp.maximum(temperature, 1e-6)
  if top_p is not None:
    probs = jax.nn.softmax(scaled, axis=-1)
    # Keep the smallest prefix of the sorted tokens whose mass reaches top_p (always the first token).
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    scaled = jnp.where(keep, scaled, -jnp.inf)
  pick = jnp.where(temperature > 0, jax.random.categorical(key, scaled, axis=-1), jnp.argmax(vals, axis=-1))
  sample_lp = token_logprob(scaled, pick)
  sample_lp = jnp.where(temperature > 0, sample_lp, 0.0)
  token = pick if idx is None else jnp.take_along_axis(idx, pick[:, None], axis=-1)[:, 0]
  model_lp = token_logprob(logits, token)
  return token.astype(jnp.int32), model_lp, sample_lp


@functools.partial(
  jax.jit,
  static_argnames=(
    "module",
    "max_new_tokens",
    "top_k",
    "top_p",
    "num_return_sequences",
    "eos_ids",
    "pad_id",
    "unroll_layers",
  ),
)
def sample(
  module: nn.Module,
  params,
  prompt_tokens: jax.Array,
  prompt_mask: jax.Array,
  key: jax.Array,
  temperature: float | jax.Array = 1.0,
  *,
  max_new_tokens: int,
  top_k: int | None = None,
  top_p: float | None = None,
  num_return_sequences: int = 1,
  eos_ids: tuple[int, ...] = (),
  pad_id: int = 0,
  unroll_layers: bool | None = None,
) -> SampleOutput:
  """Sample continuations of left-padded prompts with a preallocated KV cache; one jit for the whole loop.

  The prompt bucket [B, T] is prefilled once; its cache is then repeated `num_return_sequences` times and
  decoded with a `lax.while_loop` that writes one token per step at cache slot T + i, stopping early once
  every row has emitted one of `eos_ids`. Compiles once per (module, B, T, static options); `temperature`
  is traced (0 means greedy). Deterministic given `key`. Runs as one SPMD program over the shardings its
  inputs carry (`generate(mesh=...)` places params and rows; PPO's rollout passes its sharded state).

  Args:
    module: a decoder module (`Llama`, `GPT2`, `OPT`); its config gives the cache shape.
    params: its params (boxed or plain).
    prompt_tokens, prompt_mask: [B, T] left-padded prompts and their real-token mask.
    key: PRNG key; step i uses `fold_in(key, i)`.
    temperature: softmax temperature; 0 for greedy.
    max_new_tokens: N, the decode budget.
    top_k, top_p: optional truncation of the sampling distribution (top-k first, then nucleus).
    num_return_sequences: k samples per prompt.
    eos_ids: tokens that end a row; pad_id fills the rest of it.
    unroll_layers: run the layers as a Python loop over per-layer weights and KV buffers
      (`layers.UnrolledLayers`) instead of a scan over the stacked ones, which on CPU copies every layer's
      weights and cache on every step; on CPU its projections are also weights-major (`for_decoding`).
      None: on CPU only. The same computation either way, up to float rounding (tested token for token). A
      module that is unrolled already (`for_decoding`) is used as it is; otherwise the params are laid out
      inside this call, once before the loop (slower than `for_decoding`'s layout outside it).

  Returns:
    `SampleOutput` with B*k rows.
  """
  chex.assert_rank(prompt_tokens, 2)
  chex.assert_equal_shape([prompt_tokens, prompt_mask])
  B, T = prompt_tokens.shape
  N, k, cfg = max_new_tokens, num_return_sequences, module.config
  logging.info("compiling sample: batch=%d prompt_len=%d new=%d k=%d", B, T, N, k)  # runs at trace time only
  module, params = for_decoding(module, params, unroll_layers)  # laid out here unless the caller did
  apply = functools.partial(module.apply, {"params": params}, last_only=True)
  cache = KVCache.zeros(
    cfg.num_layers, B, T + N, cfg.num_kv_heads, cfg.head_dim, jnp.dtype(cfg.dtype), per_layer=module.unroll
  )
  kv_mask = jnp.zeros((B, T + N), bool).at[:, :T].set(prompt_mask.astype(bool))
  out = apply(prompt_tokens, positions_from_mask(prompt_mask), kv_mask, cache, 0)
  rep = lambda x, axis=0: jnp.repeat(x, k, axis=axis)  # noqa: E731  prompt-major copies
  cache = jax.tree.map(lambda x: rep(x, x.ndim - 4), out.cache)  # batch is the 4th axis from the end
  R = B * k
  state = dict(
    i=jnp.int32(0),
    cache=cache,
    kv_mask=rep(kv_mask),
    logits=rep(out.logits[:, 0]),
    pos=rep(prompt_mask.astype(jnp.int32).sum(-1)),
    done=jnp.zeros((R,), bool),
    tokens=jnp.full((R, N), pad_id, jnp.int32),
    lp=jnp.zeros((R, N)),
    slp=jnp.zeros((R, N)),
    lengths=jnp.zeros((R,), jnp.int32),
  )
  eos = jnp.asarray(eos_ids if eos_ids else (-1,), jnp.int32)

  def pick(s):  # sample token i from the current logits and record it
    i = s["i"]
    tok, lp, slp = _choose(s["logits"], jax.random.fold_in(key, i), temperature, top_k, top_p)
    live = ~s["done"]
    tok = jnp.where(live, tok, pad_id)
    col = lambda a, v: jax.lax.dynamic_update_slice(a, v[:, None].astype(a.dtype), (0, i))  # noqa: E731
    return dict(
      s,
      tok=tok,
      done=s["done"] | jnp.isin(tok, eos),
      tokens=col(s["tokens"], tok),
      lp=col(s["lp"], jnp.where(live, lp, 0.0)),
      slp=col(s["slp"], jnp.where(live, slp, 0.0)),
      lengths=s["lengths"] + live,
    )

  def advance(s):  # feed token i through the model at cache slot T + i: logits for token i + 1
    i = s["i"]
    kv_mask = s["kv_mask"].at[:, T + i].set(True)
    o = apply(s["tok"][:, None], s["pos"][:, None], kv_mask, s["cache"], T + i)
    return dict(s, i=i + 1, cache=o.cache, kv_mask=kv_mask, logits=o.logits[:, 0], pos=s["pos"] + 1)

  # N - 1 (pick, forward) steps in the loop and a last pick outside it: the last token needs no forward pass.
  state["tok"] = jnp.full((R,), pad_id, jnp.int32)
  s = jax.lax.while_loop(lambda s: (s["i"] < N - 1) & ~jnp.all(s["done"]), lambda s: advance(pick(s)), state)
  s = pick(s)  # rows that were all done already just write padding
  return SampleOutput(s["tokens"], s["lp"], s["slp"], s["lengths"])


def for_decoding(module: nn.Module, params, unroll_layers: bool | None = None) -> tuple[nn.Module, Any]:
  """(module, params) as `sample` decodes fastest on this backend: on CPU (or with `unroll_layers`) the
  unrolled module and its per-layer params (`layers.unstack_layers`, a copy of the layer weights), else both
  unchanged; on CPU also with weights-major projections (`layers.Dense`: a decode step multiplies few rows,
  which XLA:CPU does faster with the weights stored [out, in]; `layers.weights_major_params` copies them so).
  Lay out once and reuse across many `generate`/`sample` calls with the same weights; params that change
  every call (a policy in training) are better laid out inside `sample`."""
  cpu = jax.default_backend() == "cpu"
  if (cpu if unroll_layers is None else unroll_layers) and not module.unroll:
    decoding = module.clone(unroll=True, weights_major=cpu)
    params = unstack_layers(params, module.config.num_layers)
    return decoding, (weights_major_params(decoding, params) if cpu else params)
  return module, params


class GenerationOutput(NamedTuple):
  """Host-side result of `generate` (numpy), rows prompt-major (row r continues prompt r // k).

  tokens [B*k, N], logprobs [B*k, N] (model log-probs of the sampled tokens, 0 after the end),
  lengths [B*k] (generated tokens incl. EOS), text (decoded continuations without special tokens),
  prompt_index [B*k].
  """

  tokens: np.ndarray
  text: list[str]
  logprobs: np.ndarray
  lengths: np.ndarray
  prompt_index: np.ndarray


def _row_bucket(rows: int, mesh=None) -> int:
  """Rows a batch is padded to: its bucket (1, 2, 3, 4, 6, 8, 12, 16, ...), so a last, smaller batch reuses a
  compiled shape, and with a mesh a multiple of its batch devices; callers drop the extra rows."""
  rows = tok_lib.bucket(rows, 1)
  return rows if mesh is None else parallel.padded_rows(rows, mesh)


def _eos_ids(module, tokenizer, eos_ids):
  if eos_ids is not None:
    return tuple(int(e) for e in eos_ids)
  ids = set(getattr(module.config, "eos_token_ids", ()) or ())
  if tokenizer is not None and tokenizer.eos_token_id is not None:
    ids.add(int(tokenizer.eos_token_id))
  return tuple(sorted(ids))


def _prompt_ids(tokenizer, prompts, chat):
  if len(prompts) and isinstance(prompts[0], str):
    if tokenizer is None:
      raise ValueError("text prompts need a tokenizer; pass token-id lists otherwise")
    texts = [tok_lib.chat_prompt(tokenizer, p) for p in prompts] if chat else list(prompts)
    return tok_lib.encode(tokenizer, texts)
  return [list(map(int, p)) for p in prompts]


def generate(
  module: nn.Module,
  params,
  tokenizer,
  prompts: Sequence[str] | Sequence[Sequence[int]],
  *,
  key: jax.Array,
  max_new_tokens: int = 64,
  temperature: float = 1.0,
  top_k: int | None = None,
  top_p: float | None = None,
  num_return_sequences: int = 1,
  eos_ids: Sequence[int] | None = None,
  chat: bool = False,
  min_bucket: int = 16,
  mesh=None,
) -> GenerationOutput:
  """Generate continuations for text (or token-id) prompts: tokenize, left-pad to a bucket, `sample`, decode.

  Prompt lengths are rounded up to a power of two (at least `min_bucket`), so a stream of batches of one
  size compiles `sample` once per length bucket. `chat=True` wraps each prompt in the chat template.
  Callers that generate many batches with the same weights pass `for_decoding(module, params)` (done here
  otherwise, a copy of the layer weights per call on CPU).

  With a `mesh` (`map_jax.parallel.make_mesh`), the prompt rows are split over its data and fsdp axes (padded
  with copies to a multiple of those devices) and the weights laid out by their logical axes (split over fsdp
  and tensor; `parallel.place_model`, which callers with many batches do once) and `sample` runs as one SPMD
  program over the mesh; on several hosts every process calls this with the same prompts and gets all rows.
  What is guaranteed: the same random draws for every row whatever the mesh or row padding (JAX's
  partitionable threefry), so the tokens are those of one device except where the sharded matmuls' float32
  rounding (a tensor-split sum, another kernel blocking) moves a logit across a sampling boundary.

  Example:
    >>> cfg, params, tok = map_jax.models.load_model("smollm2-135m-instruct")
    >>> out = generate(cfg.module(), params, tok, ["Tell me a joke."], key=jax.random.key(0),
    ...                max_new_tokens=32, top_k=50, num_return_sequences=4, chat=True)
    >>> out.text[:4], out.logprobs.sum(-1)
  """
  ids = _prompt_ids(tokenizer, prompts, chat)
  if not ids or min(len(p) for p in ids) == 0:
    raise ValueError("generate needs at least one prompt, each with at least one token")
  context = module.config.max_position_embeddings
  longest = max(len(p) for p in ids)
  if longest + max_new_tokens > context:
    raise ValueError(
      f"prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's context of {context} positions"
    )
  pad_id = tok_lib.pad_id(tokenizer)
  tokens, mask = parallel.pad_rows(tok_lib.pad_left(ids, pad_id, min_bucket=min_bucket), _row_bucket(len(ids), mesh))
  module, params = for_decoding(module, params)
  params = parallel.place_model(module, params, mesh)
  if mesh is not None:
    tokens, mask = parallel.place_rows(mesh, tokens, mask)
    key = parallel.shard(key, parallel.replicated(mesh))
  out = sample(
    module,
    params,
    tokens,
    mask,
    key,
    jnp.float32(temperature),
    max_new_tokens=max_new_tokens,
    top_k=top_k,
    top_p=top_p,
    num_return_sequences=num_return_sequences,
    eos_ids=_eos_ids(module, tokenizer, eos_ids),
    pad_id=int(pad_id),
  )
  R = len(ids) * num_return_sequences  # drop the rows that only padded the batch to its bucket
  toks, lps, lens = (parallel.to_host(x)[:R] for x in (out.tokens, out.logprobs, out.lengths))
  text = (
    []
    if tokenizer is None
    else tokenizer.batch_decode([t[:n].tolist() for t, n in zip(toks, lens)], skip_special_tokens=True)
  )
  return GenerationOutput(toks, text, lps, lens, np.repeat(np.arange(len(ids)), num_return_sequences))


@functools.partial(jax.jit, static_argnames=("module",))
def sequence_logprobs(module: nn.Module, params, tokens, mask, scored):
  """Log-probs of the last C tokens of left-padded sequences, one forward pass; pure and differentiable.

  The packed layout of scoring: each row is one sequence (prompt then continuation) left-padded to the
  batch's length L, so a batch of rows of similar total length pads little whatever the split between
  prompt and continuation. Only the hidden states that predict the last C positions go through the
  vocabulary projection.

  Args:
    tokens, mask: [B, L] left-padded sequences.
    scored: [B, C] (C < L) which of the last C tokens are scored, e.g. a row's continuation right-aligned.

  Returns:
    (total [B], per_token [B, C]) with per_token[:, j] = log p(tokens[:, L - C + j] | what precedes it),
    0 where not scored.
  """
  chex.assert_rank([tokens, scored], 2)
  chex.assert_equal_shape([tokens, mask])
  chex.assert_equal_shape_prefix([tokens, scored], 1)
  L, C = tokens.shape[1], scored.shape[1]
  if not 0 < C < L:
    raise ValueError(f"scoring the last {C} of {L} positions: need 0 < C < L (one token of context)")
  mask = mask.astype(bool)
  out = module.apply({"params": params}, tokens, positions_from_mask(mask), mask)
  logits = module.apply({"params": params}, out.hidden[:, L - C - 1 : L - 1], method="logits")
  # log_softmax, as PPO's forward takes it: at its first step the policy's and the reference's log-probs of the
  # same tokens agree bit for bit (KL exactly 0).
  lp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, L - C :, None], axis=-1)[..., 0]
  lp = jnp.where(scored, lp, 0.0)
  return lp.sum(-1), lp


# Positions per vocabulary-head call in `packed_logprobs` (logits of chunk x vocabulary floats at a time).
HEAD_CHUNK = 512


@functools.partial(jax.jit, static_argnames=("module", "max_scored", "chunk"))
def packed_logprobs(
  module: nn.Module, params, tokens, segments, scored, max_scored: int | None = None, chunk: int = HEAD_CHUNK
):
  """Per-token log-probs of packed sequences (`tokenizer.pack`), one forward pass; pure and differentiable.

  Each row holds several sequences one after the other (segment ids 1, 2, ..., 0 on padding); attention
  stays within a sequence and positions restart at each (`layers.attend`, `layers.positions_from_mask`), so
  every sequence is scored as if alone, with no padding between them. Only the hidden states that predict
  scored tokens go through the vocabulary projection, `chunk` positions at a time (a `lax.map`: logits never
  take more than chunk x vocabulary floats).

  Args:
    tokens, segments: [B, P] packed rows and their segment ids.
    scored: [B, P] which tokens are scored; a scored token must follow one of its own sequence (t >= 1).
    max_scored: a static bound on the scored tokens of the batch, the vocabulary projection's row count
      (default B * (P - 1)); the caller guarantees it: scored tokens beyond it are not computed.

  Returns:
    per_token [B, P] float32: log p(tokens[:, t] | its sequence's tokens before t) where scored, else 0.
  """
  chex.assert_rank([tokens, segments, scored], 2)
  chex.assert_equal_shape([tokens, segments, scored])
  B, P = tokens.shape
  out = module.apply({"params": params}, tokens, positions_from_mask(segments), segments)
  n = -(-(max_scored or B * (P - 1)) // chunk) * chunk
  (at,) = jnp.nonzero(scored.reshape(-1), size=n, fill_value=0)  # flat positions of the scored tokens
  h = out.hidden.reshape(B * P, -1)[jnp.maximum(at - 1, 0)].reshape(n // chunk, chunk, -1)

  def head(args):
    h, t = args
    logits = module.apply({"params": params}, h[None], method="logits")[0]
    return token_logprob(logits, t)

  lp = jax.lax.map(head, (h, tokens.reshape(-1)[at].reshape(n // chunk, chunk))).reshape(-1)
  return jnp.zeros(B * P).at[at].add(jnp.where(scored.reshape(-1)[at], lp, 0.0)).reshape(B, P)


@functools.partial(jax.jit, static_argnames=("module",))
def token_logprobs(module: nn.Module, params, prompt_tokens, prompt_mask, cont_tokens, cont_mask):
  """Log-probs of continuation tokens given prompts, one forward pass; pure and differentiable.

  `sequence_logprobs` on the prompt and continuation side by side (the layout of sampling's outputs).

  Args:
    prompt_tokens, prompt_mask: [B, T] left-padded prompts (each with at least one real token).
    cont_tokens, cont_mask: [B, C] right-padded continuations.

  Returns:
    (total [B], per_token [B, C]) with per_token = log p(y_t | x, y_<t), 0 on padding.
  """
  chex.assert_rank([prompt_tokens, cont_tokens], 2)
  chex.assert_equal_shape([prompt_tokens, prompt_mask])
  chex.assert_equal_shape([cont_tokens, cont_mask])
  chex.assert_equal_shape_prefix([prompt_tokens, cont_tokens], 1)
  tokens = jnp.concatenate([prompt_tokens, cont_tokens], axis=1)
  mask = jnp.concatenate([prompt_mask.astype(bool), cont_mask.astype(bool)], axis=1)
  return sequence_logprobs(module, params, tokens, mask, cont_mask.astype(bool))


class ScoreOutput(NamedTuple):
  """total [B] summed log-prob of each continuation; per_token [B, C] (0 on padding); mask [B, C]."""

  total: np.ndarray
  per_token: np.ndarray
  mask: np.ndarray


def score(
  module: nn.Module,
  params,
  tokenizer,
  prompts: Sequence[str] | Sequence[Sequence[int]],
  continuations: Sequence[str] | Sequence[Sequence[int]],
  *,
  chat: bool = False,
  min_bucket: int = 16,
  pack_length: int = 256,
  batch_size: int = 8,
  mesh=None,
) -> ScoreOutput:
  """Summed and per-token log p(continuation | prompt) of many rows, jitted and packed.

  The rows (prompt then continuation) are packed several to a sequence of `pack_length` tokens (longer if a
  row is, shorter if all of them are; `tokenizer.pack`) and scored by `packed_logprobs`, `batch_size`
  sequences per forward pass: no padding between rows, one compile per sequence length and row bucket.
  With a `mesh` each pass is split over its batch axes (params placed by `parallel.place_model`). Text is
  tokenized prompt and continuation separately (continuations without special tokens) and the ids
  concatenated, which is how `generate`'s outputs line up with their prompts. Every prompt needs a token
  (e.g. BOS), every row must fit the context.

  Returns:
    `ScoreOutput` with per_token [n, C] and mask [n, C], C the longest continuation's length bucket.
  """
  if len(prompts) != len(continuations):
    raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
  p_ids = _prompt_ids(tokenizer, prompts, chat)
  if any(len(p) == 0 for p in p_ids):
    raise ValueError("score needs at least one prompt token per row (e.g. BOS) to predict the first token")
  c_ids = (
    tok_lib.encode(tokenizer, continuations, add_special_tokens=False)
    if len(continuations) and isinstance(continuations[0], str)
    else [list(c) for c in continuations]
  )
  n_p, n_c = np.array([len(p) for p in p_ids], np.int64), np.array([len(c) for c in c_ids], np.int64)
  context = module.config.max_position_embeddings
  if len(n_p) and (n_p + n_c).max() > context:
    i = int(np.argmax(n_p + n_c))
    raise ValueError(
      f"row {i}: prompt + continuation of {n_p[i] + n_c[i]} tokens, longer than the model's context of "
      f"{context} positions"
    )
  n = len(p_ids)
  C = tok_lib.bucket(int(n_c.max()) if n else 1, min_bucket)
  if n == 0:
    return ScoreOutput(np.zeros(0, np.float32), np.zeros((0, C), np.float32), np.zeros((0, C), bool))
  rows = [p + c for p, c in zip(p_ids, c_ids)]
  # Sequences of pack_length tokens, or fewer when all the rows fit in fewer; never shorter than a row.
  length = max(int((n_p + n_c).max()), min(pack_length, int((n_p + n_c).sum())))
  packed = tok_lib.pack(rows, tok_lib.bucket(length, min_bucket), tok_lib.pad_id(tokenizer))
  at = tok_lib.ragged_positions(packed.index + n_p, n_c)  # flat positions of the continuation tokens
  scored = np.zeros(packed.tokens.size, bool)
  scored[at] = True
  scored = scored.reshape(packed.tokens.shape)
  starts = range(0, len(packed.tokens), batch_size)
  # The vocabulary head runs on the scored positions only: as many as the fullest pass has, rounded up to the
  # head's chunk so that one shape serves every pass (rows padding a pass come after the real ones).
  most = max(int(scored[i : i + batch_size].sum()) for i in starts)
  fn = functools.partial(packed_logprobs, max_scored=-(-max(most, 1) // HEAD_CHUNK) * HEAD_CHUNK)
  lp = np.concatenate(
    [
      parallel.forward_rows(
        fn,
        module,
        params,
        [packed.tokens[i : i + batch_size], packed.segments[i : i + batch_size], scored[i : i + batch_size]],
        tok_lib.bucket(min(batch_size, len(packed.tokens) - i), 1),
        mesh,
      )
      for i in starts
    ]
  ).reshape(-1)
  per = np.zeros((n, C), np.float32)
  per[np.repeat(np.arange(n), n_c), tok_lib.ragged_positions(np.zeros(n), n_c)] = lp[at]
  return ScoreOutput(per.sum(-1), per, np.arange(C)[None, :] < n_c[:, None])
