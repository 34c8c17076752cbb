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


def _start(module, *flags, env=None):
  return subprocess.Popen(
    [sys.executable, "-m", module, *flags],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
    cwd=ROOT,
    env={**os.environ, "MAP_JAX_TRACEBACK": "", **(env or {})},
  )


def test_generation_killed_then_rerun_unchanged_or_with_another_seed(tiny_smollm_dir, tmp_path, monkeypatch):
  import configs
  from map_jax import pipeline, sampling

  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": f"Question number {i:02d}?"}) + "\n" for i in range(50)))
  fields = {
    "model": tiny_smollm_dir,
    "prompts.source": str(prompts),
    "prompts.num_pilot": 48,
    "prompts.num_test": 2,
    "pilot.samples_per_prompt": 2,
    "generation.max_new_tokens": 24,
    "generation.batch_size": 2,  # 24 chunks
  }

  def config(seed=None):
    c = configs.load("default")
    c.update_from_flattened_dict(fields)  # what the --config.FIELD flags below set
    if seed is not None:
      c.seed = seed
    return c

  def killed(wd):
    proc = _start("experiments.generate_pilot", f"--workdir={wd}", *(f"--config.{k}={v}" for k, v in fields.items()))
    _kill_when(proc, wd / "pilot.jsonl.parts", 1 + 2)
    assert not (wd / "pilot.jsonl").exists()

  def table(c, wd):
    pipeline.run(c, str(wd), until="generate_pilot")
    return (wd / "pilot.jsonl").read_text()

  clean = table(config(), tmp_path / "clean")
  clean_rows = {(r["prompt_index"], r["sample"]): r for r in map(json.loads, clean.splitlines())}
  # Killed, rerun unchanged: it generates only the missing batches and ends with the clean run's table.
  killed(tmp_path / "a")
  parts = [json.loads(line) for line in (tmp_path / "a" / "pilot.jsonl.parts").read_text().splitlines()[1:]]
  for row in (r for p in parts for r in p["data"]):  # the batches it kept are the clean run's own rows
    assert clean_rows[row["prompt_index"], row["sample"]] == {**clean_rows[row["prompt_index"], row["sample"]], **row}
  calls = []
  real = sampling.generate
  monkeypatch.setattr(sampling, "generate", lambda *a, **kw: calls.append(1) or real(*a, **kw))
  assert table(config(), tmp_path / "a") == clean
  assert len(calls) == 24 - len(parts)
  monkeypatch.undo()
  # Killed, rerun with another seed: nothing of the killed run survives.
  killed(tmp_path / "b")
  seed = int(configs.load("default").seed) + 1
  assert table(config(seed), tmp_path / "b") == table(config(seed), tmp_path / "clean_seed")
  assert table(config(seed), tmp_path / "b") != clean


def test_ppo_killed_then_resumed_is_bitwise_a_clean_run_and_a_changed_palette_is_refused(tiny_smollm_dir, tmp_path):
  import jax
  import numpy as np
  import pytest

  import configs
  from experiments import train_ppo
  from map_jax.checkpoint import ConfigMismatchError
  from map_jax.models.loading import load_model, restore_params

  fields = {
    "model": tiny_smollm_dir,
    "prompts.num": 16,
    "targeted": "diversity",
    "kept": "positiveness",
    "palettes": "diversity-50%",
    "pilot.num_prompts": 4,
    "pilot.samples": 2,
    "ppo.max_new_tokens": 8,
    "ppo.ppo_epochs": 1,
    "ppo.learning_rate": 1e-3,
    "run.num_steps": 4,
    "run.batch_size": 4,
    "run.max_prompt_tokens": 48,
    "run.checkpoint_every": 1,
    "run.progress": False,
  }
  c = configs.load("ppo_default")
  c.update_from_flattened_dict(fields)  # what the --config.FIELD flags below set

  wd = tmp_path / "killed"
  proc = _start(
    "experiments.train_ppo",
    f"--config={ROOT / 'configs' / 'ppo_default.py'}",
    f"--workdir={wd}",
    *(f"--config.{k}={v}" for k, v in fields.items()),
  )
  start = time.time()
  while not (wd / "checkpoints" / "2").exists():  # orbax renames a finished checkpoint into place
    assert proc.poll() is None, proc.stderr.read()
    assert time.time() - start < 300
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (wd / "run.json").exists()

  resumed = train_ppo.run(c, str(wd))
  lines = [json.loads(x) for x in open(wd / "metrics.jsonl")]
  assert [x["step"] for x in lines] == [1, 2, 3, 4]  # the log holds each step once, however far the kill got
  clean = train_ppo.run(c, str(tmp_path / "clean"))
  assert (resumed["lam"], resumed["palette"]) == (clean["lam"], clean["palette"])
  base = load_model(tiny_smollm_dir).config
  a, b = (jax.tree.leaves(restore_params(r["params"], base)) for r in (resumed, clean))
  assert all(np.array_equal(x, y) for x, y in zip(a, b))

  c.palettes = "diversity-70%"  # another λ in the same workdir: refused, naming the field
  c.run.num_steps = 5
  with pytest.raises(ConfigMismatchError, match="lam"):
    train_ppo.run(c, str(wd))
