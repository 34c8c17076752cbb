r"""Stage 1 of a MAP run: sample the pilot set from the base model p0 (and the prompt split it needs).

  python -m experiments.generate_pilot --workdir=runs/default [--config=configs/default.py]

n = num_pilot x samples_per_prompt responses (top-k 50, temperature 1, as the paper), written to
WORKDIR/pilot.jsonl; a killed run resumes at the next unfinished batch. Score it with experiments.score (or
let experiments.run_map do every stage).
"""

import os

from experiments import _launch

if __name__ == "__main__":
  _launch.launch("generate_pilot", lambda wd: f"pilot samples: {os.path.join(os.path.abspath(wd), 'pilot.jsonl')}")
