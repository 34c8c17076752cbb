"""Name -> reward value: built-in names ("humor", "coherence", ...) and checkpoint specs ("classifier:PATH:LABEL").

Values are entries of `map_jax.plugins` (kinds "value" and "value_spec"). The built-ins are declared below as
"module:attribute" references, so listing or resolving one value never imports the modules (or loads the models)
of the others; the scoring launcher relies on that to hold one reward model in memory at a time. A user's value
registers the same way (`register`, or `map_jax.plugins.register("value", ...)` in a plugin module).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from map_jax import plugins
from map_jax.rewards.base import RewardError, RewardFn

# name -> factory(**options); the one-line description is the factory's `description` attribute.
_BUILTIN_VALUES = {
  "humor": "map_jax.rewards.heads:humor",
  "upbeat": "map_jax.rewards.heads:upbeat",
  "interesting": "map_jax.rewards.heads:interesting",
  "positiveness": "map_jax.rewards.lexicon:Positiveness",
  "harmlessness": "map_jax.rewards.lexicon:Harmlessness",
  "coherence": "map_jax.rewards.models:Coherence",
  "perplexity": "map_jax.rewards.models:Perplexity",
  "diversity": "map_jax.rewards.text:Diversity",
  "length": "map_jax.rewards.text:Length",
}
# prefix -> (factory(rest, **options), usage of the rest)
_BUILTIN_SPECS = {
  "classifier": (
    "map_jax.rewards.checkpoint:classifier_spec",
    "PATH[:LABEL[:logprob|prob|logit]] a HF *ForSequenceClassification directory",
  ),
  "reward_model": (
    "map_jax.rewards.checkpoint:reward_model_spec",
    "PATH a one-logit reward model directory, scored on the HH dialogue template",
  ),
  "head": ("map_jax.rewards.heads:head_spec", "DIR a reward head saved by experiments.train_reward"),
}
for _name, _target in _BUILTIN_VALUES.items():
  plugins.register("value", _name, _target)
for _prefix, (_target, _usage) in _BUILTIN_SPECS.items():
  plugins.register("value_spec", _prefix, _target, _usage)


def register(name: str, factory: Callable[..., RewardFn] | str, description: str = "") -> None:
  """Register a value: `get_reward(name, **kw)` then calls `factory(**kw)` (a callable or "module:attribute")."""
  plugins.register("value", name, factory, description, replace=True)


def register_spec(prefix: str, factory: Callable[..., RewardFn] | str, usage: str = "") -> None:
  """Register a spec family: `get_reward("prefix:REST", **kw)` calls `factory("REST", **kw)`."""
  plugins.register("value_spec", prefix, factory, usage, replace=True)


def _description(entry: plugins.Entry) -> str:
  return entry.description or getattr(entry.load(), "description", "")


def available_rewards() -> dict[str, str]:
  """Value names and spec forms, each with a one-line description."""
  out = {name: _description(e) for name, e in plugins.entries("value").items()}
  out.update({f"{p}:...": e.description for p, e in plugins.entries("value_spec").items()})
  return out


def split_name(spec: str) -> tuple[str | None, str]:
  """(NAME or None, the spec without its NAME= prefix)."""
  head = spec.split(":", 1)[0]
  if "=" in head:
    rename, spec = spec.split("=", 1)
    return rename, spec
  return None, spec


def value_name(spec: str) -> str:
  """The column name a value spec gets: NAME in NAME=SPEC, else the spec itself."""
  name, rest = split_name(spec)
  return name or rest


def _factory(spec: str) -> tuple[Callable[..., RewardFn], tuple[Any, ...]] | None:
  """The factory behind a spec (without NAME=) and its positional arguments, or None when unknown."""
  entry = plugins.get("value", spec)
  if entry is not None:
    return entry.load(), ()
  if ":" in spec:
    prefix, rest = spec.split(":", 1)
    entry = plugins.get("value_spec", prefix)
    if entry is not None:
      return entry.load(), (rest,)
  return None


def get_reward(spec: str | RewardFn, **kwargs) -> RewardFn:
  """Resolve a value name or spec to a `RewardFn`.

  Args:
    spec: a registered name (`available_rewards()`), or a checkpoint spec:
      `classifier:PATH[:LABEL[:OUTPUT]]` (a BERT/DistilBERT/GPT-2/Llama/OPT *ForSequenceClassification
      directory; LABEL a label name or index, OUTPUT one of logprob (default), prob, logit), or
      `reward_model:PATH` (a one-logit reward model scored on the Anthropic HH template). An optional
      `NAME=` prefix renames the value's column: `"gpt2-harmless=reward_model:/ckpt/harmless"`.
      A `RewardFn` is returned as is.
    **kwargs: options for the value's constructor (batch_size, cache directories, ...).

  Raises:
    RewardError: unknown name, listing the known ones.
  """
  if isinstance(spec, RewardFn):
    return spec
  if not isinstance(spec, str) or not spec.strip():
    raise RewardError(f"a reward value is named by a non-empty string, got {spec!r}")
  rename, spec = split_name(spec)
  found = _factory(spec)
  if found is None:
    known = ", ".join(available_rewards())
    raise RewardError(f"unknown reward value {spec!r}; known values: {known}")
  factory, args = found
  value = factory(*args, **kwargs)
  if rename:
    value.name = rename
  return value


def is_known(spec: str) -> bool:
  """Whether `spec` (a name or a spec, NAME= allowed) names a registered value."""
  return isinstance(spec, str) and _factory(split_name(spec)[1]) is not None


def accepts(spec: str, option: str) -> bool:
  """Whether the constructor behind `spec` takes keyword `option` (e.g. batch_size); launchers use it to pass
  shared options only to the values that have them."""
  found = _factory(split_name(spec)[1])
  if found is None:
    return False
  params = inspect.signature(found[0]).parameters.values()
  return any(p.name == option or p.kind is p.VAR_KEYWORD for p in params)
