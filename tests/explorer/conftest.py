"""A run_map workdir made by the tiny test pipeline (pilot and test candidates, scored), for the explorer."""

import json

import pytest

import configs
from map_jax import pipeline

PROMPTS = [f"Tell me about the thing number {i} you like." for i in range(16)]


@pytest.fixture(scope="session")
def tiny_workdir(tiny_smollm_dir, tmp_path_factory):
  d = tmp_path_factory.mktemp("explore")
  prompts = d / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
  c = configs.load("default")
  c.model = tiny_smollm_dir
  c.prompts.source, c.prompts.num_pilot, c.prompts.num_test = str(prompts), 12, 3
  c.pilot.samples_per_prompt = 4
  c.generation.max_new_tokens, c.generation.batch_size, c.generation.min_bucket = 8, 4, 64
  c.targeted, c.kept, c.value_options = "length,diversity", "positiveness", {}
  c.palettes = "all-60%"
  c.decode.num_candidates = 3
  wd = d / "run"
  for until in ("score_pilot", "score_candidates"):
    pipeline.run(c, str(wd), until=until)
  return str(wd)
