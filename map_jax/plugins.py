"""One way to plug things in: reward values, model families and alignment methods, from map_jax or a user's module.

Every extension point is a *kind* with a table of named entries:

    value         name -> factory(**options) -> RewardFn              ("humor", "positiveness", ...)
    value_spec    prefix -> factory(rest, **options) -> RewardFn      ("classifier:PATH:LABEL", ...)
    model_family  HF model_type -> config class (a `map_jax.models.family.ModelFamily`)  ("llama", "gpt2", ...)
    method        name -> an alignment method                         ("decode", "ppo", ...)

An entry's target is either the object itself or a ``"module:attribute"`` reference resolved on first use, so
listing what is available imports nothing heavy, and map_jax declares its built-ins without importing the
modules that define them (no module imports the table that lists it, so no import cycle).

A user's code registers the same way map_jax does, in a module of its own:

    # my_pkg/values.py
    from map_jax import plugins
    plugins.register("value", "brevity", "my_pkg.values:Brevity", "1 / (1 + words)")

and makes it known either by naming it on any launcher (``--config.plugins=my_pkg.values`` or
``--plugins=my_pkg.values``; `load_plugins` imports it) or, for an installed package, by a Python entry point
in the group ``map_jax.plugins`` (``[project.entry-points."map_jax.plugins"] my_pkg = "my_pkg.values"``),
which is imported the first time any table is read.

This module imports nothing from map_jax: every layer can register into it.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from typing import Any, Iterable

KINDS = ("value", "value_spec", "model_family", "method")
# Where map_jax declares each kind's built-ins; imported (by name, so no import edge) the first time that kind is
# read, so a lookup finds the built-ins whatever was imported before.
_BUILTINS = {
  "value": "map_jax.rewards.registry",
  "value_spec": "map_jax.rewards.registry",
  "model_family": "map_jax.models.loading",
  "method": "map_jax.align",
}
ENTRY_POINT_GROUP = "map_jax.plugins"


class PluginError(ValueError):
  """An unknown kind or name, a clash between two registrations, or a plugin module that cannot be loaded."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """One registered extension: its kind, name, target (object or "module:attribute") and a one-line help."""

  kind: str
  name: str
  target: Any
  description: str = ""

  def load(self) -> Any:
    """The target object, importing its module on first use."""
    if not isinstance(self.target, str):
      return self.target
    module, _, attr = self.target.partition(":")
    try:
      obj = importlib.import_module(module)
      for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
      raise PluginError(f"{self.kind} {self.name!r}: cannot load {self.target!r} ({type(e).__name__}: {e})") from e
    return obj


_TABLES: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
_entry_points_loaded = False


def _check_kind(kind: str) -> None:
  if kind not in _TABLES:
    raise PluginError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")


def _declare_builtins(kind: str) -> None:
  importlib.import_module(_BUILTINS[kind])


def register(kind: str, name: str, target: Any, description: str = "", *, replace: bool = False) -> None:
  """Register `target` as the `kind` extension called `name`.

  Args:
    kind: one of `KINDS`.
    name: the name users write (a value name, a spec prefix, a model_type, a method name).
    target: the object, or a "module:attribute" string resolved on first use.
    description: one line shown where the entries are listed (`available_rewards()`, `--help` texts).
    replace: allow replacing an entry of the same name; otherwise registering a name twice with another
      target is an error (two plugins claiming one name must not silently shadow each other).
  """
  _check_kind(kind)
  if not isinstance(name, str) or not name.strip() or ":" in name or "=" in name:
    raise PluginError(f"{kind} name {name!r}: a non-empty string without ':' or '='")
  old = _TABLES[kind].get(name)
  if old is not None and old.target != target and not replace:
    raise PluginError(f"{kind} {name!r} is already registered ({old.target!r}); pass replace=True to override it")
  _TABLES[kind][name] = Entry(kind, name, target, description)


def entries(kind: str) -> dict[str, Entry]:
  """The registered `kind` entries by name (map_jax's built-ins, then plugins), sorted by name."""
  _check_kind(kind)
  _declare_builtins(kind)
  _load_entry_points()
  return dict(sorted(_TABLES[kind].items()))


def get(kind: str, name: str) -> Entry | None:
  """The `kind` entry called `name`, or None."""
  _check_kind(kind)
  if name not in _TABLES[kind]:
    _declare_builtins(kind)
  if name not in _TABLES[kind]:
    _load_entry_points()
  return _TABLES[kind].get(name)


def lookup(kind: str, name: str) -> Any:
  """The loaded target of the `kind` entry `name`; an unknown name lists the known ones."""
  entry = get(kind, name)
  if entry is None:
    known = ", ".join(entries(kind)) or "none"
    raise PluginError(f"unknown {kind} {name!r}; known: {known}")
  return entry.load()


def load_plugins(modules: Iterable[str] | str | None) -> list[str]:
  """Import user modules that register extensions (comma-separated string or list); returns their names.

  A module that cannot be imported is a `PluginError` naming it and the cause.
  """
  if isinstance(modules, str):
    modules = modules.split(",")
  names = [m.strip() for m in modules or () if m and m.strip()]
  for name in names:
    try:
      importlib.import_module(name)
    except Exception as e:  # a plugin's own error, whatever it is, is reported with the plugin's name
      raise PluginError(f"plugin module {name!r} failed to import ({type(e).__name__}: {e})") from e
  return names


def _load_entry_points() -> None:
  """Import the modules that installed packages declare under the `map_jax.plugins` entry-point group."""
  global _entry_points_loaded
  if _entry_points_loaded:
    return
  _entry_points_loaded = True
  for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
    try:
      obj = ep.load()
    except Exception as e:  # noqa: BLE001 (reported with the entry point's name)
      raise PluginError(
        f"entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP!r} failed to load ({type(e).__name__}: {e})"
      ) from e
    if callable(obj) and not isinstance(obj, type):
      obj()  # an entry point may name a function that registers, instead of a module that does on import


__all__ = ["ENTRY_POINT_GROUP", "Entry", "KINDS", "PluginError", "entries", "get", "load_plugins", "lookup", "register"]
