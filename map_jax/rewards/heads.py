r"""Learned reward heads: a small Flax MLP over frozen sentence embeddings, trained on ratings or preferences.

Built-in values `humor`, `upbeat` and `interesting` are heads trained by this project on the human ratings
(1–10: witty, upbeat, interesting) of the Chit Chat Challenge conversations (`chitchat-dataset`, 5,988 rated
conversations). On first use the conversations are embedded with all-MiniLM-L6-v2 (first `max_tokens`
tokens), a head is fitted (train / validation / test split from a seed, early stopping on the validation
loss) and both embeddings and head are cached under `cache_dir()` ($MAP_JAX_CACHE or ~/.cache/map_jax), so
later uses load in a second. `python -m experiments.train_reward --data=chitchat:witty` does the same
explicitly and prints the validation and test metrics.

Measured (seed 0, 4,790 / 599 / 599 split, first 64 MiniLM tokens): held-out Spearman with the human ratings
0.31 (witty -> `humor`), 0.38 (upbeat), 0.39 (interesting). Read these with care: in this data the ratings
follow conversation length (word count alone reaches 0.50 on the same test rows; capped at ~64 tokens,
0.41), and among the long conversations, where every text fills the 64-token window, the heads keep only
0.04-0.11. So the heads mostly tell terse, low-effort replies from engaged ones, with a weak content signal
on top (jokes do score above dry statements; see tests/rewards/test_heads.py). For a humor value with
sharper content, plug in a humor classifier checkpoint (`classifier:PATH:LABEL`, as the MAP paper does).

Two losses, both on a scalar head r_θ(e) of an embedding e:

* regression on ratings, the mean squared error on standardised ratings
  :math:`\frac{1}{n}\sum_j (r_θ(e_j) - (s_j - \bar s)/\sigma_s)^2`; the value reports
  :math:`\bar s + \sigma_s r_θ(e)`, a predicted rating on the data's own scale;
* Bradley–Terry on preference pairs, :math:`-\frac{1}{n}\sum_j \log \sigma(r_θ(e^+_j) - r_θ(e^-_j))`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from map_jax import store
from map_jax.rewards.base import RewardError, RewardFn, cache_dir

CHITCHAT_RATINGS = ("witty", "upbeat", "interesting")


class RewardHead(nn.Module):
  """MLP embedding [..., E] -> scalar reward [...]: Dense(hidden) -> GELU (per hidden layer) -> Dense(1)."""

  hidden: tuple[int, ...] = (128,)

  @nn.compact
  def __call__(self, x):
    for width in self.hidden:
      x = nn.gelu(nn.Dense(width)(x))
    return nn.Dense(1)(x)[..., 0]


# ------------------------------------------------------------------------------------------------ training


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  """Hyper-parameters of `fit_head` (defaults train a chitchat head in a few seconds on a CPU)."""

  loss: str = "regression"  # "regression" (ratings) or "bradley_terry" (chosen/rejected pairs)
  hidden: tuple[int, ...] = (128,)
  learning_rate: float = 1e-3
  weight_decay: float = 1e-2
  batch_size: int = 128
  max_epochs: int = 200
  patience: int = 10  # epochs without a better validation loss before stopping
  seed: int = 0


def head_loss(loss: str, head: RewardHead, params, x, y=None):
  """Mean loss of a batch: MSE on standardised ratings (x [n, E], y [n]) or Bradley–Terry (x [n, 2, E])."""
  r = head.apply({"params": params}, x)
  if loss == "regression":
    return jnp.mean((r - y) ** 2)
  if loss == "bradley_terry":
    return -jnp.mean(jax.nn.log_sigmoid(r[:, 0] - r[:, 1]))
  raise ValueError(f"unknown head loss {loss!r} (regression, bradley_terry)")


@functools.partial(jax.jit, static_argnames=("loss", "head", "tx", "batch_size"))
def _epoch(params, opt_state, key, x, y, *, loss, head, tx, batch_size):
  """One pass over a shuffled training set, as a `lax.scan` over minibatches (a last partial batch is
  dropped; the shuffle differs each epoch so every row is used)."""
  n = x.shape[0]
  steps = max(n // batch_size, 1)
  bs = min(batch_size, n)
  perm = jax.random.permutation(key, n)[: steps * bs].reshape(steps, bs)

  def step(carry, idx):
    p, s = carry
    value, grads = jax.value_and_grad(lambda q: head_loss(loss, head, q, x[idx], y[idx]))(p)
    updates, s = tx.update(grads, s, p)
    return (optax.apply_updates(p, updates), s), value

  (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), perm)
  return params, opt_state, losses.mean()


@functools.partial(jax.jit, static_argnames=("loss", "head"))
def _eval_loss(params, x, y, *, loss, head):
  return head_loss(loss, head, params, x, y)


def fit_head(x_train, y_train, x_val, y_val, config: HeadConfig = HeadConfig(), progress: bool = False):
  """Fit a `RewardHead` with AdamW and early stopping on the validation loss; deterministic given the seed.

  Args:
    x_train, x_val: embeddings [n, E] (regression) or preference pairs [n, 2, E] (chosen, rejected).
    y_train, y_val: standardised ratings [n] (regression); ignored (pass zeros) for Bradley–Terry.
    config: `HeadConfig`.
    progress: show a tqdm bar over epochs.

  Returns:
    (params of the best validation epoch, history dict with per-epoch train/val losses and best epoch).
  """
  head = RewardHead(tuple(config.hidden))
  x_train, x_val = jnp.asarray(x_train, jnp.float32), jnp.asarray(x_val, jnp.float32)
  y_train, y_val = jnp.asarray(y_train, jnp.float32), jnp.asarray(y_val, jnp.float32)
  key = jax.random.key(config.seed)
  key, init_key = jax.random.split(key)
  params = head.init(init_key, x_train[:1])["params"]
  tx = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  opt_state = tx.init(params)
  best = (float(_eval_loss(params, x_val, y_val, loss=config.loss, head=head)), params, 0)
  history = {"train_loss": [], "val_loss": []}
  epochs = range(1, config.max_epochs + 1)
  if progress:
    from tqdm.auto import tqdm

    epochs = tqdm(epochs, desc=f"training reward head ({config.loss})", unit="epoch")
  for epoch in epochs:
    params, opt_state, train = _epoch(
      params,
      opt_state,
      jax.random.fold_in(key, epoch),
      x_train,
      y_train,
      loss=config.loss,
      head=head,
      tx=tx,
      batch_size=config.batch_size,
    )
    val = float(_eval_loss(params, x_val, y_val, loss=config.loss, head=head))
    history["train_loss"].append(float(train))
    history["val_loss"].append(val)
    if val < best[0]:
      best = (val, params, epoch)
    elif epoch - best[2] >= config.patience:
      break
  history["best_epoch"] = best[2]
  history["best_val_loss"] = best[0]
  return best[1], history


def split_indices(n: int, seed: int, fractions=(0.8, 0.1, 0.1)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """A seeded random train / validation / test split of range(n)."""
  perm = np.random.default_rng(seed).permutation(n)
  a = int(round(fractions[0] * n))
  b = a + int(round(fractions[1] * n))
  return perm[:a], perm[a:b], perm[b:]


def spearman(a, b) -> float:
  """Spearman rank correlation (average ranks for ties), in NumPy."""
  from scipy.stats import rankdata

  ra, rb = rankdata(a), rankdata(b)
  return float(np.corrcoef(ra, rb)[0, 1])


# -------------------------------------------------------------------------------------------- saved heads


@dataclasses.dataclass
class TrainedHead:
  """A fitted head and what is needed to use it: its encoder, token budget and the rating scale.

  `meta` holds: encoder, max_tokens, hidden, loss, target_mean, target_std, seed, metrics (val/test), data.
  """

  params: Any
  meta: dict

  @property
  def module(self) -> RewardHead:
    return RewardHead(tuple(self.meta["hidden"]))

  def predict(self, embeddings: np.ndarray) -> np.ndarray:
    """Reward on the data's own scale: target_mean + target_std * head(e)."""
    r = _apply_head(self.module, self.params, jnp.asarray(embeddings, jnp.float32))
    return self.meta["target_mean"] + self.meta["target_std"] * np.asarray(r, np.float64)

  def save(self, directory: str) -> None:
    """Write `params/` (orbax) and `meta.json` into `directory` (created; params must not exist yet)."""
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(directory, "params"), jax.tree.map(np.asarray, self.params))
    store.write_json(os.path.join(directory, "meta.json"), self.meta)

  @classmethod
  def load(cls, directory: str) -> "TrainedHead":
    import orbax.checkpoint as ocp

    directory = os.path.abspath(directory)
    meta_path = os.path.join(directory, "meta.json")
    if not os.path.isfile(meta_path):
      raise RewardError(f"{directory}: not a reward head (no meta.json)")
    with open(meta_path) as f:
      meta = json.load(f)
    head = RewardHead(tuple(meta["hidden"]))
    abstract = jax.eval_shape(lambda: head.init(jax.random.key(0), jnp.zeros((1, meta["embedding_dim"]))))
    with ocp.StandardCheckpointer() as ckptr:
      try:
        params = ckptr.restore(os.path.join(directory, "params"), abstract["params"])
      except Exception as e:
        raise RewardError(f"{directory}: cannot restore the reward head's params ({e})") from e
    return cls(params, meta)


@functools.partial(jax.jit, static_argnames=("module",))
def _apply_head(module, params, x):
  return module.apply({"params": params}, x)


# ---------------------------------------------------------------------------------------- chitchat ratings


def chitchat_conversations() -> tuple[list[str], dict[str, np.ndarray]]:
  """The rated Chit Chat Challenge conversations: texts and their witty / upbeat / interesting ratings.

  A conversation's text is its messages in order, the utterances of one message joined by spaces and the
  messages by newlines. Ratings (1–10, one per conversation) are float arrays keyed by rating name. The
  order is the dataset file's, so indices are stable across runs.
  """
  try:
    import chitchat_dataset
  except ImportError:
    raise RewardError("the chitchat heads need the pip package 'chitchat-dataset'") from None
  data = chitchat_dataset.Dataset()
  texts, ratings = [], {k: [] for k in CHITCHAT_RATINGS}
  for conv in data.values():
    r = conv.get("ratings") or {}
    if not all(k in r for k in CHITCHAT_RATINGS):
      continue
    texts.append("\n".join(" ".join(u["text"] for u in msg) for msg in conv["messages"]))
    for k in CHITCHAT_RATINGS:
      ratings[k].append(float(r[k]))
  return texts, {k: np.asarray(v) for k, v in ratings.items()}


def cached_embeddings(texts: Sequence[str], encoder: str, max_tokens: int, tag: str) -> np.ndarray:
  """Embeddings of `texts` with `encoder` (first `max_tokens` tokens), cached by content hash under
  cache_dir("embeddings"); computed with a progress bar on a miss."""
  h = hashlib.sha1("\x00".join(texts).encode()).hexdigest()[:12]
  path = cache_dir("embeddings", f"{tag}-{encoder}-{max_tokens}-{h}.npy")
  if os.path.isfile(path):
    return np.load(path)
  import warnings

  from map_jax.rewards.models import TextEncoder

  enc = TextEncoder(encoder, max_length=max_tokens, value_name=f"{tag} embeddings", batch_size=64)
  with warnings.catch_warnings():  # truncating long conversations to max_tokens is the point here
    warnings.simplefilter("ignore")
    e = enc(texts, progress=True)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  np.save(path + ".tmp.npy", e)
  os.replace(path + ".tmp.npy", path)  # atomic: a crash never leaves a half-written cache file
  return e


def train_rating_head(
  texts: Sequence[str],
  ratings: np.ndarray,
  *,
  encoder: str = "all-minilm-l6-v2",
  max_tokens: int = 64,
  config: HeadConfig = HeadConfig(),
  tag: str = "texts",
  progress: bool = True,
) -> TrainedHead:
  """Embed rated texts, split them (80/10/10 from `config.seed`), fit a regression head, evaluate.

  Returns a `TrainedHead` whose meta["metrics"] holds validation and held-out test MSE (on standardised
  ratings), Spearman and Pearson correlations with the human ratings, and the sizes of the splits.
  """
  ratings = np.asarray(ratings, np.float64)
  if len(texts) != len(ratings) or len(texts) < 10:
    raise RewardError(f"{tag}: need >= 10 texts with one rating each (got {len(texts)} texts, {len(ratings)} ratings)")
  emb = cached_embeddings(list(texts), encoder, max_tokens, tag)
  tr, va, te = split_indices(len(texts), config.seed)
  mean, std = float(ratings[tr].mean()), float(ratings[tr].std() + 1e-8)
  z = (ratings - mean) / std
  params, history = fit_head(emb[tr], z[tr], emb[va], z[va], config, progress=progress)
  meta = dict(
    encoder=encoder,
    max_tokens=max_tokens,
    hidden=list(config.hidden),
    loss="regression",
    embedding_dim=int(emb.shape[1]),
    target_mean=mean,
    target_std=std,
    seed=config.seed,
    config=dataclasses.asdict(config),
    data=tag,
    history=history,
  )
  head = TrainedHead(params, meta)
  metrics = {"n_train": len(tr), "n_val": len(va), "n_test": len(te)}
  for split, idx in (("val", va), ("test", te)):
    pred = head.predict(emb[idx])
    metrics[f"{split}_mse_std"] = float(np.mean(((pred - ratings[idx]) / std) ** 2))
    metrics[f"{split}_spearman"] = spearman(pred, ratings[idx])
    metrics[f"{split}_pearson"] = float(np.corrcoef(pred, ratings[idx])[0, 1])
  meta["metrics"] = metrics
  return head


def train_preference_head(
  chosen: Sequence[str],
  rejected: Sequence[str],
  *,
  encoder: str = "all-minilm-l6-v2",
  max_tokens: int = 128,
  config: HeadConfig = HeadConfig(loss="bradley_terry"),
  tag: str = "pairs",
  progress: bool = True,
) -> TrainedHead:
  """Embed (chosen, rejected) response pairs, split them (80/10/10), fit a Bradley–Terry head, evaluate.

  meta["metrics"] holds validation / test loss and accuracy (the fraction of pairs where the head prefers
  the chosen response). The head's output is a log-odds score: r(a) − r(b) = log P(a ≻ b) / P(b ≻ a).
  """
  if len(chosen) != len(rejected) or len(chosen) < 10:
    raise RewardError(
      f"{tag}: need >= 10 (chosen, rejected) pairs (got {len(chosen)} chosen, {len(rejected)} rejected)"
    )
  config = dataclasses.replace(config, loss="bradley_terry")
  emb = cached_embeddings(list(chosen) + list(rejected), encoder, max_tokens, tag)
  n = len(chosen)
  pairs = np.stack([emb[:n], emb[n:]], axis=1)  # [n, 2, E]
  tr, va, te = split_indices(n, config.seed)
  zeros = np.zeros(n, np.float32)
  params, history = fit_head(pairs[tr], zeros[tr], pairs[va], zeros[va], config, progress=progress)
  meta = dict(
    encoder=encoder,
    max_tokens=max_tokens,
    hidden=list(config.hidden),
    loss="bradley_terry",
    embedding_dim=int(emb.shape[1]),
    target_mean=0.0,
    target_std=1.0,
    seed=config.seed,
    config=dataclasses.asdict(config),
    data=tag,
    history=history,
  )
  head = TrainedHead(params, meta)
  metrics = {"n_train": len(tr), "n_val": len(va), "n_test": len(te)}
  for split, idx in (("val", va), ("test", te)):
    margin = head.predict(pairs[idx, 0]) - head.predict(pairs[idx, 1])
    metrics[f"{split}_accuracy"] = float(np.mean(margin > 0))
    metrics[f"{split}_loss"] = float(np.mean(np.logaddexp(0.0, -margin)))
  meta["metrics"] = metrics
  return head


def chitchat_head(
  rating: str = "witty",
  *,
  limit: int | None = None,
  seed: int = 0,
  encoder: str = "all-minilm-l6-v2",
  max_tokens: int = 64,
  retrain: bool = False,
  directory: str | None = None,
) -> TrainedHead:
  """The head for one chitchat rating, loaded from the cache or trained (and cached) on first use.

  Args:
    rating: "witty", "upbeat" or "interesting".
    limit: train on the first `limit` rated conversations only (quick tests); None for all 5,988.
    seed: split and initialisation seed; the cache key includes it, so results are reproducible.
    encoder, max_tokens: the frozen embedding model and how many tokens of each conversation it reads.
    retrain: ignore a cached head.
    directory: where to keep the head (default: cache_dir("heads", "chitchat-<rating>-...")).
  """
  if rating not in CHITCHAT_RATINGS:
    raise RewardError(f"unknown chitchat rating {rating!r}; known: {', '.join(CHITCHAT_RATINGS)}")
  config = HeadConfig(seed=seed)
  key = f"chitchat-{rating}-{encoder}-{max_tokens}-n{limit or 'all'}-s{seed}"
  directory = directory or cache_dir("heads", key)
  if not retrain and os.path.isfile(os.path.join(directory, "meta.json")):
    return TrainedHead.load(directory)
  texts, ratings = chitchat_conversations()
  if limit:
    texts = texts[:limit]
  head = train_rating_head(
    texts,
    ratings[rating][: len(texts)],
    encoder=encoder,
    max_tokens=max_tokens,
    config=config,
    tag=f"chitchat{'' if not limit else limit}",
  )
  head.meta["data"] = f"chitchat:{rating}"
  if os.path.isdir(directory):
    import shutil

    shutil.rmtree(directory)  # retrain: orbax will not overwrite
  tmp = directory + ".tmp"
  if os.path.isdir(tmp):
    import shutil

    shutil.rmtree(tmp)
  head.save(tmp)
  os.replace(tmp, directory)
  return head


# -------------------------------------------------------------------------------------------- the values


class HeadReward(RewardFn):
  """A value scored by a `TrainedHead` on the response's sentence embedding (the prompt is not read).

  Args:
    head: a `TrainedHead`, or a directory saved by `TrainedHead.save` / `experiments.train_reward`.
    name: the value's name.
    batch_size: rows per encoder forward pass.
    mesh: a `map_jax.parallel.make_mesh` mesh to split each batch (and the weights) over.

  Responses are embedded like the training texts: the first `max_tokens` encoder tokens (longer responses
  are truncated, said once).
  """

  def __init__(self, head: TrainedHead | str, name: str | None = None, batch_size: int = 64, mesh=None):
    from map_jax.rewards.models import TextEncoder

    self.head = TrainedHead.load(head) if isinstance(head, str) else head
    self.name = name or self.head.meta.get("data", "head")
    m = self.head.meta
    self.description = f"reward head trained on {m.get('data')} ({m.get('loss')}) over {m['encoder']}"
    self.encoder = TextEncoder(
      m["encoder"], batch_size=batch_size, max_length=m["max_tokens"], value_name=self.name, mesh=mesh
    )

  @property
  def metrics(self) -> dict:
    return self.head.meta.get("metrics", {})

  def _score(self, prompts, responses):
    return self.head.predict(self.encoder(responses))

  def close(self):
    self.encoder = None


def _chitchat_value(value: str, rating: str, description: str):
  def build(batch_size: int = 64, mesh=None, **kw) -> HeadReward:
    return HeadReward(chitchat_head(rating, **kw), name=value, batch_size=batch_size, mesh=mesh)

  build.description = description
  return build


def head_spec(rest: str, **kw) -> HeadReward:
  """The `head:DIR` value: a reward head saved by experiments.train_reward."""
  return HeadReward(rest, **kw)


# The built-in chitchat values (declared in `map_jax.rewards.registry`).
humor = _chitchat_value(
  "humor", "witty", "predicted chitchat 'witty' rating (1-10), MiniLM + MLP head trained on human ratings"
)
upbeat = _chitchat_value("upbeat", "upbeat", "predicted chitchat 'upbeat' rating (1-10), MiniLM + MLP head")
interesting = _chitchat_value(
  "interesting", "interesting", "predicted chitchat 'interesting' rating (1-10), MiniLM + MLP head"
)
