r"""The MAP paper's decoding setup on Llama-2-7B-chat: the OPT-1.3B setup with the chat model and its template.

    python -m experiments.run_map --config=configs/paper_llama2_7b.py --workdir=runs/llama2-7b

Needs hub access to the gated meta-llama/Llama-2-7b-chat-hf (or a local directory in --config.model) and a
GPU with about 20 GB free for bfloat16 weights, KV caches of 64 x 17 rows, and the reward models.
"""

import configs


def get_config():
  c = configs.load("paper_opt1.3b")
  c.model = "meta-llama/Llama-2-7b-chat-hf"
  c.chat = True
  c.generation.batch_size = 32
  c.value_options = {"perplexity": {"model": "meta-llama/Llama-2-7b-chat-hf", "chat": True}}
  return c
