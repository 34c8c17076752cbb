r"""Benchmark: map-jax's exact dual solver against the MAP authors' Adam-150 solver.

Reference (a) is a faithful re-implementation of the authors' solver: Adam (lr 0.1) on
τ = log λ from τ = 0 for 150 steps, float32, plain exp/mean/log, NaN meaning
"infeasible"; timed jit-compiled in JAX and, when PyTorch is installed, as eager
PyTorch like the authors' code. (b) is ``map_jax.solve_dual`` (projected Newton +
exact feasibility LP). Both run on the same palettes in the same process; the KKT
residual of every λ is measured independently in float64 NumPy.

  python -m benchmarks.dual_solver [--rewards=PATH] [--num_palettes=10000]

The default pilot set is the MAP authors' OPT-1.3B / Anthropic-harmless data in
examples/map_reference (n = 2,312, m = 6).

  python -m benchmarks.dual_solver --scaling [--sizes=2312:6,1000000:12]

prints the solver at scale instead, against SciPy: L-BFGS-B (float64, bounds λ >= 0, analytic gradient) on the
same dual, the usual general-purpose answer, timed on the same palettes in the same process. Pilot sets of n rows
and m values are drawn from the reference set: its rows resampled with replacement plus noise of 5% of each
column's standard deviation, and for m > 6 further columns that mix the six standardized ones at random plus
noise of half their scale (not copies, which would make the Hessian nearly singular). Palettes lie between the
pilot mean and the 75% quantile of each value. Each (n, m) runs in a process of its own, so its peak resident
memory (ru_maxrss) is its own: measured after the prepared single-palette solves (the process with JAX, R, the
prepared pilot set and the solver; before the unprepared calls, which prepare again, and SciPy's float64 copy) and
again at the end, batched solves included. Columns: prepare = ``prepare_pilot`` once; single =
``solve_dual`` on the prepared set (median over palettes, feasible or not); unprepared = ``solve_dual(R, c)``,
preparation included; SciPy (median over the feasible palettes); the ratio of SciPy to ours on those same
palettes (each the best of three calls after a warm-up); the median ESS of the feasible palettes' tilted pilot
sets (how hard they are: the lower, the further λ from 0); batched palettes/s with ``vmap`` over chunks of --chunk
palettes (fewer where the chunk's (chunk, n) logits would pass 256 MB); KKT residuals of both, in float64 NumPy.

  python -m benchmarks.dual_solver --drag=231200:6,1000000:12

prints slider drags on such pilot sets: palettes in 20 even moves from the pilot mean to the 75% quantile, solved
in turn, each afresh, each started from the previous palette's λ and each from its whole solution, λ and LP basis
(``solve_dual(..., start=)``). The default run ends with the same drag on the reference set, in 100 moves to the
95% quantile.
"""

import json
import os
import resource
import subprocess
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import optimize, special

from benchmarks import hardware
from map_jax.core import feasibility as feas
from map_jax.core.dual import prepare_pilot, solve_dual
from map_jax.data.pilot import load_pilot

_DEFAULT = os.path.join(os.path.dirname(__file__), "..", "examples", "map_reference", "opt1.3b-Anthropic-harmless.json")
_REWARDS = flags.DEFINE_string("rewards", _DEFAULT, "Pilot table.")
_NUM = flags.DEFINE_integer("num_palettes", 10_000, "Palettes in the batched run.")
_SINGLE = flags.DEFINE_integer("num_single", 20, "Palettes timed one at a time.")
_CHUNK = flags.DEFINE_integer("chunk", 2_000, "Palettes per vmapped call in the batched run.")
_REPEATS = flags.DEFINE_integer("repeats", 15, "Passes over the single palettes (median reported).")
_SCALING = flags.DEFINE_bool("scaling", False, "Print the table of the solver at scale against SciPy instead.")
_SIZES = flags.DEFINE_string(
  "sizes",
  ",".join(f"{n}:{m}" for n in (2_312, 23_120, 231_200, 1_000_000) for m in (6, 12, 16)),
  "The (n, m) rows of --scaling, as n:m pairs.",
)
_ROW = flags.DEFINE_string("row", None, "(internal) one n:m row of --scaling in this process; prints JSON.")
_DRAG = flags.DEFINE_string(
  "drag", None, "Print slider drags (mean to 75% quantile, 20 moves) on pilot sets of these n:m sizes instead."
)


def adam150(rewards: jax.Array, palette: jax.Array) -> jax.Array:
  """The authors' solver: 150 Adam steps on τ = log λ, plain exp-mean-log in float32."""
  opt = optax.adam(0.1)

  def loss(tau):
    lam = jnp.exp(tau)
    return -(jnp.dot(lam, palette) - jnp.log(jnp.mean(jnp.exp(rewards @ lam))))

  def step(carry, _):
    tau, state = carry
    updates, state = opt.update(jax.grad(loss)(tau), state)
    return (optax.apply_updates(tau, updates), state), None

  tau0 = jnp.zeros(rewards.shape[1], rewards.dtype)
  (tau, _), _ = jax.lax.scan(step, (tau0, opt.init(tau0)), None, length=150)
  return jnp.exp(tau)  # NaN signals "infeasible" to the authors' code


def torch_adam150(rewards: np.ndarray, palette: np.ndarray) -> np.ndarray:
  import torch  # Only for this reference timing.

  r = torch.tensor(rewards, dtype=torch.float32)
  c = torch.tensor(palette, dtype=torch.float32)
  tau = torch.zeros(r.shape[1], requires_grad=True)
  opt = torch.optim.Adam([tau], lr=0.1)
  for _ in range(150):
    opt.zero_grad()
    lam = torch.exp(tau)
    loss = -(lam @ c - torch.log(torch.mean(torch.exp(r @ lam))))
    loss.backward()
    opt.step()
  return torch.exp(tau).detach().numpy()


def kkt_residual(rewards: np.ndarray, palette: np.ndarray, lam: np.ndarray) -> float:
  """max_i |min(σ_i λ_i, (E_{p_λ}[r_i] − c_i)/σ_i)| in float64 (inf for non-finite λ)."""
  if not np.all(np.isfinite(lam)):
    return np.inf
  lam = np.maximum(lam.astype(np.float64), 0.0)
  w = special.softmax(rewards @ lam)
  sd = rewards.std(axis=0)
  return float(np.max(np.abs(np.minimum(sd * lam, (w @ rewards - palette) / sd))))


# Wall-clock seconds, and the process's CPU seconds: on a shared machine the second is
# the time the work itself took (the run is meant to be pinned to one core, where
# XLA:CPU cannot spread it over threads).
_CPU = {}


def time_single(fn, palettes, repeats) -> tuple[float, list]:
  """Seconds per palette, solved one call at a time: the median over `repeats` passes
  over the palettes (a pass of 20 calls lasts milliseconds, so one pass alone mostly
  measures the machine's noise)."""
  jax.block_until_ready(fn(palettes[0]))  # compile
  walls, cpus = [], []
  for _ in range(repeats):
    outs = []
    start, cpu = time.perf_counter(), time.process_time()
    for c in palettes:
      outs.append(jax.block_until_ready(fn(c)))
    cpus.append((time.process_time() - cpu) / len(palettes))
    walls.append((time.perf_counter() - start) / len(palettes))
  _CPU[fn] = float(np.median(cpus))
  return float(np.median(walls)), outs


def time_batched(fn, palettes, chunk) -> tuple[float, list]:
  chunks = [palettes[i : i + chunk] for i in range(0, len(palettes), chunk)]
  if len(chunks[-1]) != chunk:
    chunks[-1] = np.concatenate([chunks[-1], np.repeat(chunks[-1][-1:], chunk - len(chunks[-1]), 0)])
  jax.block_until_ready(fn(chunks[0]))  # compile
  start, cpu = time.perf_counter(), time.process_time()
  outs = [jax.block_until_ready(fn(c)) for c in chunks]
  _CPU[fn] = time.process_time() - cpu
  return time.perf_counter() - start, outs


def scaled_pilot(reference: np.ndarray, n: int, m: int, seed: int = 0) -> np.ndarray:
  """An (n, m) float32 pilot set drawn from the reference rows (see the module docstring)."""
  rng = np.random.default_rng(seed)
  reference = reference.astype(np.float32)
  base = reference[rng.integers(0, len(reference), n)]
  sd = reference.std(0)
  out = base + 0.05 * sd * rng.standard_normal(base.shape, np.float32)
  if m > out.shape[1]:
    z = (base - reference.mean(0)) / sd
    mix = rng.normal(size=(reference.shape[1], m - out.shape[1])).astype(np.float32) / np.sqrt(reference.shape[1])
    out = np.concatenate([out, z @ mix + 0.5 * rng.standard_normal((n, m - out.shape[1]), np.float32)], axis=1)
  return out[:, :m]


def scipy_dual(rewards: np.ndarray, palette: np.ndarray) -> np.ndarray:
  """λ by SciPy's L-BFGS-B on −g(λ) with λ >= 0, float64, analytic gradient."""

  def f(lam):
    logits = rewards @ lam
    lse = special.logsumexp(logits)
    w = np.exp(logits - lse)
    return lse - np.log(len(rewards)) - lam @ palette, rewards.T @ w - palette

  m = rewards.shape[1]
  out = optimize.minimize(f, np.zeros(m), jac=True, method="L-BFGS-B", bounds=[(0, None)] * m)
  return out.x


def slider_drag(pilot, c_from: np.ndarray, c_to: np.ndarray, moves: int = 100) -> dict:
  """A slider drag: `moves` palettes evenly from c_from to c_to solved in turn, each afresh, each started from the
  previous palette's λ alone, and each from its whole solution (λ and LP basis): for each, ms per palette (the
  best of three drags) and Newton steps per palette. And the LP alone (``feasibility``) in the same drag, afresh
  and from the previous basis: ms and pivots per palette (DualSolution does not report its pivots)."""
  path = jnp.asarray(c_from + np.linspace(0, 1, moves)[:, None] * (c_to - c_from), pilot.rewards.dtype)
  solve = jax.jit(solve_dual)
  lp = jax.jit(lambda c, start=None: feas.feasibility(pilot.rewards, c, prepared=pilot.lp, start=start))

  def drag(start):
    previous, steps = None, 0
    for c in path:
      given = None if previous is None else {"afresh": None, "λ": previous.lam, "solution": previous}[start]
      previous = solve(pilot, c, start=given)
      steps += int(previous.num_steps)
    return steps

  def lp_drag(warm):
    previous, total = None, 0
    for c in path:
      previous = lp(c, previous.basis if warm and previous is not None else None)
      total += int(previous.num_steps)
    return total

  out = {name: (1e3 * hardware.best_seconds(lambda: drag(name), 3) / moves, drag(name) / moves) for name in _STARTS}
  for name, warm in (("lp afresh", False), ("lp from basis", True)):
    out[name] = (1e3 * hardware.best_seconds(lambda: lp_drag(warm), 3) / moves, lp_drag(warm) / moves)
  return out


_STARTS = ("afresh", "λ", "solution")


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def scaling_row(reference: np.ndarray, n: int, m: int) -> dict:
  """One row of the scaling table, measured in this process."""
  r32 = scaled_pilot(reference, n, m)
  rng = np.random.default_rng(1)
  c0, q75 = r32.mean(0, dtype=np.float64), np.quantile(r32, 0.75, axis=0)
  palettes = (c0 + rng.uniform(size=(max(_SINGLE.value, 64), m)) * (q75 - c0)).astype(np.float32)
  few = 5 if n * m > 2_000_000 else _SINGLE.value
  single = palettes[:few]
  R = jnp.asarray(r32)

  jax.block_until_ready(prepare_pilot(R))
  t0 = time.perf_counter()
  pilot = jax.block_until_ready(prepare_pilot(R))
  t_prepare = time.perf_counter() - t0
  repeats = 3 if n * m > 2_000_000 else _REPEATS.value
  t_single, outs = time_single(lambda c: solve_dual(pilot, c), single, repeats)
  rss_single = _peak_rss_gb()
  t_unprepared, _ = time_single(lambda c: solve_dual(R, c), single, 1)
  r64 = r32.astype(np.float64)
  # SciPy on the palettes the LP finds feasible: on the others the dual is unbounded and L-BFGS-B runs to its
  # iteration limit with no verdict (ours answers those with a certificate, at the cost of the LP alone).
  feasible = [bool(o.feasible) for o in outs]
  t_scipy, res_ours, res_scipy = [], [], []
  for c, o, f in zip(single, outs, feasible):
    if not f:
      continue
    start = time.perf_counter()
    lam = scipy_dual(r64, c.astype(np.float64))
    t_scipy.append(time.perf_counter() - start)
    res_scipy.append(kkt_residual(r64, c, lam))
    res_ours.append(kkt_residual(r64, c, np.asarray(o.lam)))
  # Ours on the same feasible palettes alone, for the ratio: each the best of three calls after a warm-up.
  t_single_feasible = float(
    np.median([hardware.best_seconds(lambda: solve_dual(pilot, c), 3) for c, f in zip(single, feasible) if f])
  )

  chunk = max(1, min(_CHUNK.value, 256, (256 << 20) // (4 * n)))
  # The prepared set is an argument, not a constant closed over: XLA would fold hundreds of MB into the program.
  batched = jax.jit(jax.vmap(solve_dual, in_axes=(None, 0)))
  t_batched, _ = time_batched(lambda c: batched(pilot, c), palettes, chunk)
  return {
    "n": n,
    "m": m,
    "prepare_ms": 1e3 * t_prepare,
    "single_ms": 1e3 * t_single,
    "unprepared_ms": 1e3 * t_unprepared,
    "scipy_ms": 1e3 * float(np.median(t_scipy)),
    "single_feasible_ms": 1e3 * t_single_feasible,
    "palettes_per_s": len(palettes) / t_batched,
    "chunk": chunk,
    "kkt_ours": float(np.median(res_ours)) if res_ours else float("nan"),
    "kkt_scipy": float(np.median(res_scipy)) if res_scipy else float("nan"),
    "feasible": f"{sum(feasible)}/{len(feasible)}",
    "ess": float(np.median([float(o.ess) for o, f in zip(outs, feasible) if f])) if any(feasible) else float("nan"),
    "rss_single_gb": rss_single,
    "rss_gb": _peak_rss_gb(),
  }


def scaling_table(sizes: list[tuple[int, int]]) -> list[dict]:
  """Every (n, m) row in a fresh process of its own; prints the table as rows arrive."""
  print(f"solver at scale: float32 ours, float64 SciPy L-BFGS-B; {os.cpu_count()} cores, jax {jax.__version__}")
  header = (
    "| n | m | prepare | single palette | unprepared | SciPy (feasible) | SciPy / ours (feasible) | palettes/s (chunk) | "
    "KKT ours / SciPy | feasible | median ESS | peak RSS single / all |"
  )
  print(header)
  print("|" + "---|" * header.count(" | ") + "---|")
  rows = []
  for n, m in sizes:
    cmd = [sys.executable, "-m", "benchmarks.dual_solver", f"--row={n}:{m}", f"--rewards={_REWARDS.value}"]
    cmd += [f"--num_single={_SINGLE.value}", f"--repeats={_REPEATS.value}", f"--chunk={_CHUNK.value}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      print(f"| {n:,} | {m} | failed: {proc.stderr.strip().splitlines()[-1:]} |")
      continue
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    rows.append(row)
    print(
      f"| {n:,} | {m} | {row['prepare_ms']:.1f} ms | {row['single_ms']:.2f} ms | {row['unprepared_ms']:.2f} ms | "
      f"{row['scipy_ms']:.2f} ms | {row['scipy_ms'] / row['single_feasible_ms']:.1f}x | "
      f"{row['palettes_per_s']:,.0f} ({row['chunk']}) | {row['kkt_ours']:.1e} / {row['kkt_scipy']:.1e} | "
      f"{row['feasible']} | {row['ess']:,.0f} | {row['rss_single_gb']:.2f} / {row['rss_gb']:.2f} GB |",
      flush=True,
    )
  return rows


def _reference_rewards() -> np.ndarray:
  names = ["humor", "gpt2-helpful", "gpt2-harmless", "diversity", "coherence", "perplexity"]
  rewards, _ = load_pilot(_REWARDS.value, names if "map_reference" in _REWARDS.value else None)
  return rewards


def main(argv):
  del argv
  if _ROW.value:
    n, m = (int(x) for x in _ROW.value.split(":"))
    print(json.dumps(scaling_row(_reference_rewards(), n, m)))
    return
  if _DRAG.value:
    print("slider drags: palettes in 20 moves from the pilot mean to the 75% quantile, solved in turn (float32)")
    print(
      "| n | m | afresh | from the previous λ | from the previous solution | speed-up | Newton steps "
      "| LP alone afresh / from the basis | LP pivots |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for size in _DRAG.value.split(","):
      n, m = (int(x) for x in size.split(":"))
      r32 = scaled_pilot(_reference_rewards(), n, m)
      drag = slider_drag(prepare_pilot(jnp.asarray(r32)), r32.mean(0), np.quantile(r32, 0.75, axis=0), moves=20)
      (cold, cold_steps), (lam, lam_steps), (warm, warm_steps) = (drag[name] for name in _STARTS)
      (lp_cold, pivots_cold), (lp_warm, pivots_warm) = drag["lp afresh"], drag["lp from basis"]
      print(
        f"| {n:,} | {m} | {cold:.2f} ms | {lam:.2f} ms | {warm:.2f} ms | {cold / warm:.2f}x | "
        f"{cold_steps:.1f} / {lam_steps:.1f} / {warm_steps:.1f} | {lp_cold:.2f} / {lp_warm:.2f} ms | "
        f"{pivots_cold:.1f} / {pivots_warm:.1f} |",
        flush=True,
      )
    return
  if _SCALING.value:
    scaling_table([tuple(int(x) for x in size.split(":")) for size in _SIZES.value.split(",")])
    return
  rewards64 = _reference_rewards()
  rewards32 = rewards64.astype(np.float32)
  n, m = rewards64.shape
  rng = np.random.default_rng(0)
  c0, upper = rewards64.mean(0), rewards64.max(0)
  # The paper's random palettes: c_i uniform between the pilot mean and the upper bound.
  # Most such palettes are infeasible; half of them are drawn closer to the mean so that
  # both verdicts are well represented.
  u = rng.uniform(size=(_NUM.value, m))
  u[: _NUM.value // 2] *= 0.25
  palettes = (c0 + u * (upper - c0)).astype(np.float32)
  print(f"pilot set: n = {n}, m = {m}; {jax.devices()[0].platform} ({os.cpu_count()} cores), jax {jax.__version__}")

  r32 = jnp.asarray(rewards32)
  ours = jax.jit(lambda c: solve_dual(r32, c))
  theirs = jax.jit(lambda c: adam150(r32, c))

  single = palettes[: _SINGLE.value]
  t_ours, out_ours = time_single(ours, single, _REPEATS.value)
  t_theirs, out_theirs = time_single(theirs, single, _REPEATS.value)
  res_ours = [kkt_residual(rewards64, c, np.asarray(o.lam)) for c, o in zip(single, out_ours) if bool(o.feasible)]
  res_theirs = [kkt_residual(rewards64, c, np.asarray(o)) for c, o in zip(single, out_theirs)]
  print("\n== single palette (float32) ==")
  rows = [
    ("Adam-150, jax.jit (authors' algorithm)", t_theirs, np.median(res_theirs)),
    ("map-jax solve_dual (Newton + exact LP)", t_ours, np.median(res_ours)),
  ]
  if _has_torch():
    t_torch = time.perf_counter()
    for c in single[:5]:
      torch_adam150(rewards32, c)
    t_torch = (time.perf_counter() - t_torch) / 5
    rows.insert(0, ("Adam-150, PyTorch eager (authors' code)", t_torch, float("nan")))
  for name, t, res in rows:
    print(f"{name:42s} {t * 1e3:9.2f} ms/palette   median KKT residual {res:.2e}")
  print(
    f"speed-up vs Adam-150 (jit): {t_theirs / t_ours:.1f}x wall clock, "
    f"{_CPU[theirs] / _CPU[ours]:.1f}x CPU time ({_CPU[ours] * 1e3:.2f} vs "
    f"{_CPU[theirs] * 1e3:.2f} ms); KKT residual "
    f"{np.median(res_theirs) / max(np.median(res_ours), 1e-300):.1e}x smaller"
  )

  print(f"\n== batched over {len(palettes)} palettes (vmap, chunks of {_CHUNK.value}) ==")
  b_ours = jax.jit(jax.vmap(lambda c: solve_dual(r32, c)))
  b_theirs = jax.jit(jax.vmap(lambda c: adam150(r32, c)))
  t_b_ours, outs = time_batched(b_ours, palettes, _CHUNK.value)
  t_b_theirs, outs_theirs = time_batched(b_theirs, palettes, _CHUNK.value)
  lam = np.concatenate([np.asarray(o.lam) for o in outs])[: len(palettes)]
  feasible = np.concatenate([np.asarray(o.feasible) for o in outs])[: len(palettes)]
  steps = np.concatenate([np.asarray(o.num_steps) for o in outs])[: len(palettes)]
  lam_theirs = np.concatenate([np.asarray(o) for o in outs_theirs])[: len(palettes)]
  sample = rng.choice(np.flatnonzero(feasible), size=min(200, feasible.sum()), replace=False)
  res_b = [kkt_residual(rewards64, palettes[i], lam[i]) for i in sample]
  res_b_theirs = [kkt_residual(rewards64, palettes[i], lam_theirs[i]) for i in sample]
  nan_theirs = ~np.all(np.isfinite(lam_theirs), axis=1)
  print(
    f"{'Adam-150, jax.jit + vmap':42s} {len(palettes) / t_b_theirs:9.0f} palettes/s   "
    f"median KKT residual {np.median(res_b_theirs):.2e}"
  )
  print(
    f"{'map-jax solve_dual + vmap':42s} {len(palettes) / t_b_ours:9.0f} palettes/s   "
    f"median KKT residual {np.median(res_b):.2e}"
  )
  print(
    f"speed-up vs Adam-150 (jit + vmap): {t_b_theirs / t_b_ours:.2f}x wall clock; by CPU "
    f"time {len(palettes) / _CPU[b_ours]:.0f} vs {len(palettes) / _CPU[b_theirs]:.0f} "
    f"palettes/s, {_CPU[b_theirs] / _CPU[b_ours]:.2f}x"
  )
  print(
    f"verdicts: {feasible.mean():.1%} feasible by the exact LP; Adam-150 returned NaN "
    f"('infeasible') for {nan_theirs.mean():.1%}, of which {np.mean(feasible[nan_theirs]):.1%} "
    f"are feasible; Newton steps: median {np.median(steps[feasible]):.0f}, "
    f"max {steps[feasible].max()}"
  )

  pilot = prepare_pilot(r32)
  q = np.quantile(rewards32, 0.95, axis=0)
  drag = slider_drag(pilot, rewards32.mean(0), q)
  print("\n== a slider drag: 100 palettes from the pilot mean to the 95% quantile, solved in turn ==")
  for name, label in (
    ("afresh", "each palette afresh"),
    ("λ", "each from the previous palette's λ"),
    ("solution", "each from the previous solution (λ, LP basis)"),
  ):
    ms, steps = drag[name]
    print(f"{label:48s} {ms:9.3f} ms/palette   Newton steps {steps:.1f}/palette")
  for name, label in (
    ("lp afresh", "the LP alone, afresh"),
    ("lp from basis", "the LP alone, from the previous basis"),
  ):
    ms, pivots = drag[name]
    print(f"{label:48s} {ms:9.3f} ms/palette   pivots {pivots:.1f}/palette")
  print(f"warm start: {drag['afresh'][0] / drag['solution'][0]:.2f}x")


def _has_torch() -> bool:
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


if __name__ == "__main__":
  app.run(main)
