r"""MAP-F as in the MAP paper: OPT-1.3B on Anthropic HH harmless prompts, PPO with lr 1e-6, batch 20, one epoch.

  python -m experiments.train_ppo --config=configs/ppo_opt1.3b.py --workdir=/ckpt/map_f_opt1.3b

For a GPU (bfloat16 compute, float32 master weights and Adam moments: about 26 GB for policy, reference,
gradients and moments, so one 40 GB+ GPU, or shard over several with `--config.run.mesh_fsdp=-1`; the batch of
20 must split evenly over the devices: 1, 2, 4, 5 or 10 of them). "One epoch" is one pass over the 2,000
training prompts: 100 iterations of 20 prompts; each rollout gets 4 PPO passes at a constant learning rate
(the TRL defaults the paper used: the CPU default's warm-up is turned off and the KL is TRL's
sampled log-ratio, not the default's exact per-token KL). The palette follows the paper's
"raise three, keep three": humor, positiveness and harmlessness at their 60% quantiles on a 500 × 4 pilot,
diversity, coherence and perplexity kept at their means. Not run here (no GPU in this project's CI); the
config is built and validated by tests/experiments/test_train_ppo.py.
"""

import ml_collections

from configs import ppo_default


def get_config() -> ml_collections.ConfigDict:
  """The CPU default with the paper's model, data, values and optimisation settings."""
  config = ppo_default.get_config()
  config.model = "facebook/opt-1.3b"
  config.dtype = "bfloat16"
  config.prompts.update(source="hh-rlhf", num=2000)
  config.targeted = "humor,positiveness,harmlessness"
  config.kept = "diversity,coherence,perplexity"
  config.palettes = "HHH-60%"
  config.pilot.num_prompts = 500
  config.ppo.update(
    max_new_tokens=50,
    kl_estimator="sample",
    learning_rate=1e-6,
    warmup_steps=0,
    ppo_epochs=4,
    num_minibatches=1,
    grad_accum=4,
  )
  config.run.update(num_steps=100, batch_size=20, max_prompt_tokens=128, chat=False, checkpoint_every=20)
  return config
