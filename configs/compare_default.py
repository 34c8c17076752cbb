r"""The method comparison on CPU: SmolLM2-135M-Instruct on chitchat, positiveness and harmlessness targeted.

    python -m experiments.compare_methods --workdir=runs/compare        # configs/compare_default.py

MAP-D and MORL-D at the paper's 20 palettes / random λ each, for the price of one pool of 12 candidates per test
prompt; MAP-F and MORL-F with 2 PPO models each, DPO(β) for β ∈ {0.1, 0.5} at mixing ratios 0, ½, 1 and
DPO-Soup(β) at ¼, ½, ¾ between the two value-specific DPO models, as many models and steps as fit the budget
of 90 minutes on 2 CPU cores (the README gives the measured time and what the small sizes cost in precision).
Preference pairs come from the scored pilot: 4 responses to each of 128 prompts, per value every pair whose
rewards differ by more than a quarter of that value's pilot standard deviation. The paper's setup (OPT-1.3B,
HH helpful vs harmless) is configs/compare_opt1.3b.py.
"""

import ml_collections

from configs import default, ppo_default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.targeted = "positiveness,harmlessness"  # the two values of the scatter plots; NE looks at these
  c.kept = ""
  c.value_options = ml_collections.ConfigDict()
  c.palettes = "HHH-50%"  # the pipeline's own palette (unused here: the comparison draws random palettes)
  c.prompts.num_pilot = 128  # also PPO's training prompts; DPO's pairs answer them
  c.prompts.num_test = 48
  c.pilot.samples_per_prompt = 4  # n = 512, and pairs per prompt for DPO
  c.decode.num_candidates = 12

  c.compare = ml_collections.ConfigDict()
  c.compare.methods = "MAP-D,MORL-D,MAP-F,MORL-F,DPO,DPO-Soup"
  c.compare.num_palettes = 20  # MAP palettes and MORL λ for the decoding methods (the paper's 20)
  c.compare.num_finetuned = 2  # MAP-F and MORL-F models: the first palettes / λ
  c.compare.max_l1 = 6.0  # random palettes kept when ||λ||₁ <= this; MORL's ||λ||₁ ~ U(0, this)
  c.compare.ppo_steps = 8

  # PPO as configs/ppo_default.py, a shorter run: a higher learning rate, so that 8 steps move the policy.
  c.ppo = ppo_default.get_config().ppo
  c.ppo.update(learning_rate=3e-5, warmup_steps=2, num_minibatches=2)
  # The fine-tuning loop shared by PPO and DPO (map_jax.align.trainer.RunConfig; steps, chat and seed set per
  # method and from the fields above).
  c.run = ml_collections.ConfigDict(
    dict(
      batch_size=16,
      max_prompt_tokens=64,
      checkpoint_every=4,
      keep_checkpoints=1,
      mesh_data=1,
      mesh_fsdp=-1,
      progress=True,
      tensorboard=False,
    )
  )
  c.dpo = ml_collections.ConfigDict(
    dict(
      betas=(0.1, 0.5),
      alphas=(0.0, 0.5, 1.0),  # share of the second targeted value's pairs
      num_steps=12,
      batch_size=8,  # pairs per step (PPO's prompts per step are run.batch_size)
      num_pairs=96,  # pairs per model (fewer when a set holds fewer)
      min_gap=0.25,  # in pilot standard deviations of the value
      learning_rate=5e-6,
      max_response_tokens=32,
      max_grad_norm=1.0,
      lora_rank=0,  # > 0: train rank-r adapters over a frozen base instead of every weight (map_jax.align.lora)
      lora_alpha=16.0,
    )
  )
  c.soup = ml_collections.ConfigDict(dict(alphas=(0.25, 0.5, 0.75)))
  # Preference sets of the first and second targeted value: "pilot" (pairs from the scored pilot) or an
  # HH-RLHF-schema table (chosen/rejected dialogues), e.g. helpful-base/train.jsonl.gz.
  c.preferences = ml_collections.ConfigDict(dict(a="pilot", b="pilot"))
  return c
