r"""The MAP paper's method comparison (Table 3, Figure 7): OPT-1.3B, Anthropic HH helpful vs harmless, on a GPU.

    python -m experiments.compare_methods --config=configs/compare_opt1.3b.py --workdir=runs/compare_opt \
      --config.preferences.a=/data/hh/helpful-base/train.jsonl.gz \
      --config.preferences.b=/data/hh/harmless-base/train.jsonl.gz

20 palettes / λ per method, β ∈ {0.1, 0.5}, mixing ratios 0, 0.1, ..., 1 for DPO and the soups. Values: the
paper's GPT-2-large helpfulness and harmlessness reward models (hub ids; give local directories offline);
preference sets from local HH-RLHF files of the hub's schema (helpful-base and harmless-base), as in the
paper; prompts and the sampling setup as configs/paper_opt1.3b.py. Needs the hub or local copies, and a GPU:
each of the 20 MAP-F, 20 MORL-F and 22 DPO models is a fine-tuning run of a 1.3B model.
"""

import configs
from configs import compare_default


def get_config():
  paper = configs.load("paper_opt1.3b")
  c = compare_default.get_config()
  for field in ("model", "dtype", "chat", "prompts", "generation", "decode"):
    c[field] = paper[field]
  c.pilot.samples_per_prompt = 4
  c.prompts.num_pilot = 500  # x 4 samples: the paper's 2,000-sample pilot
  c.targeted = ",".join(
    [
      "gpt2-helpful=reward_model:Ray2333/gpt2-large-helpful-reward_model",
      "gpt2-harmless=reward_model:Ray2333/gpt2-large-harmless-reward_model",
    ]
  )
  c.kept = ""
  c.compare.num_palettes = 20
  c.compare.num_finetuned = 20
  c.compare.ppo_steps = 100
  c.ppo.update(
    max_new_tokens=50, kl_estimator="sample", learning_rate=1e-6, warmup_steps=0, ppo_epochs=4, num_minibatches=1
  )
  c.run.update(batch_size=20, max_prompt_tokens=128, checkpoint_every=20, tensorboard=True)
  c.dpo.update(
    alphas=tuple(i / 10 for i in range(11)),
    num_steps=500,
    batch_size=20,
    num_pairs=10_000,
    learning_rate=5e-7,
    max_response_tokens=128,
  )
  c.soup.alphas = tuple(i / 10 for i in range(1, 10))
  c.preferences.a = "helpful-base/train.jsonl.gz"  # set to local HH-RLHF files
  c.preferences.b = "harmless-base/train.jsonl.gz"
  return c
