"""Training checkpoints: kill-and-resume is bitwise identical; faults keep the last good checkpoint; a resume
under another config is refused naming the fields."""

import dataclasses
import json

import flax.linen as nn
import jax
import numpy as np
import pytest

from map_jax.align import map_f, trainer
from map_jax.checkpoint import Checkpointer, ConfigMismatchError, config_diff, flatten_config
from tests.align.test_ppo import TINY_PPO, TINY_RUN, tiny_model, tiny_prompts, token_fraction

RUN = dataclasses.replace(TINY_RUN, num_steps=4, checkpoint_every=2)
VALUES = [token_fraction("7")]


class Crash(Exception):
  pass


def _crash_after(step):
  def hook(s, metrics):
    if s == step:
      raise Crash(f"killed after step {s}")

  return hook


def _leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_flatten_and_diff_name_the_changed_fields():
  a = flatten_config({"ppo": {"lr": 1e-6, "clip": 0.2}, "lam": (1.0, 2.0), "run": {"num_steps": 4}})
  assert a == {"ppo.lr": 1e-6, "ppo.clip": 0.2, "lam": [1.0, 2.0], "run.num_steps": 4}
  b = dict(a, **{"ppo.lr": 1e-5, "run.num_steps": 9})
  assert config_diff(a, b, resumable=["run.num_steps"]) == ["ppo.lr: checkpoint 1e-06, now 1e-05"]
  assert config_diff(a, json.loads(json.dumps(a))) == []


def test_killed_and_resumed_run_is_bitwise_identical(tmp_path):
  model, prompts = tiny_model(), tiny_prompts()
  straight = map_f.fine_tune(model, prompts, VALUES, [20.0], TINY_PPO, RUN, str(tmp_path / "straight"))
  # Killed after step 3: checkpoints exist for step 2 only, so step 3 is redone after the resume.
  with pytest.raises(Crash):
    map_f.fine_tune(model, prompts, VALUES, [20.0], TINY_PPO, RUN, str(tmp_path / "killed"), on_step=_crash_after(3))
  assert Checkpointer(str(tmp_path / "killed" / "checkpoints"), every=2, config={}).latest_step() == 2
  resumed = map_f.fine_tune(model, prompts, VALUES, [20.0], TINY_PPO, RUN, str(tmp_path / "killed"))
  assert len(resumed.history) == 2  # steps 3 and 4
  assert int(resumed.state.step) == int(straight.state.step) == 4
  for a, b in zip(
    _leaves((straight.state.params, straight.state.opt_state)), _leaves((resumed.state.params, resumed.state.opt_state))
  ):
    np.testing.assert_array_equal(a, b)  # policy, value head, Adam moments and counts: bit for bit
  np.testing.assert_array_equal(jax.random.key_data(straight.state.key), jax.random.key_data(resumed.state.key))
  # The metrics log reads as one run: the crashed run's step-3 line was replaced by the resumed one.
  lines = [json.loads(x) for x in open(tmp_path / "killed" / "metrics.jsonl")]
  want = [json.loads(x) for x in open(tmp_path / "straight" / "metrics.jsonl")]
  assert [x["step"] for x in lines] == [1, 2, 3, 4]
  for got, ref in zip(lines, want):
    assert {k: v for k, v in got.items() if not k.startswith(("time_", "tokens_per_s"))} == {
      k: v for k, v in ref.items() if not k.startswith(("time_", "tokens_per_s"))
    }
  # The saved policy restores with the model loader.
  from map_jax.models.loading import restore_params

  policy = nn.meta.unbox(restore_params(resumed.params_dir, model.config))
  for a, b in zip(_leaves(policy), _leaves(straight.params)):
    np.testing.assert_array_equal(a, b)

  # Resuming under another config is refused, naming the differing fields; the step count may change.
  other = dataclasses.replace(TINY_PPO, learning_rate=1e-4, clip_ratio=0.1)
  with pytest.raises(
    ConfigMismatchError,
    match=r"ppo.clip_ratio: checkpoint 0.2, now 0.1\n  "
    r"ppo.learning_rate: checkpoint 0.003, now 0.0001",
  ):
    map_f.fine_tune(model, prompts, VALUES, [20.0], other, RUN, str(tmp_path / "killed"))
  with pytest.raises(ConfigMismatchError, match=r"lam: checkpoint \[20.0\], now \[10.0\]"):
    map_f.fine_tune(model, prompts, VALUES, [10.0], TINY_PPO, RUN, str(tmp_path / "killed"))
  longer = map_f.fine_tune(
    model, prompts, VALUES, [20.0], TINY_PPO, dataclasses.replace(RUN, num_steps=5), str(tmp_path / "killed")
  )
  assert [int(longer.state.step), len(longer.history)] == [5, 1]


def test_nan_reward_stops_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  calls = []

  def flaky(prompts, responses):
    calls.append(1)
    r = token_fraction("7")(prompts, responses)
    if len(calls) == 3:
      r[5] = np.nan
    return r

  flaky.name = "flaky"

  with pytest.raises(
    trainer.TrainingError,
    match=r"PPO step 3 stopped: value 'flaky' gave a non-finite reward "
    r"nan to prompt 5.*newest checkpoint, step 2",
  ):
    map_f.fine_tune(tiny_model(), tiny_prompts(), [flaky], [20.0], TINY_PPO, RUN, str(tmp_path))
  ckpt = Checkpointer(str(tmp_path / "checkpoints"), every=2, config={})
  assert ckpt.latest_step() == 2 and ckpt.read_meta()["data_position"] == 2 * RUN.batch_size
  assert [json.loads(x)["step"] for x in open(tmp_path / "metrics.jsonl")] == [1, 2]


def test_nan_loss_stops_before_anything_is_saved(tmp_path):
  model = tiny_model()
  params = jax.tree.map(lambda x: x, nn.meta.unbox(model.params))
  params["norm"]["scale"] = params["norm"]["scale"].at[0].set(np.nan)  # NaN logits, rewards still finite
  with pytest.raises(
    trainer.TrainingError,
    match=r"PPO step 1 stopped: non-finite .*loss.*"
    r"no checkpoint was written",
  ):
    map_f.fine_tune(model._replace(params=params), tiny_prompts(), VALUES, [20.0], TINY_PPO, RUN, str(tmp_path))
  assert Checkpointer(str(tmp_path / "checkpoints"), every=2, config={}).latest_step() is None
  assert not (tmp_path / "params").exists()
