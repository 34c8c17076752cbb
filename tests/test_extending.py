"""docs/extending.md as a user runs it: each file it prints is written, as printed, into a directory outside
the package and plugged in without editing map_jax."""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from map_jax import plugins

ROOT = pathlib.Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "extending.md"


def guide_files() -> dict[str, str]:
  """{file name: source} of the guide's python blocks that start with a `# NAME.py` line."""
  out = {}
  for block in re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S):
    first = block.splitlines()[0]
    if re.fullmatch(r"# \w+\.py", first):
      out[first[2:]] = block
  return out


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("user_code")
  files = guide_files()
  assert set(files) == {"my_values.py", "my_mistral.py", "my_best_of_k.py"}
  for name, source in files.items():
    (d / name).write_text(source)
  sys.path.insert(0, str(d))
  yield d
  sys.path.remove(str(d))


def test_a_reward_value_from_a_user_module(user_dir, tmp_path):
  from map_jax.rewards import available_rewards, get_reward

  assert plugins.load_plugins("my_values") == ["my_values"]
  assert available_rewards()["brevity"] == "scale / (1 + words in the response)"
  value = get_reward("brevity", scale=2.0)
  np.testing.assert_allclose(value(["q", "q"], ["one two three", ""]), [2.0 / 4, 2.0])
  assert get_reward("short=brevity").name == "short"
  # The same value through a launcher, named on its command line.
  rows = [{"prompt": "hi", "response": "hello there"}, {"prompt": "hi", "response": "no"}]
  src = tmp_path / "pilot.jsonl"
  src.write_text("".join(json.dumps(r) + "\n" for r in rows))
  env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(user_dir), str(ROOT)])}
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.score",
      "--plugins=my_values",
      f"--input={src}",
      "--values=brevity,length",
      f"--output={tmp_path / 'out.jsonl'}",
    ],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
    env=env,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
  assert [r["brevity"] for r in out] == [1 / 3, 1 / 2]


def test_a_plugin_cannot_shadow_another_and_a_broken_one_is_named(user_dir, tmp_path):
  plugins.load_plugins("my_values")
  with pytest.raises(plugins.PluginError, match="'brevity' is already registered"):
    plugins.register("value", "brevity", "other_pkg:Brevity")
  (tmp_path / "broken_plugin.py").write_text("import no_such_module_here\n")
  sys.path.insert(0, str(tmp_path))
  try:
    with pytest.raises(plugins.PluginError, match="plugin module 'broken_plugin' failed to import"):
      plugins.load_plugins(["broken_plugin"])
  finally:
    sys.path.remove(str(tmp_path))
  with pytest.raises(plugins.PluginError, match="unknown plugin kind"):
    plugins.entries("values")


def test_a_model_family_from_a_user_module_matches_transformers(user_dir, tmp_path):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from map_jax.models import loading
  from map_jax.models.family import CausalLM

  torch.manual_seed(0)
  hf = transformers.MistralForCausalLM(
    transformers.MistralConfig(
      vocab_size=97,
      hidden_size=32,
      intermediate_size=48,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      max_position_embeddings=64,
      sliding_window=None,
    )
  ).eval()
  hf.save_pretrained(tmp_path)
  with pytest.raises(loading.CheckpointError, match="unsupported architecture model_type='mistral'"):
    loading.load_hf(str(tmp_path), tokenizer=False)
  plugins.load_plugins("my_mistral")
  model = loading.load_hf(str(tmp_path), tokenizer=False)
  assert type(model.config).__name__ == "MistralConfig" and isinstance(model.config, CausalLM)
  ids = np.random.default_rng(0).integers(0, 97, (2, 9))
  with jax.default_matmul_precision("highest"):
    got = np.asarray(model.module.apply({"params": model.params}, jnp.asarray(ids)).logits)
  with torch.no_grad():
    ref = hf(torch.tensor(ids)).logits.numpy()
  np.testing.assert_allclose(got, ref, atol=1e-5 * np.abs(ref).max())
  config = json.loads((tmp_path / "config.json").read_text())
  config["sliding_window"] = 16
  (tmp_path / "config.json").write_text(json.dumps(config))
  with pytest.raises(loading.CheckpointError, match="sliding_window=16"):
    loading.load_hf(str(tmp_path), tokenizer=False)


def test_an_alignment_method_from_a_user_module_runs_on_the_shared_loop(user_dir):
  from map_jax.align import trainer

  from .align.test_ppo import tiny_model, tiny_prompts, token_fraction

  assert {"ppo", "dpo"} <= set(plugins.entries("method"))
  assert plugins.lookup("method", "ppo").__name__ == "PPOMethod"
  plugins.load_plugins("my_best_of_k")
  method = plugins.lookup("method", "best-of-k")
  run = trainer.RunConfig(num_steps=8, batch_size=8, max_prompt_tokens=4, chat=False, tensorboard=False)
  result = trainer.train(method(tiny_model(), tiny_prompts(), token_fraction("7"), 1.0, run), run)
  rewards = [h["reward"] for h in result.history]
  assert rewards[0] < 0.1 and rewards[-1] > 0.5, rewards
