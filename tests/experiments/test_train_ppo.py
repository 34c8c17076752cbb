"""The MAP-F launcher: both configs build and validate; a tiny model runs pilot, PPO and the output layout."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest

import configs


def _config(name):
  return configs.load(name)


def test_configs_build_and_validate():
  from experiments import train_ppo

  cfg, run = train_ppo.build(_config("ppo_default"))
  assert cfg.beta == 1.0 and cfg.kl_estimator == "exact" and run.chat and run.progress
  cfg, run = train_ppo.build(_config("ppo_opt1.3b"))
  assert (cfg.learning_rate, cfg.warmup_steps, run.batch_size, cfg.beta, cfg.kl_estimator) == (
    1e-6,
    0,
    20,
    1.0,
    "sample",
  )
  cfg, run = train_ppo.build(_config("ppo_llama2_7b_lora"))
  assert (cfg.lora_rank, cfg.lora_alpha, run.batch_size, cfg.grad_accum, run.chat) == (16, 32.0, 20, 4, True)
  bad = _config("ppo_default")
  bad.kept = "no-such-value"
  with pytest.raises(ValueError, match=r"unknown values \['no-such-value'\]"):
    train_ppo.build(bad)
  bad = _config("ppo_default")
  bad.run.batch_size = 7
  with pytest.raises(ValueError, match="not a multiple of num_minibatches"):
    train_ppo.build(bad)


def test_the_7b_lora_configs_memory_arithmetic_holds_for_the_llama2_7b_shape():
  """configs/ppo_llama2_7b_lora.py counts 6.74e9 base weights and 39.98e6 adapter parameters: check both on the
  Llama-2-7B shape, abstractly (nothing is allocated)."""
  from benchmarks.hardware import RANDOM_MODELS
  from experiments import train_ppo
  from map_jax.align import lora
  from map_jax.models.llama import LlamaConfig
  from map_jax.models.loading import abstract_params

  shape = LlamaConfig(**RANDOM_MODELS["llama2-7b-random"], dtype="bfloat16", param_dtype="bfloat16")
  cfg, _ = train_ppo.build(_config("ppo_llama2_7b_lora"))
  adapters = lora.abstract_adapters(shape.module(lora=cfg.lora))
  assert round(lora.num_params(adapters) / 1e6, 2) == 39.98
  assert round(lora.num_params(abstract_params(shape)) / 1e9, 2) == 6.74
  assert {x.dtype for x in jax.tree.leaves(nn.meta.unbox(adapters))} == {np.dtype("float32")}


def _tiny_config(tiny_smollm_dir):
  config = _config("ppo_default")
  config.model = tiny_smollm_dir
  config.prompts.num = 16
  config.targeted, config.kept, config.palettes = "diversity", "positiveness", "diversity-50%"
  config.pilot.num_prompts, config.pilot.samples = 4, 2
  config.ppo.max_new_tokens, config.ppo.ppo_epochs, config.ppo.learning_rate = 8, 1, 1e-3
  config.run.num_steps, config.run.batch_size, config.run.max_prompt_tokens = 2, 4, 48
  config.run.checkpoint_every, config.run.progress = 1, False
  return config


def test_launcher_runs_pilot_ppo_and_writes_the_layout(tiny_smollm_dir, tmp_path):
  from experiments import train_ppo
  from map_jax.models.loading import load_model, restore_params

  out = train_ppo.run(_tiny_config(tiny_smollm_dir), str(tmp_path))

  files = sorted(p.name for p in tmp_path.iterdir())
  assert files == ["checkpoints", "config.json", "metrics.jsonl", "params", "pilot.json", "run.json", "tb"]
  run = json.loads((tmp_path / "run.json").read_text())
  assert run == json.loads(json.dumps(out)) and run["method"] == "MAP-F"
  pilot = json.loads((tmp_path / "pilot.json").read_text())
  assert pilot["n"] == 8 and run["lam"] == pilot["lam"] and len(run["palette"]) == 2
  lines = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
  assert [x["step"] for x in lines] == [1, 2]
  for key in (
    "reward/positiveness",
    "reward/diversity",
    "score",
    "kl",
    "entropy",
    "policy_loss",
    "value_loss",
    "tokens_per_s",
    "time_generate",
    "time_reward",
    "time_update",
  ):
    assert key in lines[0], key
  assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]
  # The evaluation stage loads the fine-tuned policy from run.json alone.
  base = load_model(run["model"], dtype=run["dtype"])
  tuned = jax.tree.leaves(nn.meta.unbox(restore_params(run["params"], base.config)))
  start = jax.tree.leaves(nn.meta.unbox(base.params))
  assert len(tuned) == len(start) and not all(np.array_equal(a, b) for a, b in zip(tuned, start))


def test_launcher_sequential_alignment_writes_one_tree_per_stage(tiny_smollm_dir, tmp_path):
  from experiments import train_ppo

  config = _tiny_config(tiny_smollm_dir)
  config.targeted, config.kept, config.palettes = "positiveness,diversity", "", "all-50%"
  config.sequential.rounds = 1
  config.run.num_steps = 1
  out = train_ppo.run(config, str(tmp_path))
  stages = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("stage_"))
  assert stages and all(s[len("stage_00_") :] in ("positiveness", "diversity") for s in stages), stages
  for s in stages:
    lines = [json.loads(x) for x in open(tmp_path / s / "metrics.jsonl")]
    assert len(lines) == 1 and len([k for k in lines[0] if k.startswith("reward/")]) == 1  # one value loaded
  assert out["sequential_rounds"] == 1 and out["params"] == str(tmp_path / "params")


def test_a_ppo_run_aligns_to_exactly_one_palette():
  from experiments import train_ppo

  bad = _config("ppo_default")
  bad.palettes = "positiveness-70%;positiveness-80%"
  with pytest.raises(ValueError, match="names 2 palettes; a PPO run aligns to exactly one"):
    train_ppo.build(bad)
  bad.palettes = "diversity-70%"
  with pytest.raises(ValueError, match="raises 'diversity', which is kept at its mean"):
    train_ppo.build(bad)
