"""Alignment of a base model to a palette: MAP-D by decoding (decode.py), and fine-tuning methods on one loop
(trainer.py): PPO (ppo.py, MAP-F and MORL-F in map_f.py), DPO (dpo.py), model soups (soup.py).

The built-in fine-tuning methods are declared here as `map_jax.plugins` entries of kind "method" (targets as
"module:attribute", so nothing is imported until a method is looked up); a user's method registers the same way.
"""

from map_jax import plugins

plugins.register("method", "ppo", "map_jax.align.ppo:PPOMethod", "PPO toward λᵀr with KL to the base model")
plugins.register("method", "dpo", "map_jax.align.dpo:DPOMethod", "DPO on (prompt, chosen, rejected) pairs")
