"""The README's solver snippet and command run as printed (copied out of README.md, not retyped)."""

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def section_blocks(heading: str, lang: str) -> list[str]:
  """The `lang` code blocks of the README section that starts with `heading`."""
  text = (ROOT / "README.md").read_text()
  start = text.index(heading)
  end = text.find("\n## ", start + len(heading))
  return re.findall(rf"```{lang}\n(.*?)```", text[start : end if end > 0 else None], re.S)


def test_the_solver_snippet_runs_as_printed(tmp_path):
  (code,) = section_blocks("## The solver in use", "python")
  check = (
    "\nimport numpy as np\n"
    "assert bool(sol.feasible) and sol.lam.shape == (6,) and float(sol.ess) > 1\n"
    "assert np.asarray(sols.lam).shape == (3, 6) and bool(np.asarray(sols.feasible).all())\n"
    "assert np.all(np.asarray(adj.palette) == np.asarray(c))  # feasible: returned unchanged\n"
    "print('ok', names)\n"
  )
  proc = subprocess.run([sys.executable, "-c", code + check], capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "ok ['humor', 'gpt2-helpful', 'gpt2-harmless', 'diversity', 'coherence', 'perplexity']" in proc.stdout


def test_the_solve_palette_command_runs_as_printed(tmp_path):
  blocks = [b for b in section_blocks("## The solver in use", "bash") if "experiments.solve_palette" in b]
  assert len(blocks) == 1
  argv = shlex.split(blocks[0].replace("\\\n", " "))
  assert argv[:3] == ["python", "-m", "experiments.solve_palette"]
  os.symlink(ROOT / "examples", tmp_path / "examples")  # run where out.json may be written, as printed
  env = {**os.environ, "PYTHONPATH": str(ROOT)}
  proc = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((tmp_path / "out.json").read_text())
  assert not record["feasible"] and record["adjusted"]["feasible"]


def test_the_models_snippet_runs_as_printed():
  (code,) = section_blocks("## Models, generation and reward values", "python")
  check = "\nassert len(out.text) == 4 and any(out.text)\n"
  proc = subprocess.run([sys.executable, "-c", code + check], capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  scores = [float(x) for x in proc.stdout.strip().strip("[]").split()]
  assert len(scores) == 4 and all(-1 <= s <= 1 for s in scores)  # VADER compound scores


def test_the_train_score_solve_commands_run_as_printed(tmp_path):
  (block,) = [b for b in section_blocks("## Models, generation and reward values", "bash")]
  lines = [shlex.split(line) for line in block.strip().splitlines()]
  assert [argv[2] for argv in lines] == ["experiments.train_reward", "experiments.score", "experiments.solve_palette"]
  # The default run's pilot table: prompts with 4 sampled responses each (here real chitchat turns).
  from chitchat_dataset import Dataset

  texts = [m["text"] for conv in list(Dataset().values())[:20] for turn in conv["messages"] for m in turn][:160]
  (tmp_path / "runs" / "default").mkdir(parents=True)
  rows = [
    {"prompt": texts[i], "prompt_index": i, "sample": s, "response": texts[(i + 37 * s + 1) % len(texts)]}
    for i in range(0, 80, 2)
    for s in range(4)
  ]
  (tmp_path / "runs" / "default" / "pilot.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  env = {**os.environ, "PYTHONPATH": str(ROOT), "MAP_JAX_TRACEBACK": "1"}
  for argv in lines:
    proc = subprocess.run(
      [sys.executable, *argv[1:]], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env
    )
    assert proc.returncode == 0, (argv, proc.stderr[-3000:])
  assert (tmp_path / "heads" / "witty" / "meta.json").exists()
  scored = [json.loads(line) for line in (tmp_path / "runs" / "default" / "mine.jsonl").read_text().splitlines()]
  assert len(scored) == len(rows) and all({"witty", "positiveness", "harmlessness", "length"} <= set(r) for r in scored)
  assert "λ" in proc.stdout or "lambda" in proc.stdout.lower(), proc.stdout
