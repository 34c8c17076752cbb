"""The prepared accelerator check runs end to end with tiny shapes on CPU, as the README prints it, so it is
ready when a device is lent."""

import shlex
import subprocess
import sys

from tests.test_readme import ROOT, section_blocks


def test_the_accelerator_checks_tiny_line_runs_as_printed():
  (block,) = section_blocks("### The paper's scale on an accelerator", "bash")
  (line,) = [x.split("#")[0] for x in block.splitlines() if "--tiny" in x]
  argv = shlex.split(line)
  assert argv[:3] == ["python", "-m", "benchmarks.accelerator"]
  proc = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = [[c.strip() for c in x.strip("|").split("|")] for x in proc.stdout.splitlines() if x.startswith("| ")]
  header, rows = rows[0], rows[1:]
  assert header == ["measurement", "result", "share", "of", "memory"]
  # Tiny mode has one model shape, so one LoRA row (the 1B and 7B rows of a device run are the same program).
  assert [r[0].split(",")[0] for r in rows] == ["sample llama-tiny-random"] * 2 + [
    "PPO update llama-tiny-random"
  ] * 2 + ["solver"], rows
  assert "LoRA r=16" in rows[3][0] and "LoRA" not in rows[2][0]
  for name, result, share, of, memory in rows:
    assert float(result.split()[0].replace(",", "")) > 0, name
    assert float(memory.split()[0]) > 0 and memory.split()[1] in ("MB", "GB"), name
    if of:  # a share of this CPU's own measured peaks
      assert 0 < float(share.rstrip("%")), name
  assert "measured here: bf16 matmul" in proc.stdout
