"""Latency of one palette explorer update (a slider move) over HTTP, against the bare solve in the same run.

    python -m benchmarks.explorer                                   # the MAP authors' OPT-1.3B pilot set
    python -m benchmarks.explorer --rewards=runs/default/pilot.rewards.jsonl

Starts the explorer's server on 127.0.0.1 over a scored pilot table (default: the 2,312 × 6 reference set in
examples/map_reference), warms it up, then sends --moves POST /api/view requests one after another, each moving
one random value's slider to a random quantile (as a user dragging does), and reports the p50/p95/max time from
request to parsed response. The goal: p95 at most 50 ms on 2 CPU cores. Reference, measured in the same run:
`solve_dual` alone (jitted, float64, on the prepared pilot set the explorer keeps) on the same palettes, the floor of what an update costs.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.request

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, "examples", "map_reference", "opt1.3b-Anthropic-harmless.json")


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--rewards", default=REFERENCE, help="a scored pilot table")
  p.add_argument("--moves", type=int, default=300)
  args = p.parse_args()
  from map_jax.core.dual import prepare_pilot, solve_dual
  from map_jax.explorer import Explorer, ExplorerServer

  explorer = Explorer.from_table(args.rewards)
  explorer.warm_up()
  server = ExplorerServer(explorer).start()
  rng = np.random.default_rng(0)
  names = explorer.names
  state = {v: 0.6 for v in names}
  moves = []
  for _ in range(args.moves):
    v = names[rng.integers(len(names))]
    state = {**state, v: round(float(rng.uniform(0.5, 0.95)), 2)}
    moves.append((v, dict(state)))
  times, solve_times = [], []
  try:
    for i, (v, qs) in enumerate(moves):
      body = json.dumps({"quantiles": qs, "moved": v, "seq": i, "client": "bench"}).encode()
      req = urllib.request.Request(server.url + "api/view", data=body, headers={"Content-Type": "application/json"})
      start = time.perf_counter()
      with urllib.request.urlopen(req) as r:
        json.loads(r.read())
      times.append(time.perf_counter() - start)
  finally:
    server.close()
  solve = jax.jit(solve_dual)
  with jax.enable_x64(True):
    pilot = prepare_pilot(jax.numpy.asarray(explorer.R))  # kept, as the explorer keeps it
    for _, qs in moves:
      c = jax.numpy.asarray(explorer.palette([qs[v] for v in names]))
      jax.block_until_ready(solve(pilot, c))  # compiled by warm_up's shapes already, or here once
      start = time.perf_counter()
      jax.block_until_ready(solve(pilot, c).lam)
      solve_times.append(time.perf_counter() - start)
  t = np.array(times) * 1e3
  s = np.array(solve_times) * 1e3
  print(
    f"jax {jax.__version__} on {jax.devices()[0].device_kind}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
  )
  print(f"pilot set {explorer.R.shape[0]} x {len(names)} ({os.path.basename(args.rewards)}), {args.moves} slider moves")
  print(
    f"update over HTTP : p50 {np.percentile(t, 50):6.1f} ms   p95 {np.percentile(t, 95):6.1f} ms   max {t.max():6.1f} ms"
  )
  print(f"solve_dual alone : p50 {np.percentile(s, 50):6.1f} ms   p95 {np.percentile(s, 95):6.1f} ms   (reference)")
  print(
    f"ratio            : {np.percentile(t, 95) / np.percentile(s, 95):6.1f}x the bare solve at p95 (goal: p95 <= 50 ms)"
  )


if __name__ == "__main__":
  main()
