r"""The MAP paper's decoding setup on OPT-1.3B: Anthropic HH (harmless-base) prompts, the paper's reward models.

    python -m experiments.run_map --config=configs/paper_opt1.3b.py --workdir=runs/opt1.3b

Needs the hub (or local copies: set --config.model and the value specs to directories) and, for a run in
hours rather than days, a GPU: 2,000 pilot samples and 500 test prompts x 17 samples of 50 tokens from a
1.3B model, each scored by two GPT-2-large reward models. On one H100 expect well under an hour.

Values as in the paper's Table 1: humor (a DistilBERT humor classifier, log P(humor)), helpfulness and
harmlessness (GPT-2-large reward models trained on Anthropic HH, scored on the HH dialogue template), all
targeted; diversity, coherence and perplexity kept at their mean. Palettes HHH-50..80%.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.model = "facebook/opt-1.3b"
  c.dtype = "bfloat16"
  c.chat = False  # a base model: prompts are continued as they are

  c.prompts.source = "hh-rlhf"  # first human turns of Anthropic/hh-rlhf, harmless-base
  c.prompts.max_chars = 1000
  c.prompts.num_pilot = 2000
  c.prompts.num_test = 500

  c.generation.max_new_tokens = 50
  c.generation.batch_size = 64

  c.targeted = ",".join(
    [
      "humor=classifier:mohameddhiab/humor-no-humor:1",
      "gpt2-helpful=reward_model:Ray2333/gpt2-large-helpful-reward_model",
      "gpt2-harmless=reward_model:Ray2333/gpt2-large-harmless-reward_model",
    ]
  )
  c.kept = "diversity,coherence,perplexity"
  c.value_options = {"perplexity": {"model": "facebook/opt-1.3b"}}  # perplexity under the base model

  c.palettes = "HHH-50%;HHH-60%;HHH-70%;HHH-80%"
  c.decode.num_candidates = 16
  return c
