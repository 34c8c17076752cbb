"""The MAP-D launchers as a user runs them: a stage on a tiny model through --config flags, and a bad config
answered with one line and exit status 1."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(module, *flags):
  env = {**os.environ, "MAP_JAX_TRACEBACK": ""}
  return subprocess.run(
    [sys.executable, "-m", module, *flags], capture_output=True, text=True, timeout=600, cwd=ROOT, env=env
  )


def test_generate_pilot_on_a_tiny_model(tiny_smollm_dir, tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text("".join(json.dumps({"prompt": f"Question number {i}?"}) + "\n" for i in range(6)))
  wd = tmp_path / "run"
  proc = _run(
    "experiments.generate_pilot",
    f"--workdir={wd}",
    f"--config.model={tiny_smollm_dir}",
    f"--config.prompts.source={prompts}",
    "--config.prompts.num_pilot=4",
    "--config.prompts.num_test=2",
    "--config.pilot.samples_per_prompt=2",
    "--config.generation.max_new_tokens=4",
    "--config.generation.batch_size=4",
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [json.loads(line) for line in (wd / "pilot.jsonl").read_text().splitlines()]
  assert len(rows) == 8 and {r["prompt_index"] for r in rows} == {0, 1, 2, 3}
  table = [line.split()[0] for line in proc.stdout.splitlines() if line.endswith(" s")]
  assert table == ["prompts", "generate_pilot"]  # the stages that ran, nothing else
  assert "tpu" not in proc.stderr.lower()


@pytest.mark.parametrize(
  "module, flag, error",
  [
    (
      "experiments.run_map",
      "--config.palettes=coherence-80%",
      "error: palette 'coherence-80%' raises 'coherence', which is kept at its mean",
    ),
    (
      "experiments.run_map",
      "--process_id=1",
      "error: --num_processes and --process_id need --coordinator_address (or --distributed)",
    ),
    (
      "experiments.compare_methods",
      "--config.compare.methods=MAP-D,GRPO",
      "error: config.compare.methods: unknown ['GRPO']; methods: MAP-D, MORL-D, MAP-F, MORL-F, DPO, DPO-Soup",
    ),
  ],
)
def test_a_bad_config_is_one_line_and_exit_1_with_nothing_written(module, flag, error, tmp_path):
  proc = _run(module, f"--workdir={tmp_path / 'run'}", flag)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines() == [error], proc.stderr
  assert not (tmp_path / "run").exists()
