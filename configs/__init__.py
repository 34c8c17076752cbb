"""Run configs: one file per experiment, each with `get_config()` (launchers take them as --config=FILE)."""

import importlib.util
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def load(name: str):
  """`get_config()` of configs/NAME.py; works for file names that are not module names (paper_opt1.3b)."""
  path = os.path.join(_HERE, f"{name}.py")
  if not os.path.isfile(path):
    known = sorted(f[:-3] for f in os.listdir(_HERE) if f.endswith(".py") and not f.startswith("_"))
    raise FileNotFoundError(f"no config {path}; configs: {', '.join(known)}")
  spec = importlib.util.spec_from_file_location(f"configs._{name.replace('.', '_')}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
