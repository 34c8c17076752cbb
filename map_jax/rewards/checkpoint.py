"""Checkpoint-backed values: any Hugging Face *ForSequenceClassification / reward-model directory as a value.

Specs (`get_reward`):

* `classifier:PATH[:LABEL[:OUTPUT]]`: a BERT / DistilBERT (encoder) or GPT-2 / Llama / OPT (decoder)
  sequence classifier; reward = the chosen label's log-probability (default; MAP's classifier reward
  r = log p(v | x, y)), probability, or logit.
* `reward_model:PATH`: a one-logit reward model (e.g. the GPT-2-large helpful / harmless reward models of
  the MAP paper) scored on the Anthropic HH template, reward = the logit.

Encoders read the response alone by default; decoders read the HH dialogue template. Both are loaded into
the Flax modules of `map_jax.models` (no PyTorch) and run jitted on bucketed batches.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from map_jax import parallel
from map_jax.rewards.base import RewardError, RewardFn, TruncationNotice
from map_jax.rewards.models import length_sorted_batches

# Named input templates; any other string containing {prompt} / {response} is used as a format string.
TEMPLATES = {
  "response": "{response}",
  "prompt_response": "{prompt}{response}",
  # Anthropic HH-RLHF dialogue format, as the paper's GPT-2 helpful/harmless reward models were trained on.
  "hh": "\n\nHuman: {prompt} \n\nAssistant:{response}",
}
OUTPUTS = ("logprob", "prob", "logit")


@functools.partial(jax.jit, static_argnames=("module",))
def _logits(module, params, tokens, mask):
  out = module.apply({"params": params}, tokens, mask)
  return out.logits if hasattr(out, "logits") else out  # Bert returns EncoderOutput, DecoderClassifier logits


class ClassifierReward(RewardFn):
  """A value from a sequence-classification checkpoint directory (config.json + safetensors + tokenizer).

  Args:
    path: the checkpoint directory.
    label: label name (from config.json's id2label) or index; may be omitted for one-logit reward models.
    output: "logprob" (log-softmax of the label; log-sigmoid for one logit), "prob", or "logit".
      Defaults to "logprob" for classifiers and "logit" for one-logit reward models.
    template: how (prompt, response) becomes the model's input: a key of `TEMPLATES` or a format string.
      Defaults to "response" for encoders (BERT humor / sentiment classifiers read the text) and "hh" for
      decoders (reward models read the dialogue).
    name: the value's column name (default: the checkpoint's directory name and label).
    batch_size: rows per forward pass.
    mesh: a `map_jax.parallel.make_mesh` mesh to split each batch (and the weights) over.

  Texts longer than the model's context are truncated, said once: encoders keep the beginning (as
  transformers' truncation does), decoders keep the end, because a decoder classifier scores the last
  token and the response is at the end of the dialogue.
  """

  def __init__(
    self,
    path: str,
    label: str | int | None = None,
    output: str | None = None,
    template: str | None = None,
    name: str | None = None,
    batch_size: int = 16,
    mesh=None,
  ):
    from map_jax import parallel
    from map_jax.models import bert
    from map_jax.models.heads import ClassifierConfig
    from map_jax.models.loading import load_model

    self.path = path
    self.config, self.params, self.tokenizer = load_model(path)
    if self.tokenizer is None:
      raise RewardError(f"{path}: a classifier value needs the checkpoint's tokenizer files")
    if isinstance(self.config, ClassifierConfig):
      self.encoder, labels = False, self.config.labels
    elif isinstance(self.config, bert.BertConfig) and self.config.num_labels:
      self.encoder, labels = True, self.config.labels
    else:
      raise RewardError(
        f"{path}: not a sequence-classification checkpoint (config.json's architectures "
        "must end in ForSequenceClassification)"
      )
    self.labels = tuple(labels)
    self.label_index = self._label_index(label)
    single = len(self.labels) == 1
    self.output = output or ("logit" if single else "logprob")
    if self.output not in OUTPUTS:
      raise RewardError(f"{path}: output {self.output!r} is not one of {OUTPUTS}")
    template = template or ("response" if self.encoder else "hh")
    self.template = TEMPLATES.get(template, template)
    if "{response}" not in self.template:
      raise RewardError(f"template {template!r} has no {{response}} field (named ones: {sorted(TEMPLATES)})")
    import os

    base = os.path.basename(os.path.normpath(path))
    self.name = name or (base if single else f"{base}:{self.labels[self.label_index]}")
    self.description = f"{self.output} of label {self.labels[self.label_index]!r} from {path}"
    self.batch_size = batch_size
    self.module = self.config.module()
    self.mesh = mesh
    self.params = parallel.place_model(self.module, self.params, mesh)
    self.context = int(self.config.max_position_embeddings)
    max_len = getattr(self.tokenizer, "model_max_length", None)
    if isinstance(max_len, int) and 0 < max_len < self.context:
      self.context = max_len
    self.notice = TruncationNotice(self.name, self.context)

  def _label_index(self, label) -> int:
    if label is None or label == "":
      if len(self.labels) == 1:
        return 0
      raise RewardError(
        f"{self.path}: a classifier with labels {list(self.labels)} needs a label, e.g. "
        f"'classifier:{self.path}:{self.labels[-1]}'"
      )
    if label in self.labels:
      return self.labels.index(label)
    try:
      i = int(label)
    except (TypeError, ValueError):
      i = -1
    if 0 <= i < len(self.labels):
      return i
    raise RewardError(
      f"{self.path}: unknown label {label!r}; labels are {list(self.labels)} (or indices 0..{len(self.labels) - 1})"
    )

  def _tokenize(self, prompts, responses) -> list[list[int]]:
    from map_jax.models import tokenizer as tok_lib

    texts = [self.template.format(prompt=p, response=r) for p, r in zip(prompts, responses)]
    ids = self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]
    L, cut = self.context, 0
    for i, s in enumerate(ids):
      if len(s) > L:
        cut += 1
        # encoders: first L-1 tokens + the closing special token; decoders: the last L tokens.
        ids[i] = s[: L - 1] + s[-1:] if self.encoder else s[-L:]
      elif not s:
        eos = self.tokenizer.eos_token_id
        ids[i] = [eos if eos is not None else tok_lib.pad_id(self.tokenizer)]
    self.notice(cut)
    return ids

  def _score(self, prompts, responses):
    from map_jax.models import tokenizer as tok_lib

    ids = self._tokenize(prompts, responses)
    pad = tok_lib.pad_id(self.tokenizer)
    logits = np.zeros((len(ids), len(self.labels)), np.float32)
    for idx in length_sorted_batches([len(s) for s in ids], self.batch_size):
      length = min(tok_lib.bucket(max(len(ids[i]) for i in idx)), self.context)
      # BERT positions are 0..T-1, so encoders pad on the right; decoders take positions from the mask
      # and read the last column, so they pad on the left.
      pad_fn = tok_lib.pad_right if self.encoder else tok_lib.pad_left
      tokens, mask = pad_fn([ids[i] for i in idx], pad, length=length)
      logits[idx] = parallel.forward_rows(
        _logits, self.module, self.params, [tokens, mask], tok_lib.bucket(len(idx), 1), self.mesh
      )
    return reward_from_logits(logits, self.label_index, self.output)

  def close(self):
    self.params = None


def reward_from_logits(logits: np.ndarray, label: int, output: str) -> np.ndarray:
  """The chosen label's logit, probability or log-probability (sigmoid for a one-logit model)."""
  logits = jnp.asarray(logits, jnp.float32)
  if output == "logit":
    r = logits[:, label]
  elif logits.shape[1] == 1:
    r = jax.nn.log_sigmoid(logits[:, 0])
  else:
    r = jax.nn.log_softmax(logits, axis=-1)[:, label]
  if output == "prob":
    r = jnp.exp(r)
  return np.asarray(r, np.float64)


def classifier_spec(rest: str, **kw) -> ClassifierReward:
  # PATH may itself contain ':' (rare); LABEL and OUTPUT are taken from the right.
  parts = rest.split(":")
  output = parts.pop() if len(parts) > 1 and parts[-1] in OUTPUTS else kw.pop("output", None)
  label = parts.pop() if len(parts) > 1 else kw.pop("label", None)
  return ClassifierReward(":".join(parts), label=label, output=output, **kw)


def reward_model_spec(rest: str, **kw) -> ClassifierReward:
  kw.setdefault("template", "hh")
  kw.setdefault("output", "logit")
  return ClassifierReward(rest, label=kw.pop("label", 0), **kw)
