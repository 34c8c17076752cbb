"""Name -> reward value: built-in names ("humor", "coherence", ...) and checkpoint specs ("classifier:PATH:LABEL").

Builders are registered lazily (a name maps to a factory), so listing or resolving one value never loads the
models of the others; the scoring launcher relies on that to hold one reward model in memory at a time.
"""

from __future__ import annotations

from typing import Callable

from map_jax.rewards.base import RewardError, RewardFn

_BUILTINS: dict[str, tuple[Callable[..., RewardFn], str]] = {}
# spec prefix -> (factory taking the rest of the spec, help line)
_SPECS: dict[str, tuple[Callable[..., RewardFn], str]] = {}


def register(name: str, factory: Callable[..., RewardFn], description: str = "") -> None:
    """Register a built-in value: `get_reward(name, **kw)` then calls `factory(**kw)`."""
    _BUILTINS[name] = (factory, description)


def register_spec(prefix: str, factory: Callable[..., RewardFn], usage: str = "") -> None:
    """Register a spec family: `get_reward("prefix:REST", **kw)` calls `factory("REST", **kw)`."""
    _SPECS[prefix] = (factory, usage)


def available_rewards() -> dict[str, str]:
    """Built-in value names and spec forms, each with a one-line description."""
    _load_builtins()
    out = {n: d for n, (_, d) in sorted(_BUILTINS.items())}
    out.update({f"{p}:...": u for p, (_, u) in sorted(_SPECS.items())})
    return out


def get_reward(spec: str | RewardFn, **kwargs) -> RewardFn:
    """Resolve a value name or spec to a `RewardFn`.

    Args:
      spec: a built-in name (`available_rewards()`), or a checkpoint spec:
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
    _load_builtins()
    rename = None
    head = spec.split(":", 1)[0]
    if "=" in head:
        rename, spec = spec.split("=", 1)
    if spec in _BUILTINS:
        value = _BUILTINS[spec][0](**kwargs)
    elif ":" in spec and spec.split(":", 1)[0] in _SPECS:
        prefix, rest = spec.split(":", 1)
        value = _SPECS[prefix][0](rest, **kwargs)
    else:
        known = ", ".join(available_rewards())
        raise RewardError(f"unknown reward value {spec!r}; known values: {known}")
    if rename:
        value.name = rename
    return value


def accepts(spec: str, option: str) -> bool:
    """Whether the constructor behind `spec` takes keyword `option` (e.g. batch_size); launchers use it to pass
    shared options only to the values that have them."""
    import inspect
    _load_builtins()
    spec = spec.split("=", 1)[1] if "=" in spec.split(":", 1)[0] else spec
    entry = _BUILTINS.get(spec) or _SPECS.get(spec.split(":", 1)[0])
    if entry is None:
        return False
    params = inspect.signature(entry[0]).parameters.values()
    return any(p.name == option or p.kind is p.VAR_KEYWORD for p in params)


def _load_builtins() -> None:
    # Importing the modules registers their values; they import heavy libraries only when a value is built.
    from map_jax.rewards import checkpoint, heads, lexicon, models, text  # noqa: F401
