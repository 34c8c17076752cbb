"""Checks of pilot reward matrices and palettes where they enter the library.

The solvers are traceable JAX functions and cannot raise on values inside ``jit``;
these checks run on concrete inputs (the public entry points call them when the
arguments are not tracers) and name the offending rows and values.
"""

from typing import Sequence

import jax
import numpy as np

_MAX_LISTED = 5


def _value_name(i: int, names: Sequence[str] | None) -> str:
  return f"value {names[i]!r}" if names is not None else f"value column {i}"


def is_concrete(*arrays) -> bool:
  """True when none of ``arrays`` is a tracer, so their values can be inspected."""
  return not any(isinstance(a, jax.core.Tracer) for a in arrays)


def check_rewards(rewards, names: Sequence[str] | None = None) -> np.ndarray:
  """Validates a pilot reward matrix R (n × m) and returns it as a NumPy array.

  Raises:
    ValueError: R is not two-dimensional, has no rows or no values, has a number of
      columns different from ``names``, or holds NaN/inf (the message names the
      value and the first offending rows).
  """
  arr = np.asarray(rewards)
  if arr.ndim != 2:
    raise ValueError(f"rewards must be a 2-D (samples × values) matrix; got shape {arr.shape}.")
  n, m = arr.shape
  if n == 0 or m == 0:
    raise ValueError(f"rewards is empty: {n} samples × {m} values.")
  if names is not None and len(names) != m:
    raise ValueError(f"rewards has {m} value columns but {len(names)} names were given: {list(names)}.")
  if not np.issubdtype(arr.dtype, np.number):
    raise ValueError(f"rewards must be numeric; got dtype {arr.dtype}.")
  bad = ~np.isfinite(arr)
  if bad.any():
    col = int(np.argmax(bad.any(axis=0)))
    rows = np.flatnonzero(bad[:, col])
    listed = ", ".join(str(r) for r in rows[:_MAX_LISTED])
    more = f" and {len(rows) - _MAX_LISTED} more" if len(rows) > _MAX_LISTED else ""
    raise ValueError(f"rewards of {_value_name(col, names)} are not finite (NaN or inf) in rows {listed}{more}.")
  return arr


def check_palette(palette, num_values: int, names: Sequence[str] | None = None) -> np.ndarray:
  """Validates a palette against a reward matrix with ``num_values`` columns."""
  arr = np.asarray(palette)
  if arr.shape != (num_values,):
    raise ValueError(f"palette must have shape ({num_values},), one level per value; got shape {arr.shape}.")
  bad = ~np.isfinite(arr)
  if bad.any():
    i = int(np.argmax(bad))
    raise ValueError(f"palette level of {_value_name(i, names)} is not finite: {arr[i]}.")
  return arr
