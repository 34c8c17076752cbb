"""Fault injection: a stage killed by SIGKILL at an arbitrary point, then rerun under a changed config, gives
exactly what a clean run under the new config gives; rerun unchanged, it resumes."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

from map_jax import plugins
from map_jax.rewards import scoring

ROOT = pathlib.Path(__file__).resolve().parents[1]

SLOW_VALUES = '''
import time

import numpy as np

from map_jax import plugins
from map_jax.rewards import RewardFn


class Slow(RewardFn):
  """Words in the response, one chunk every 0.2 s, counting its calls in a file."""

  name = "slow"
  description = "words in the response, slowly"

  def _score(self, prompts, responses):
    with open(__file__ + ".calls", "a") as f:
      f.write("x")
    time.sleep(0.2)
    return np.array([len(r.split()) for r in responses], np.float64)


plugins.register("value", "slow", Slow)
'''


def _score_cmd(src, out, values, plugin_dir):
  return [
    sys.executable,
    "-m",
    "experiments.score",
    "--plugins=slow_values",
    f"--input={src}",
    f"--output={out}",
    f"--values={values}",
    "--chunk=4",
  ]


def _env(plugin_dir):
  return {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), str(ROOT)])}


def _kill_when(proc, path, lines, timeout=120):
  """SIGKILL `proc` once `path` has at least `lines` lines (a chunk store's header and finished chunks)."""
  start = time.time()
  while time.time() - start < timeout:
    if path.exists() and len(path.read_text().splitlines()) >= lines:
      proc.send_signal(signal.SIGKILL)
      proc.wait()
      return
    if proc.poll() is not None:
      raise AssertionError(f"finished before it could be killed: {proc.stderr.read()}")
    time.sleep(0.05)
  proc.kill()
  raise AssertionError("never reached the kill point")


def test_scoring_killed_then_rerun_with_another_spec_or_unchanged(tmp_path):
  plugin_dir = tmp_path / "plugins"
  plugin_dir.mkdir()
  (plugin_dir / "slow_values.py").write_text(SLOW_VALUES)
  calls = plugin_dir / "slow_values.py.calls"
  # Long words: WordPiece tokens (the length value) outnumber words (the slow value).
  rows = [{"prompt": f"q{i}", "response": " ".join(["antidisestablishmentarianism"] * (i % 7))} for i in range(40)]
  src = tmp_path / "pilot.jsonl"
  src.write_text("".join(json.dumps(r) + "\n" for r in rows))
  out, parts = tmp_path / "out.jsonl", tmp_path / "out.jsonl.parts" / "v.jsonl"

  sys.path.insert(0, str(plugin_dir))
  plugins.load_plugins("slow_values")
  sys.path.remove(str(plugin_dir))

  def run(values, output=out):  # reruns in this process: the same code as the launcher, without its start-up
    scoring.score_table(str(src), str(output), [values], chunk=4, progress=False)
    return output.read_text()

  def start(values):
    return subprocess.Popen(
      _score_cmd(src, out, values, plugin_dir),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
      cwd=ROOT,
      env=_env(plugin_dir),
    )

  # Killed after 3 of 10 chunks, rerun unchanged: only the missing chunks are scored, and the table is a clean one.
  _kill_when(start("v=slow"), parts, 1 + 3)
  done = len(parts.read_text().splitlines()) - 1
  calls.write_text("")
  resumed = run("v=slow")
  assert len(calls.read_text()) == 10 - done
  assert resumed == run("v=slow", tmp_path / "clean_slow.jsonl")
  # Killed, then rerun with another spec under the same column name: nothing of the old spec survives.
  out.unlink()
  _kill_when(start("v=slow"), parts, 1 + 2)
  assert run("v=length") == run("v=length", tmp_path / "clean_length.jsonl")
  assert out.read_text() != resumed  # and the two specs do score differently
