"""Values that run a Flax model: `coherence` (MiniLM sentence embeddings) and `perplexity` (the base LM).

Both re-tokenize the text with their own tokenizer (the policy's tokenizer is never assumed), sort rows by
length so each batch pads little, pad every batch to a bucketed (rows, tokens) shape so jit compiles once per
bucket, and truncate texts longer than the model's context, saying so once per value.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import numpy as np

from map_jax import parallel
from map_jax.models import tokenizer as tok_lib
from map_jax.rewards.base import RewardFn, TruncationNotice


def length_sorted_batches(lengths: Sequence[int], batch_size: int):
  """Index arrays of at most `batch_size` rows, shortest first: rows of similar length share a padded batch."""
  order = np.argsort(np.asarray(lengths), kind="stable")
  return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class TextEncoder:
  """Texts -> unit-norm sentence embeddings [n, E] with a MiniLM-family encoder, batched and jitted.

  Rows are sorted by token length, cut into batches of `batch_size`, right-padded to a length bucket
  (16, 24, 32, 48, ...) and to a row bucket, then run through `map_jax.models.bert.embed` (one compile per
  bucket pair). Texts longer than `max_length` tokens (sentence-transformers' 256 for all-MiniLM-L6-v2)
  keep their first `max_length - 1` tokens and the closing [SEP], as sentence-transformers does. With a
  `mesh` (`map_jax.parallel.make_mesh`) each batch is split over its batch axes and the weights laid out by
  their logical axes.
  """

  def __init__(
    self,
    name: str = "all-minilm-l6-v2",
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    value_name: str = "encoder",
    mesh=None,
  ):
    from map_jax.models.loading import load_sentence_encoder

    self.name = name
    self.encoder = load_sentence_encoder(name, max_length=max_length)
    self.max_length = min(self.encoder.max_length, self.encoder.config.max_position_embeddings)
    self.batch_size = batch_size
    self.module = self.encoder.config.module()
    self.mesh = mesh
    self.params = parallel.place_model(self.module, self.encoder.params, mesh)
    self.notice = TruncationNotice(value_name, self.max_length)

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    tok = self.encoder.tokenizer
    # verbose=False: our own once-per-value notice replaces transformers' per-call length warning.
    ids = tok(list(texts), truncation=False, verbose=False)["input_ids"]
    L = self.max_length
    long = [i for i, s in enumerate(ids) if len(s) > L]
    self.notice(len(long))
    for i in long:
      ids[i] = ids[i][: L - 1] + ids[i][-1:]
    return ids

  def __call__(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
    from map_jax.models import bert

    texts = list(texts)
    if not texts:
      return np.zeros((0, self.encoder.config.hidden_size), np.float32)
    ids = self.tokenize(texts)
    pad = tok_lib.pad_id(self.encoder.tokenizer)
    out = np.zeros((len(texts), self.encoder.config.hidden_size), np.float32)
    batches = length_sorted_batches([len(s) for s in ids], self.batch_size)
    if progress:
      from tqdm.auto import tqdm

      batches = tqdm(batches, desc=f"embedding with {self.name}", unit="batch")
    for idx in batches:
      length = min(tok_lib.bucket(max(len(ids[i]) for i in idx)), self.max_length)
      tokens, mask = tok_lib.pad_right([ids[i] for i in idx], pad, length=length)
      embed = functools.partial(bert.embed, normalize=self.encoder.normalize)
      out[idx] = parallel.forward_rows(
        embed, self.module, self.params, [tokens, mask], tok_lib.bucket(len(idx), 1), self.mesh
      )
    return out


class Coherence(RewardFn):
  """`coherence`: cosine similarity of the prompt's and the response's all-MiniLM-L6-v2 embeddings.

  The MAP paper uses SimCSE-BERT embeddings of prompt and continuation; MiniLM (shipped offline as a wheel)
  plays the same role. In [-1, 1]; an on-topic reply scores higher than an unrelated one. An empty (or
  whitespace) response says nothing about the prompt and scores 0.
  """

  name = "coherence"
  description = "cosine similarity of all-MiniLM-L6-v2 embeddings of prompt and response"

  def __init__(self, encoder: str = "all-minilm-l6-v2", batch_size: int = 64, max_length: int | None = None, mesh=None):
    self.encoder = TextEncoder(encoder, batch_size=batch_size, max_length=max_length, value_name=self.name, mesh=mesh)

  @property
  def truncated(self) -> int:
    return self.encoder.notice.count

  def _score(self, prompts, responses):
    n = len(prompts)
    e = self.encoder(prompts + responses)  # one pass: prompts and responses share length buckets
    cos = np.sum(e[:n].astype(np.float64) * e[n:], axis=-1)
    return np.where([r.strip() == "" for r in responses], 0.0, cos)

  def close(self):
    self.encoder = None


class Perplexity(RewardFn):
  r"""`perplexity`: the negative mean token NLL (= −log perplexity) of the response given the prompt.

  .. math:: r(x, y) = \frac{1}{|y|} \sum_t \log p_0(y_t \mid x, y_{<t})

  under a base language model (default SmolLM2-135M-Instruct, offline), computed with
  `map_jax.sampling.score` (rows packed several to a sequence, one jitted forward pass per batch of
  sequences, per-token log-probs). Higher is more fluent.
  The prompt is tokenized with the model's special tokens (BOS when the tokenizer adds one) and the response
  without, as `generate` lines them up. Edge cases, each with a definite score:

  * empty response: scored as the model ending at once, log p(EOS | x) (a one-token "response");
  * empty prompt with a tokenizer that adds no BOS: the EOS token stands in as the context;
  * prompt + response longer than the context: the prompt loses its oldest tokens first, then the response
    its last ones (said once).

  Args:
    model: a built-in name, HF directory or GGUF file of the base model (`map_jax.models.load_model`).
    chat: wrap prompts in the model's chat template (when the pilot samples were generated that way).
    batch_size: packed sequences per forward pass (the last pass is padded to a row bucket).
    pack_length: tokens per packed sequence (at least the longest row, rounded up to a length bucket):
      rows are packed several to a sequence, so little is padded.
    min_bucket: smallest length bucket.
    loaded: an already loaded `(config, params, tokenizer)` to use instead of loading `model`.
    mesh: a `map_jax.parallel.make_mesh` mesh to split each batch (and the weights) over.
  """

  name = "perplexity"
  description = "-(mean token NLL) of the response given the prompt under the base LM (SmolLM2-135M default)"

  def __init__(
    self,
    model: str = "smollm2-135m-instruct",
    chat: bool = False,
    batch_size: int = 8,
    pack_length: int = 256,
    min_bucket: int = 32,
    loaded=None,
    mesh=None,
  ):
    from map_jax.models.loading import load_model

    self.model_name, self.chat, self.batch_size, self.min_bucket = model, chat, batch_size, min_bucket
    self.pack_length = pack_length
    self.config, self.params, self.tokenizer = loaded if loaded is not None else load_model(model)
    self.module = self.config.module()
    self.mesh = mesh
    self.params = parallel.place_model(self.module, self.params, mesh)
    self.context = int(self.config.max_position_embeddings)
    self.notice = TruncationNotice(self.name, self.context)

  def _ids(self, prompts, responses):

    tok = self.tokenizer
    texts = [tok_lib.chat_prompt(tok, p) for p in prompts] if self.chat else prompts
    p_ids = tok_lib.encode(tok, texts)
    r_ids = tok_lib.encode(tok, responses, add_special_tokens=False)
    eos = tok.eos_token_id if tok.eos_token_id is not None else tok.pad_token_id
    cut = 0
    for i in range(len(p_ids)):
      if not p_ids[i]:
        p_ids[i] = [eos]
      if not r_ids[i]:
        r_ids[i] = [eos]
      over = len(p_ids[i]) + len(r_ids[i]) - self.context
      if over > 0:
        cut += 1
        keep_p = max(1, len(p_ids[i]) - over)
        p_ids[i] = p_ids[i][len(p_ids[i]) - keep_p :]
        r_ids[i] = r_ids[i][: self.context - keep_p]
    self.notice(cut)
    return p_ids, r_ids

  def _score(self, prompts, responses):
    from map_jax.sampling import score

    p_ids, r_ids = self._ids(prompts, responses)
    out = score(
      self.module,
      self.params,
      self.tokenizer,
      p_ids,
      r_ids,
      min_bucket=self.min_bucket,
      pack_length=self.pack_length,
      batch_size=self.batch_size,
      mesh=self.mesh,
    )
    return out.total / np.array([len(r) for r in r_ids])

  def close(self):
    self.params = None
    jax.clear_caches()
