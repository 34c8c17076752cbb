"""The method comparison: NE and the chance band on constructed points, the λ draws, HH-RLHF preference files,
and the whole comparison on a tiny model, killed and resumed."""

import json
import os
import shlex
import signal
import subprocess
import sys

import numpy as np
import pytest

import configs
from map_jax import compare
from map_jax.data.preferences import hh_pairs
from map_jax.data.tables import TableError
from map_jax.eval import comparison
from tests.test_readme import ROOT

PROMPTS = [f"Tell me something about topic number {i}." for i in range(24)]


def test_desirable_regime_and_navigation_efficiency_on_constructed_points():
  original = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]])  # means (0.5, 0.5)
  up = original + [0.1, 0.2]  # beats it everywhere, on every prompt
  mixed = original + [0.3, -0.1]  # better in one value only
  tie = original.copy()  # no better: expected equal, win rate exactly one half
  points = [comparison.model_point(original, a) for a in (up, mixed, tie)]
  assert points[0] == {"expected": pytest.approx([0.6, 0.7]), "win_rate": [1.0, 1.0]}
  assert points[2]["win_rate"] == [0.5, 0.5]
  assert comparison.desirable([p["expected"] for p in points], [0.5, 0.5]).tolist() == [True, False, False]
  ne = comparison.navigation_efficiency(points, [0.5, 0.5])
  assert ne == {"expected": pytest.approx(1 / 3), "win_rate": pytest.approx(1 / 3), "models": 3}
  band = comparison.original_band(original)
  assert band["expected"]["low"][0] < 0.5 < band["expected"]["high"][0]
  assert band["win_rate"]["low"][0] < 0.5 < band["win_rate"]["high"][0]
  rep, figures = comparison.comparison_report(
    original,
    [{"name": "a", "method": "X", "rewards": up}, {"name": "b", "method": "X", "rewards": mixed}],
    names=["u", "v"],
    targeted=["u", "v"],
    costs={"X": {"seconds": 1.0}},
  )
  assert rep["methods"]["X"]["expected"] == 0.5 and sorted(figures) == ["expected.png", "win_rate.png"]
  assert "| X | 2 | 50% | 50% |" in comparison.markdown(rep)


def test_lambda_draws_are_feasible_stable_and_target_only_the_targeted_values():
  rng = np.random.default_rng(0)
  R = rng.normal(size=(400, 3))
  few = compare.draw_lambdas(R, [0, 1], 5, max_l1=6.0, seed=0)
  more = compare.draw_lambdas(R, [0, 1], 9, max_l1=6.0, seed=0)
  assert more["MAP"][:5] == few["MAP"] and more["MORL"][:5] == few["MORL"]
  for rec in more["MAP"]:
    lam, c = np.array(rec["lambda"]), np.array(rec["palette"])
    w = np.exp(R @ lam - (R @ lam).max())
    realized = (w / w.sum()) @ R
    assert np.all(realized >= c - 1e-6) and np.abs(lam).sum() <= 6.0
    assert c[2] == pytest.approx(R[:, 2].mean())  # the untargeted value stays at its mean
  morl = np.array([r["lambda"] for r in more["MORL"]])
  assert np.all(morl[:, :2] >= 0) and np.all(morl[:, 2] == 0) and np.all(morl.sum(1) <= 6.0)
  with pytest.raises(ValueError, match="max_l1"):
    compare.draw_lambdas(R, [0, 1], 5, max_l1=1e-9, seed=0)


def test_hh_rlhf_files_become_pairs_and_bad_rows_are_named(tmp_path):
  h, a = "\n\nHuman:", "\n\nAssistant:"
  rows = [
    {"chosen": f"{h} Hi?{a} Hello!", "rejected": f"{h} Hi?{a} Go away."},
    {"chosen": f"{h} A{a} B{h} C?{a} Sure.", "rejected": f"{h} A{a} B{h} C?{a} No."},
    {"chosen": f"{h} Same{a} x", "rejected": f"{h} Same{a} x"},  # no preference: left out
  ]
  path = tmp_path / "hh.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  assert hh_pairs(str(path)) == [("Hi?", "Hello!", "Go away."), (f"{h} A{a} B{h} C?".strip(), "Sure.", "No.")]
  bad = tmp_path / "bad.jsonl"
  bad.write_text(json.dumps({"chosen": f"{h} Hi?{a} x", "rejected": f"{h} Other?{a} y"}) + "\n")
  with pytest.raises(TableError, match=r"bad.jsonl: row 0: 'chosen' and 'rejected' differ before the last reply"):
    hh_pairs(str(bad))
  bad.write_text(json.dumps({"chosen": "no markers", "rejected": f"{h} Hi?{a} y"}) + "\n")
  with pytest.raises(TableError, match=r"row 0, field 'chosen'"):
    hh_pairs(str(bad))


# The test-sized comparison: configs/compare_default.py with these fields overridden (as --config flags too).
TINY = {
  "prompts.num_pilot": 8,
  "prompts.num_test": 4,
  "prompts.max_chars": 200,
  "pilot.samples_per_prompt": 4,
  "generation.max_new_tokens": 6,
  "generation.batch_size": 4,
  "generation.min_bucket": 64,
  "decode.num_candidates": 3,
  "targeted": "positiveness,length",
  "compare.num_palettes": 4,
  "compare.num_finetuned": 1,
  "compare.ppo_steps": 2,
  "ppo.max_new_tokens": 6,
  "ppo.ppo_epochs": 1,
  "ppo.num_minibatches": 1,
  "ppo.warmup_steps": 0,
  "ppo.learning_rate": 1e-3,
  "run.batch_size": 4,
  "run.max_prompt_tokens": 48,
  "run.checkpoint_every": 1,
  "run.progress": False,
  "dpo.betas": (0.5,),
  "dpo.alphas": (0.0, 1.0),
  "dpo.num_steps": 2,
  "dpo.num_pairs": 8,
  "dpo.batch_size": 4,
  "dpo.max_response_tokens": 8,
  "dpo.learning_rate": 1e-3,
  "dpo.min_gap": 0.0,
  "soup.alphas": (0.5,),
}


def tiny_fields(model, prompt_file) -> dict:
  return {"model": model, "prompts.source": prompt_file, **TINY}


@pytest.fixture
def prompt_file(tmp_path):
  path = tmp_path / "prompts.jsonl"
  path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
  return str(path)


def test_the_readme_comparison_command_killed_and_resumed(tiny_smollm_dir, prompt_file, tmp_path):
  """The README's command, as printed plus the test-sized fields as --config flags, killed with SIGKILL while
  it trains its second model; the rerun skips everything finished and resumes the rest."""
  from tests.test_readme import section_blocks

  (block,) = section_blocks("## The method comparison", "bash")
  argv = shlex.split(block.split("#")[0])
  assert argv[:3] == ["python", "-m", "experiments.compare_methods"]
  wd = tmp_path / argv[3].split("=", 1)[1]
  fields = tiny_fields(tiny_smollm_dir, prompt_file)
  flags = [f"--config.{k}={v}" for k, v in fields.items()]
  env = {**os.environ, "PYTHONPATH": str(ROOT), "MAP_JAX_TRACEBACK": "1"}
  proc = subprocess.Popen(
    [sys.executable, *argv[1:], *flags],
    cwd=tmp_path,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    announced = []
    for line in proc.stdout:
      announced.append(line.strip())
      if line.strip() == "stage model_MORL-F-00: running":
        proc.send_signal(signal.SIGKILL)
        break
  finally:
    proc.kill()
    _, err = proc.communicate(timeout=60)
  assert announced[-1] == "stage model_MORL-F-00: running", (announced, err[-3000:])
  assert "stage model_MAP-F-00: running" in announced

  c = configs.load("compare_default")
  c.update_from_flattened_dict(fields)
  seen = []
  report = compare.run(c, str(wd), on_unit=lambda u, skipped: seen.append((u, skipped)))
  ran = [u for u, skipped in seen if not skipped]  # every decoding stage, the λ draw and MAP-F-00 were done
  assert ran[0] == "model_MORL-F-00" and all(u.startswith("model_") for u in ran) and "model_MAP-F-00" not in ran
  assert set(report["methods"]) == {"MAP-D", "MORL-D", "MAP-F", "MORL-F", "DPO(0.5)", "DPO-Soup(0.5)"}
  counts = {m: r["models"] for m, r in report["methods"].items()}
  assert counts == {"MAP-D": 4, "MORL-D": 4, "MAP-F": 1, "MORL-F": 1, "DPO(0.5)": 2, "DPO-Soup(0.5)": 1}
  assert (wd / "comparison.md").exists() and (wd / "expected.png").stat().st_size > 1000
  test_prompts = json.loads((wd / "decoding" / "prompts.json").read_text())["test"]
  for name in ("MAP-F-00", "MORL-F-00", "DPO-b0.5-a0", "Soup-b0.5-a0.5"):  # every model answered every prompt once
    rows = [json.loads(line) for line in (wd / "answers" / f"{name}.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == test_prompts
  steps = [json.loads(line)["step"] for line in (wd / "models" / "MORL-F-00" / "metrics.jsonl").open()]
  assert steps == [1, 2]  # the killed unit: each step once, whether its first checkpoint was written or not

  # More palettes: only the λ draw reruns; every trained model is reused, the earlier draws kept.
  c.compare.num_palettes = 5
  seen.clear()
  grown = compare.run(c, str(wd), on_unit=lambda u, skipped: seen.append((u, skipped)))
  assert [u for u, skipped in seen if not skipped] == ["lambdas"]
  assert grown["methods"]["MAP-D"]["models"] == 5
  assert [m for m in grown["models"] if m["name"] == "MAP-D-03"] == [
    m for m in report["models"] if m["name"] == "MAP-D-03"
  ]


def test_both_configs_validate_and_plan_their_models():
  lams = {"MAP": [{"lambda": [0.0, 0.0]}] * 20, "MORL": [{"lambda": [0.0, 0.0]}] * 20}
  default, paper = configs.load("compare_default"), configs.load("compare_opt1.3b")
  for c in (default, paper):
    compare.validate(c)
  plan = [(u.method, u.kind) for u in compare.units(default, lams)]
  assert plan.count(("MAP-F", "ppo")) == 2 and plan.count(("MORL-F", "ppo")) == 2
  assert plan.count(("DPO(0.1)", "dpo")) == 3 and plan.count(("DPO-Soup(0.5)", "soup")) == 3
  assert len(plan) == 16  # the soups' endpoints are DPO's own α = 0 and α = 1 models
  assert len(compare.units(paper, lams)) == 20 + 20 + 2 * 11 + 2 * 9
  for field, value, message in (
    ("compare.num_finetuned", 30, "exceeds num_palettes"),
    ("dpo.alphas", (0.0, 1.5), r"mixing ratios must lie in \[0, 1\]"),
    ("targeted", "positiveness", "target at least two values"),
    ("compare.methods", "MAP-D,PPO", r"unknown \['PPO'\]"),
  ):
    bad = configs.load("compare_default")
    bad.update_from_flattened_dict({field: value})
    with pytest.raises(ValueError, match=message):
      compare.validate(bad)
