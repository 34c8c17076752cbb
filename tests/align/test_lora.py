"""LoRA: fresh adapters change nothing; adapter gradients match finite differences and the base kernel's
gradient; merging reproduces the adapted model; PPO and DPO train adapters only, raise their objective and
resume bitwise."""

import dataclasses
import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from map_jax import parallel
from map_jax.align import dpo, lora, map_f, ppo, trainer
from map_jax.models import layers as L
from map_jax.models.gpt2 import GPT2Config
from map_jax.models.layers import LoRA
from map_jax.models.loading import restore_params
from map_jax.models.opt import OPTConfig

from .test_dpo import _pairs
from .test_ppo import TINY, TINY_PPO, TINY_RUN, tiny_model, tiny_prompts, token_fraction

CONFIGS = {
  "llama": dataclasses.replace(TINY, num_layers=2),
  "gpt2": GPT2Config(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48),
  "opt": OPTConfig(
    vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, intermediate_size=48, word_embed_proj_dim=32
  ),
}
TOKENS = jnp.asarray(np.random.default_rng(0).integers(3, 64, (3, 7)), jnp.int32)


@functools.partial(jax.jit, static_argnums=0)
def _logits(module, params):
  return module.apply({"params": params}, TOKENS).logits


@functools.partial(jax.jit, static_argnums=0)
def _init(module, key):
  """Plain params of `module` (with a LoRA module: base and adapters together)."""
  return nn.meta.unbox(module.init(key, jnp.zeros((1, 1), jnp.int32))["params"])


@functools.lru_cache(maxsize=None)
def _base_and_adapters(config, spec=LoRA(rank=4)):
  """(base, fresh adapters) from one init of the LoRA module (tracing a Flax init is the slow part here)."""
  return lora.split(_init(config.module(lora=spec), jax.random.key(0)))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _perturbed(adapters, scale=0.05, seed=1):
  leaves, tree = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)])


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_fresh_adapters_and_the_base_alone_give_the_base_model_exactly(family):
  config = CONFIGS[family]
  module = config.module(lora=LoRA(rank=4))
  base, adapters = _base_and_adapters(config)
  # Every projection of every layer got A [L, in..., r] and B [L, r, out...] = 0; nothing else did.
  names = {path[-2].key for path, _ in jax.tree_util.tree_leaves_with_path(adapters)}
  assert (
    names
    == {
      "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
      "gpt2": {"q_proj", "k_proj", "v_proj", "o_proj", "fc", "proj"},
      "opt": {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"},
    }[family]
  )
  for path, x in jax.tree_util.tree_leaves_with_path(adapters):
    assert x.shape[0] == config.num_layers and 4 in x.shape
    if path[-1].key == "lora_b":
      assert not np.any(np.asarray(x))
    else:  # PEFT's init: uniform within ±1/sqrt(fan-in)
      kernel = base["layers"][path[-2].key]["kernel"]
      fan_in = np.prod(kernel.shape[1 : x.ndim - 1])
      assert 0 < np.abs(np.asarray(x)).max() <= fan_in**-0.5
  want = _logits(config.module(), base)
  for params in (lora.combine(base, adapters), base):  # fresh adapters; adapters off
    np.testing.assert_array_equal(np.asarray(_logits(module, params)), np.asarray(want))
  again = lora.split(lora.combine(base, adapters))
  assert jax.tree.structure(again) == jax.tree.structure((base, adapters))
  assert all(x is y for x, y in zip(jax.tree.leaves(again), jax.tree.leaves((base, adapters))))


def test_merged_kernels_reproduce_the_adapted_model():
  config, spec = CONFIGS["llama"], LoRA(rank=4)
  module = config.module(lora=spec)
  base, adapters = _base_and_adapters(config)
  adapters = _perturbed(adapters, 0.3)
  full = lora.combine(base, adapters)
  merged = jax.jit(lambda p: lora.merge(p, spec))(full)
  assert jax.tree.structure(merged) == jax.tree.structure(base)
  # One kernel against float64 NumPy: W + (α / r)·A B, per layer; o_proj's input has two axes (heads, head_dim).
  out = "o_proj"
  a, b = (np.asarray(adapters["layers"][out][k], np.float64) for k in ("lora_a", "lora_b"))
  want = np.asarray(base["layers"][out]["kernel"], np.float64) + spec.scale * np.einsum("lhdr,lre->lhde", a, b)
  np.testing.assert_allclose(np.asarray(merged["layers"][out]["kernel"]), want, rtol=1e-6, atol=1e-6)
  adapted = _logits(module, full)
  assert np.abs(np.asarray(adapted - _logits(config.module(), base))).max() > 1e-2
  np.testing.assert_allclose(np.asarray(_logits(config.module(), merged)), np.asarray(adapted), atol=2e-5)


class TwoLayers(nn.Module):
  """A tiny float64 network of LoRA projections: [B, 5] -> [B, 3, 4] (heads) -> tanh -> [B, 2] over two axes."""

  lora: LoRA

  @nn.compact
  def __call__(self, x):
    f64 = dict(dtype=jnp.float64, param_dtype=jnp.float64, lora=self.lora)
    h = L.dense((3, 4), (L.EMBED, L.HEADS, L.HEAD_DIM), use_bias=True, name="q_proj", **f64)(x)
    return L.dense(2, (L.HEADS, L.HEAD_DIM, L.EMBED), axis=(-2, -1), name="o_proj", **f64)(jnp.tanh(h))


def test_adapter_gradients_match_finite_differences():
  spec = LoRA(rank=2, alpha=4.0, param_dtype="float64")
  with jax.enable_x64(True):
    module = TwoLayers(spec)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)))
    base, adapters = lora.split(nn.meta.unbox(module.init(jax.random.key(0), x)["params"]))
    adapters = _perturbed(adapters, 0.5)
    loss = jax.jit(lambda ad: jnp.sum(jnp.sin(module.apply({"params": lora.combine(base, ad)}, x))))
    grads = jax.grad(loss)(adapters)
    flat, tree = jax.tree.flatten(adapters)
    for i, g in enumerate(jax.tree.leaves(grads)):  # central differences, every coordinate of every adapter
      fd = np.zeros(g.shape)
      for j in np.ndindex(g.shape):
        bumped = [[x.at[j].add(h) if k == i else x for k, x in enumerate(flat)] for h in (1e-6, -1e-6)]
        fd[j] = (loss(jax.tree.unflatten(tree, bumped[0])) - loss(jax.tree.unflatten(tree, bumped[1]))) / 2e-6
      np.testing.assert_allclose(np.asarray(g), fd, rtol=1e-6, atol=1e-9)


LORA_PPO = dataclasses.replace(TINY_PPO, lora_rank=4, lora_alpha=8.0)


@functools.lru_cache(maxsize=None)
def readable_model():
  """tests/align/test_ppo.py's tiny model with its output layer scaled ×10. At N(0, 0.02) its logits span
  about ±0.1 whatever the hidden state (entropy ln 64): adapters, which move only hidden states, could not
  raise any token far. Scaled, the logits have a trained model's range and the layers' outputs matter."""
  model = tiny_model()
  params = nn.meta.unbox(model.params)
  return model._replace(params=dict(params, lm_head={"kernel": params["lm_head"]["kernel"] * 10}))


def test_ppo_with_lora_trains_the_adapters_only_and_raises_a_synthetic_reward():
  """The reward of tests/align/test_ppo.py (fraction of token 7, λ = 20) with rank-4 adapters in place of every
  weight: the base never moves, the state holds adapters and the value head, and the reward still rises."""
  model = readable_model()
  run = dataclasses.replace(TINY_RUN, num_steps=30)
  res = map_f.fine_tune(model, tiny_prompts(), [token_fraction("7")], [20.0], LORA_PPO, run)
  reward = np.array([m["reward/frac7"] for m in res.history])
  assert res.history[0]["kl"] == 0.0  # B = 0: the first rollout comes from p0 itself
  assert reward[:5].mean() < 0.04 and reward[-10:].mean() > 0.07, reward
  policy = res.state.params["policy"]
  assert {p[-1].key for p, _ in jax.tree_util.tree_leaves_with_path(policy)} == {"lora_a", "lora_b"}
  assert lora.num_params(policy) < 0.2 * lora.num_params(model.params)
  # The exported policy is the base with the adapters merged in: same tree, moved kernels, untouched embeddings.
  base = nn.meta.unbox(model.params)
  assert jax.tree.structure(res.params) == jax.tree.structure(base)
  np.testing.assert_array_equal(res.params["embed_tokens"]["embedding"], base["embed_tokens"]["embedding"])
  assert np.abs(np.asarray(res.params["layers"]["q_proj"]["kernel"] - base["layers"]["q_proj"]["kernel"])).max() > 0
  module = model.config.module(lora=LORA_PPO.lora)
  np.testing.assert_allclose(
    np.asarray(_logits(model.config.module(), res.params)),
    np.asarray(_logits(module, lora.combine(base, policy))),
    atol=1e-4,
  )


def test_ppo_with_lora_resumes_bitwise_and_checkpoints_only_adapters(tmp_path):
  model, prompts, values, cfg = readable_model(), tiny_prompts(), [token_fraction("7")], LORA_PPO
  run = dataclasses.replace(TINY_RUN, num_steps=4, checkpoint_every=2)
  straight = map_f.fine_tune(model, prompts, values, [20.0], cfg, run, str(tmp_path / "straight"))

  def crash(step, metrics):
    if step == 3:
      raise KeyboardInterrupt("killed")

  with pytest.raises(KeyboardInterrupt):
    map_f.fine_tune(model, prompts, values, [20.0], cfg, run, str(tmp_path / "killed"), on_step=crash)
  resumed = map_f.fine_tune(model, prompts, values, [20.0], cfg, run, str(tmp_path / "killed"))
  assert len(resumed.history) == 2
  for a, b in zip(
    jax.tree.leaves((straight.state.params, straight.state.opt_state)),
    jax.tree.leaves((resumed.state.params, resumed.state.opt_state)),
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The checkpointed state holds adapters, the value head and their Adam moments: no copy of the base.
  leaves = {p[-1].key for p, _ in jax.tree_util.tree_leaves_with_path(resumed.state.params)}
  assert leaves == {"lora_a", "lora_b", "kernel", "bias"}  # kernel and bias: the value head's
  assert lora.num_params(resumed.state.params) < 0.5 * lora.num_params(model.params)
  policy = nn.meta.unbox(restore_params(resumed.params_dir, model.config))
  for a, b in zip(jax.tree.leaves(policy), jax.tree.leaves(straight.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  lines = [json.loads(x) for x in open(tmp_path / "killed" / "metrics.jsonl")]
  assert [x["step"] for x in lines] == [1, 2, 3, 4]
  with pytest.raises(Exception, match="ppo.lora_rank: checkpoint 4, now 2"):
    map_f.fine_tune(
      model, prompts, values, [20.0], dataclasses.replace(cfg, lora_rank=2), run, str(tmp_path / "killed")
    )


def test_dpo_with_lora_raises_the_chosen_margin_and_exports_a_plain_policy(tmp_path):
  model, pairs = tiny_model(), _pairs()
  cfg = dpo.DPOConfig(beta=0.5, learning_rate=5e-2, max_response_tokens=6, lora_rank=4, lora_alpha=8.0)
  run = trainer.RunConfig(num_steps=6, batch_size=4, max_prompt_tokens=4, chat=False, tensorboard=False)
  res = trainer.train(dpo.DPOMethod(model, pairs, cfg, run), run, str(tmp_path))
  assert res.history[0]["margin"] == 0.0  # the policy starts as the reference
  assert res.history[-1]["margin"] > 0.5 and res.history[-1]["accuracy"] == 1.0, res.history
  assert {p[-1].key for p, _ in jax.tree_util.tree_leaves_with_path(res.state.params)} == {"lora_a", "lora_b"}
  exported = nn.meta.unbox(restore_params(res.params_dir, model.config))
  module = model.config.module(lora=cfg.lora)
  np.testing.assert_allclose(
    np.asarray(_logits(model.config.module(), exported)),
    np.asarray(_logits(module, lora.combine(nn.meta.unbox(model.params), res.state.params))),
    atol=1e-4,
  )


def test_a_separate_value_trunk_is_the_base_with_adapters_of_its_own():
  cfg = dataclasses.replace(LORA_PPO, value_model="separate")
  module = TINY.module(lora=cfg.lora)
  state = ppo.abstract_state(module, cfg)
  policy, trunk = state.params["policy"], state.params["value"]["trunk"]
  assert jax.tree.structure(trunk) == jax.tree.structure(policy)
  assert {p[-1].key for p, _ in jax.tree_util.tree_leaves_with_path(trunk)} == {"lora_a", "lora_b"}
  shardings = ppo.state_shardings(module, cfg, parallel.make_mesh())
  assert jax.tree.structure(shardings.params) == jax.tree.structure(state.params)


def test_bad_lora_settings_are_named():
  with pytest.raises(ValueError, match="lora_rank must be >= 0"):
    dataclasses.replace(TINY_PPO, lora_rank=-1).validate()
  with pytest.raises(ValueError, match="LoRA rank must be >= 1"):
    LoRA(rank=0)
  with pytest.raises(ValueError, match="adapter path 'nope'"):
    lora.combine({"layers": {}}, {"nope": {"lora_a": np.zeros(1)}})
  with pytest.raises(ValueError, match="no LoRA"):
    lora.init_adapters(TINY.module(), jax.random.key(0))
