r"""MAP-F on Llama-2-7B-chat with LoRA, on one 80 GB GPU: the paper's OPT-1.3B PPO setup with the chat model.

  python -m experiments.train_ppo --config=configs/ppo_llama2_7b_lora.py --workdir=/ckpt/map_f_llama2_7b

Full fine-tuning does not fit one 80 GB GPU: float32 master weights (27.0 GB), their Adam moments (53.9 GB)
and gradients (27.0 GB), with a bfloat16 reference (13.5 GB), come to 121 GB before activations. With rank-16
adapters on every projection (`lora_rank=16`, `map_jax.align.lora`) the base stays frozen in bfloat16 and is
also the reference p0:

    base weights, bf16, shared by policy and reference   6.74e9 × 2 B       = 13.5 GB
    adapters, float32: 32 layers × 16 × (4 × (4096 + 4096) + 3 × (4096 + 11008))
                       = 39.98e6 parameters (0.59% of the model)  × 4 B     =  0.16 GB
    their gradients and Adam moments                       3 × 0.16 GB      =  0.48 GB
    rollout KV cache: 20 rows × (128 + 50) slots × 32 layers × 2 × 4096 × 2 B =  1.9 GB
    update activations: a micro-batch of 5 rows × 178 tokens (grad_accum 4), about 5.4 MB
                        per token over the 32 layers in bf16                   ≈  4.8 GB
    reward models (three BERT/DistilRoBERTa-size classifiers)                  <  2 GB

about 23 GB in all, so one 40 GB GPU suffices and an 80 GB one leaves room for a larger batch
(`--config.run.batch_size=40`) or `--config.ppo.value_model=separate` (its trunk is the same frozen base with
adapters of its own, not a second copy). The adapter count is checked by tests/experiments/test_train_ppo.py
against the model's shapes; the measured device footprint of a 7B LoRA update is what
`python -m benchmarks.accelerator` prints once a GPU is at hand (none has been lent to this project yet).
The exported policy (`params/`) has the adapters merged in: a plain Llama checkpoint for `run_map
--config.map_f=...`. Needs the gated meta-llama/Llama-2-7b-chat-hf (or a local directory in --config.model).
"""

import ml_collections

import configs


def get_config() -> ml_collections.ConfigDict:
  """configs/ppo_opt1.3b.py with Llama-2-7B-chat (its chat template), a frozen bf16 base and rank-16 adapters."""
  config = configs.load("ppo_opt1.3b")
  config.model = "meta-llama/Llama-2-7b-chat-hf"
  config.dtype = config.param_dtype = "bfloat16"
  # LoRA's usual learning rate: the adapters start at zero and need larger steps than full fine-tuning's 1e-6.
  config.ppo.update(lora_rank=16, lora_alpha=32.0, learning_rate=1e-4)
  config.run.chat = True
  return config
