r"""MAP-D on the test prompts: k candidates from p0 each, scored, one resampled per palette by softmax(λᵀr).

  python -m experiments.align_decode --workdir=runs/default [--config.decode.mode=argmax]

Runs (or reuses) the stages it needs: the pilot set and its scores, λ for every palette, then the test
candidates and their scores; writes WORKDIR/decoded.json (the chosen candidate per prompt and palette).
Candidates are sampled once and shared by all palettes, so adding a palette costs one resampling.
"""

import os

from experiments import _launch

if __name__ == "__main__":
  _launch.launch("decode", lambda wd: f"choices: {os.path.join(os.path.abspath(wd), 'decoded.json')}")
