"""The one config schema for values and palettes, shared by MAP-D runs (`configs/default.py`) and MAP-F runs
(`configs/ppo_default.py`), and the one parser of the palette mini-language.

Every config names its values and palettes the same way:

    config.targeted       "humor,positiveness,harmlessness"   values a palette may raise
    config.kept           "coherence,diversity,perplexity"    values held at their pilot mean
    config.value_options  {"perplexity": {"min_bucket": 16}}  constructor options per value name
    config.palettes       "HHH-50%;humor-80%"                 palettes (`parse_palettes`)

A value is a registered name or a spec (`map_jax.rewards.get_reward`), optionally renamed with NAME=SPEC
(`gpt2-helpful=reward_model:DIR`). Lists are comma-separated strings, so every field is one command-line flag
(`--config.targeted=humor,positiveness`); tuples and lists of strings are accepted too.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from map_jax.rewards.registry import value_name


def names_list(field: str, value: Any) -> list[str]:
  """A comma-separated string (or a sequence of strings) as a list of non-empty, stripped names."""
  if value is None:
    return []
  if isinstance(value, str):
    items = value.split(",")
  elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
    items = list(value)
  else:
    raise ValueError(f"config.{field} must be a comma-separated string of value names, got {value!r}")
  return [v.strip() for v in items if v.strip()]


def value_specs(config) -> tuple[list[str], list[str]]:
  """(targeted, kept) value specs of a config: built-in names or checkpoint specs such as
  `gpt2-helpful=reward_model:DIR` (see `map_jax.rewards.get_reward`)."""
  targeted, kept = names_list("targeted", config.targeted), names_list("kept", config.kept)
  if not targeted:
    raise ValueError("config.targeted names no value: MAP needs at least one value to raise")
  return targeted, kept


def value_names(config) -> tuple[list[str], list[str]]:
  """(targeted, kept) column names of the values (NAME in NAME=SPEC), checked for clashes."""
  targeted, kept = ([value_name(v) for v in group] for group in value_specs(config))
  both = sorted(set(targeted) & set(kept))
  if both:
    raise ValueError(f"values {both} are both targeted and kept")
  names = targeted + kept
  dupes = sorted({v for v in names if names.count(v) > 1})
  if dupes:
    raise ValueError(f"values {dupes} are listed more than once")
  return targeted, kept


def value_options(config) -> dict[str, dict]:
  """`config.value_options` as {value name: options}, every name one of the config's values."""
  raw = config.get("value_options") or {}
  options = raw.to_dict() if hasattr(raw, "to_dict") else dict(raw)
  targeted, kept = value_names(config)
  unknown = sorted(set(options) - set(targeted + kept))
  if unknown:
    raise ValueError(f"config.value_options names {unknown}, which are not among the values")
  bad = [k for k, v in options.items() if not isinstance(v, dict)]
  if bad:
    raise ValueError(f"config.value_options.{bad[0]} must map option names to values, got {options[bad[0]]!r}")
  return options


_SHORTHAND = re.compile(r"^(?P<who>.+)-(?P<q>\d+(\.\d+)?)%?$")


def parse_palettes(spec: str, targeted: Sequence[str], kept: Sequence[str]) -> list[tuple[str, dict]]:
  """Palettes from a ';'-separated spec: [(label, {value: quantile})], values not named kept at their mean.

  Each item is one of
    "HHH-70%"              every targeted value at its 70% quantile (the paper's HHH-q% palettes; "all-70%"
                           is the same);
    "humor-80%"            one targeted value at its 80% quantile, the other targeted values at their mean
                           (the paper's single-value palettes);
    "LABEL=humor:0.8,harmlessness:0.6"   explicit quantiles per value.
  Quantiles become levels with `quantile_palette` (c_i = max(mean_i, Q_i(q_i)), the paper's rule); kept
  values are always at their pilot mean.
  """
  if not isinstance(spec, str):
    raise ValueError(f"config.palettes must be a ';'-separated string of palettes, got {spec!r}")
  out = []
  for item in (s.strip() for s in spec.split(";")):
    if not item:
      continue
    if "=" in item:
      label, body = (s.strip() for s in item.split("=", 1))
      qs = {}
      for part in body.split(","):
        name, _, q = part.partition(":")
        name = name.strip()
        try:
          qs[name] = float(q)
        except ValueError:
          raise ValueError(f"palette {label!r}: {part!r} is not VALUE:QUANTILE") from None
    else:
      m = _SHORTHAND.match(item)
      if not m:
        raise ValueError(f"palette {item!r}: expected GROUP-Q% (e.g. HHH-70%, humor-80%) or LABEL=VALUE:Q,...")
      label, who, q = item, m.group("who"), float(m.group("q"))
      q = q / 100.0 if q > 1 else q
      qs = {v: q for v in targeted} if who.lower() in ("hhh", "all") else {who: q}
    for name, q in qs.items():
      if name in kept:
        raise ValueError(f"palette {label!r} raises {name!r}, which is kept at its mean")
      if name not in targeted:
        raise ValueError(f"palette {label!r} names {name!r}, not a targeted value ({', '.join(targeted)})")
      if not 0.0 <= q <= 1.0:
        raise ValueError(f"palette {label!r}: quantile {q} for {name!r} is outside [0, 1]")
    out.append((label, qs))
  labels = [lab for lab, _ in out]
  if not out:
    raise ValueError("config.palettes names no palette")
  if len(set(labels)) != len(labels):
    raise ValueError(f"palette labels repeat: {labels}")
  return out


def palette_quantiles(qs: dict, names: Sequence[str]) -> list[float | None]:
  """One parsed palette as a quantile per value in `names` order (None: kept at its mean)."""
  return [qs.get(v) for v in names]


__all__ = [
  "names_list",
  "palette_quantiles",
  "parse_palettes",
  "value_name",
  "value_names",
  "value_options",
  "value_specs",
]
