r"""What the palette explorer shows for one palette: a pure function of the pilot set and the slider positions.

A palette is one quantile per value on the base model's pilot distribution (None: keep the value at its mean),
turned into levels by `quantile_palette` (c_i = max(μ_i, Q_i(q_i)), the rule `run_map`'s palettes follow, so an
exported `--config.palettes` string reproduces the palette exactly). For it `Explorer.view` returns, from
`solve_dual` in float64: feasibility with the LP margin, λ, the realized levels as values and as quantiles of the
pilot, ESS and KL, the column of dλ/dc for the value just moved (what raising it by one slider step costs in
λ), the certificate of an infeasible palette in words, the MAP-D pick for each test prompt beside the original
answer, and the pilot responses that gain the most weight under p_λ.

Nothing here serves HTTP or reads files; `map_jax.explorer.server` does, and `Explorer.from_workdir` reads a
run directory's tables.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from map_jax.align.decode import select
from map_jax.core import frontier
from map_jax.core.dual import prepare_pilot, solve_dual
from map_jax.core.implicit import tilted_moments
from map_jax.core.palette import adjust_palette, quantile_palette
from map_jax.core.sensitivity import sensitivity
from map_jax.eval.report import LOW_ESS, signed

STEP = 0.01  # one slider step on the quantile scale
ADJUST_METHODS = ("interpolate", "greedy")


class BadRequest(ValueError):
  """A request the explorer cannot answer (unknown value, quantile out of range, ...); the message says why."""


_solve = jax.jit(solve_dual)


class Explorer:
  """The pilot set, its value names and the texts shown beside the numbers.

  Args:
    rewards: [n, m] pilot rewards.
    names: the m value names.
    pilot_texts: n (prompt, response) pairs of the pilot rows, or None.
    test: {"prompts": [P], "rewards": [P, k + 1, m], "texts": [P][k + 1]} the test prompts' original answer
      (sample 0) and k candidates, or None.
    targeted: values raised by default (others start kept at their mean).
  """

  def __init__(
    self,
    rewards,
    names: Sequence[str],
    *,
    pilot_texts: Sequence[tuple[str, str]] | None = None,
    test: dict | None = None,
    targeted: Sequence[str] | None = None,
  ):
    self.R = np.asarray(rewards, np.float64)
    if self.R.ndim != 2 or self.R.shape[1] != len(names) or self.R.shape[0] < 2:
      raise ValueError(f"rewards must be [n >= 2, {len(names)}], got {self.R.shape}")
    if not np.all(np.isfinite(self.R)):
      raise ValueError("rewards hold non-finite values")
    self.names = list(names)
    self.pilot_texts = list(pilot_texts) if pilot_texts is not None else None
    self.test = test
    self.targeted = list(targeted) if targeted else list(names)
    with jax.enable_x64(True):
      self._R = jnp.asarray(self.R)
      self._pilot = prepare_pilot(self._R)  # built once: every slider move pays only for its own solve
      grid = np.linspace(0.0, 1.0, int(round(1 / STEP)) + 1)
      self.grid_levels = np.quantile(self.R, grid, axis=0).T  # [m, 101]: the level at each slider position
      self.mean = self.R.mean(0)
      self.mean_quantile = np.asarray(frontier.quantile_levels(self._R, jnp.asarray(self.mean)))

  @classmethod
  def from_workdir(cls, workdir: str) -> "Explorer":
    """The explorer of a `run_map` workdir: its scored pilot, and its test prompts' candidates when present."""
    from map_jax.data.pilot import load_pilot
    from map_jax.data.tables import read_table

    path = os.path.join(workdir, "pilot.rewards.jsonl")
    R, names = load_pilot(path)
    rows = read_table(os.path.join(workdir, "pilot.jsonl"))
    texts = [(r.get("prompt", ""), r.get("response", "")) for r in rows] if len(rows) == len(R) else None
    test, targeted = None, None
    config = os.path.join(workdir, "config.json")
    if os.path.isfile(config):
      with open(config) as f:
        cfg = json.load(f)
      from map_jax.spec import names_list, value_name

      targeted = [value_name(v) for v in names_list("targeted", cfg.get("targeted", ""))]
      k1 = int(cfg.get("decode", {}).get("num_candidates", 0)) + 1
      cand = os.path.join(workdir, "candidates.rewards.jsonl")
      if os.path.isfile(cand) and k1 > 1:
        C, _ = load_pilot(cand, names)
        ctexts = read_table(os.path.join(workdir, "candidates.jsonl"))
        P = C.shape[0] // k1
        test = {
          "prompts": [ctexts[p * k1]["prompt"] for p in range(P)],
          "rewards": np.asarray(C, np.float64).reshape(P, k1, len(names)),
          "texts": [[ctexts[p * k1 + i]["response"] for i in range(k1)] for p in range(P)],
        }
    return cls(R, names, pilot_texts=texts, test=test, targeted=[t for t in targeted or [] if t in names])

  @classmethod
  def from_table(cls, path: str) -> "Explorer":
    """The explorer of any scored table (`experiments.score` output): its value columns, its texts if any."""
    from map_jax.data.pilot import load_pilot
    from map_jax.data.tables import read_table

    R, names = load_pilot(path)
    texts = None
    if not path.endswith(".npy"):
      rows = read_table(path)
      if all(isinstance(r.get("response"), str) for r in rows):
        texts = [(str(r.get("prompt", "")), r["response"]) for r in rows]
    return cls(R, names, pilot_texts=texts)

  def warm_up(self) -> None:
    """Compile what a slider move runs (the solve and dλ/dc, seconds once) before the first user waits on it."""
    start = self.info()["start"]
    self.view(start, next((v for v, q in start.items() if q is not None), None))

  # ----------------------------------------------------------------------------------------------- requests

  def info(self) -> dict:
    """What the page needs once: names, each value's level at every slider position, means, the start."""
    start = {v: (0.7 if v in self.targeted else None) for v in self.names}
    return {
      "values": self.names,
      "n": int(self.R.shape[0]),
      "step": STEP,
      "grid_levels": self.grid_levels.tolist(),
      "mean": self.mean.tolist(),
      "mean_quantile": self.mean_quantile.tolist(),
      "start": start,
      "low_ess": LOW_ESS,
      "has_test": self.test is not None,
      "has_texts": self.pilot_texts is not None,
    }

  def quantiles(self, request: Any) -> list[float | None]:
    """The request's {value: quantile or null} as a list in value order, checked."""
    if not isinstance(request, dict):
      raise BadRequest("quantiles must be an object {value: quantile in [0, 1] or null}")
    unknown = sorted(set(request) - set(self.names))
    if unknown:
      raise BadRequest(f"unknown values {unknown}; values: {', '.join(self.names)}")
    out = []
    for v in self.names:
      q = request.get(v)
      if q is None:
        out.append(None)
        continue
      if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or not 0.0 <= q <= 1.0:
        raise BadRequest(f"quantile of {v!r} must be a number in [0, 1] or null, got {q!r}")
      out.append(float(q))
    return out

  def palette(self, qs: Sequence[float | None]) -> np.ndarray:
    with jax.enable_x64(True):
      return np.asarray(quantile_palette(self._R, list(qs)))

  def view(self, quantiles: Any, moved: str | None = None) -> dict:
    """Everything the page shows for one palette (see the module docstring)."""
    qs = self.quantiles(quantiles)
    if moved is not None and moved not in self.names:
      raise BadRequest(f"moved names no value: {moved!r}")
    c = self.palette(qs)
    with jax.enable_x64(True):
      sol = _solve(self._pilot, jnp.asarray(c))
      lam = np.asarray(sol.lam)
      realized = np.asarray(sol.realized)
      out = {
        "quantiles": dict(zip(self.names, qs)),
        "palette": c.tolist(),
        "palette_quantile": np.asarray(frontier.quantile_levels(self._R, jnp.asarray(c))).tolist(),
        "feasible": bool(sol.feasible),
        "margin": float(sol.margin),
        "margin_text": signed(float(sol.margin), 4),
        "lambda": lam.tolist(),
        "realized": realized.tolist(),
        "realized_quantile": np.asarray(frontier.quantile_levels(self._R, sol.realized)).tolist(),
        "ess": float(sol.ess),
        "kl": float(sol.kl),
        "flag": palette_flag(self.names, qs),
        "raised_but_kept": [v for v, q in zip(self.names, qs) if q is not None and v not in self.targeted],
      }
      out["warning"] = (
        f"ESS {out['ess']:.1f} of {self.R.shape[0]} pilot samples is below {LOW_ESS}: λ and the promised levels "
        "rest on too few samples to trust"
        if out["feasible"] and out["ess"] < LOW_ESS
        else None
      )
      out["sensitivity"] = self._sensitivity(c, moved, qs) if out["feasible"] and moved else None
    out["certificate"] = None if out["feasible"] else self._certificate(np.asarray(sol.certificate), c)
    out["decoded"] = self._decoded(lam)
    out["top_pilot"] = self._top_pilot(lam)
    return out

  def adjust(self, quantiles: Any, method: str, priority: Sequence[str] | None = None) -> dict:
    """Adjust an infeasible palette (`adjust_palette`) and return the view of the slider positions that give it."""
    qs = self.quantiles(quantiles)
    if method not in ADJUST_METHODS:
      raise BadRequest(f"method must be one of {ADJUST_METHODS}, got {method!r}")
    order = None
    if method == "greedy":
      if not isinstance(priority, list) or sorted(priority) != sorted(self.names):
        raise BadRequest(f"priority must list every value once: {', '.join(self.names)}")
      order = [self.names.index(v) for v in priority]
    c = self.palette(qs)
    with jax.enable_x64(True):
      adj = adjust_palette(self._R, jnp.asarray(c), method=method, priority=order)
      level = np.asarray(adj.palette)
      # The slider position whose level is the adjusted one: the largest grid quantile not above it (a palette
      # at or below a feasible one is feasible), and keep for values back at their mean.
    new = {}
    for i, v in enumerate(self.names):
      if qs[i] is None or level[i] <= self.mean[i] + 1e-12 * (1 + abs(self.mean[i])):
        new[v] = None if qs[i] is None else 0.0
        continue
      below = np.flatnonzero(self.grid_levels[i] <= level[i] + 1e-12 * (1 + abs(level[i])))
      new[v] = round(float(below[-1]) * STEP, 10) if below.size else 0.0
    out = self.view(new)
    out["adjusted"] = {"method": method, "palette": level.tolist(), "rho": float(adj.rho)}
    return out

  # --------------------------------------------------------------------------------------------- the parts

  def _sensitivity(self, c: np.ndarray, moved: str, qs) -> dict:
    j = self.names.index(moved)
    q = qs[j] if qs[j] is not None else self.mean_quantile[j]
    up = min(1.0, q + STEP)
    step_level = float(np.quantile(self.R[:, j], up) - np.quantile(self.R[:, j], q))
    try:
      d_lam, _ = sensitivity(self._R, jnp.asarray(c))
    except ValueError as e:
      return {"value": moved, "error": str(e)}
    col = np.asarray(d_lam)[:, j]
    return {"value": moved, "step_level": step_level, "d_lambda": (col * step_level).tolist()}

  def _certificate(self, d: np.ndarray, c: np.ndarray) -> dict:
    """The infeasibility certificate in words: the combination of values no pilot sample reaches."""
    used = [i for i in range(len(d)) if d[i] > 1e-6]
    best = float((self.R[:, used] @ d[used]).max())
    asked = float(d[used] @ c[used])
    combo = " + ".join(f"{d[i]:.2f}·{self.names[i]}" for i in used)
    return {
      "weights": d.tolist(),
      "values": [self.names[i] for i in used],
      "asked": asked,
      "best": best,
      "text": (
        f"No mixture of pilot responses reaches {', '.join(self.names[i] for i in used)} together: the best pilot "
        f"response scores {best:.4g} on {combo}, the palette asks {asked:.4g} (short by {asked - best:.4g})."
      ),
    }

  def _decoded(self, lam: np.ndarray, limit: int = 8) -> list[dict] | None:
    """Per test prompt: the original answer and the candidate MAP-D picks most often under λ, with its chance."""
    if self.test is None:
      return None
    C = self.test["rewards"][:limit, 1:]  # [P, k, m]
    with jax.enable_x64(True):
      sel = select(jax.random.key(0), jnp.asarray(C), jnp.asarray(lam), mode="argmax")
      index, probs = np.asarray(sel.index), np.asarray(sel.probs)
    out = []
    for p in range(C.shape[0]):
      i = int(index[p])
      out.append(
        {
          "prompt": self.test["prompts"][p],
          "original": self.test["texts"][p][0],
          "chosen": self.test["texts"][p][i + 1],
          "probability": float(probs[p, i]),
          "chosen_rewards": C[p, i].tolist(),
          "original_rewards": self.test["rewards"][p, 0].tolist(),
        }
      )
    return out

  def _top_pilot(self, lam: np.ndarray, top: int = 5) -> list[dict] | None:
    """The pilot rows whose weight p_λ / p0 = n·softmax(Rλ) is largest."""
    if self.pilot_texts is None:
      return None
    with jax.enable_x64(True):
      w = np.asarray(tilted_moments(self._R, jnp.asarray(lam))[0]) * len(self.R)
    idx = np.argsort(-w, kind="stable")[:top]
    return [
      {
        "prompt": self.pilot_texts[i][0],
        "response": self.pilot_texts[i][1],
        "weight": float(w[i]),
        "rewards": self.R[i].tolist(),
      }
      for i in idx
    ]


def palette_flag(names: Sequence[str], qs: Sequence[float | None], label: str = "explorer") -> str | None:
  """The palette as a `--config.palettes=` item (`map_jax.spec.parse_palettes`): LABEL=VALUE:Q,... over the
  values not kept at their mean; None when every value is kept (nothing to align)."""
  parts = [f"{v}:{round(q, 4):g}" for v, q in zip(names, qs) if q is not None]
  return f"{label}={','.join(parts)}" if parts else None


__all__ = ["ADJUST_METHODS", "BadRequest", "Explorer", "STEP", "palette_flag"]
