"""MAP-F PPO: GAE and the clipped losses against hand/NumPy references; PPO on a tiny model raises a reward."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from map_jax.align import map_f, ppo, trainer
from map_jax.models.llama import LlamaConfig
from map_jax.models.loading import LoadedModel, restore_params
from map_jax.sampling import token_logprobs

# One tiny model and one PPO config for every test that trains (tests/test_checkpoint.py and
# tests/test_parallel.py import them too), so the jitted rollout, make_batch and update compile once.
TINY = LlamaConfig(
  vocab_size=64,
  hidden_size=32,
  intermediate_size=48,
  num_layers=1,
  num_heads=4,
  num_kv_heads=2,
  head_dim=8,
  max_position_embeddings=64,
  eos_token_ids=(2,),
)
TINY_PPO = ppo.PPOConfig(max_new_tokens=8, learning_rate=3e-3, ppo_epochs=2, num_minibatches=2, grad_accum=2)
TINY_RUN = trainer.RunConfig(num_steps=4, batch_size=16, max_prompt_tokens=4, chat=False, tensorboard=False)


@functools.lru_cache(maxsize=None)
def tiny_model() -> LoadedModel:
  """A random 1-layer Llama over 64 tokens; no tokenizer, so texts are space-separated token ids."""
  module = TINY.module()
  params = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
  return LoadedModel(TINY, params, None)


def tiny_prompts(n: int = 32) -> list[str]:
  rng = np.random.default_rng(0)
  return [" ".join(map(str, rng.integers(3, 64, rng.integers(2, 5)))) for _ in range(n)]


def token_fraction(token: str):
  """Synthetic value: the fraction of response tokens equal to `token`."""

  def value(prompts, responses):
    return np.array([r.split().count(token) / max(1, len(r.split())) for r in responses])

  value.name = f"frac{token}"
  return value


# ----------------------------------------------------------------------------------------------- pure math


def test_gae_matches_hand_computed_values():
  # Row 0: γ = 1, λ = 0.5, three live tokens then padding (whose value 9 must be ignored):
  #   δ2 = 2 − (−0.5) = 2.5           A2 = 2.5
  #   δ1 = 0 + (−0.5) − 1 = −1.5      A1 = −1.5 + 0.5·2.5 = −0.25
  #   δ0 = 1 + 1 − 0.5 = 1.5          A0 = 1.5 + 0.5·(−0.25) = 1.375
  rewards = jnp.array([[1.0, 0.0, 2.0, 5.0]])
  values = jnp.array([[0.5, 1.0, -0.5, 9.0]])
  mask = jnp.array([[True, True, True, False]])
  adv, ret = jax.jit(ppo.gae, static_argnums=(3, 4))(rewards, values, mask, 1.0, 0.5)
  np.testing.assert_allclose(adv, [[1.375, -0.25, 2.5, 0.0]], atol=1e-6)
  np.testing.assert_allclose(ret, [[1.875, 0.75, 2.0, 0.0]], atol=1e-6)
  # λ = 1 with zero values gives discounted returns: 1 + 0.5·1 = 1.5, 1; γ = 0 gives the rewards themselves.
  adv, ret = ppo.gae(jnp.ones((1, 2)), jnp.zeros((1, 2)), jnp.ones((1, 2), bool), 0.5, 1.0)
  np.testing.assert_allclose(ret, [[1.5, 1.0]], atol=1e-6)
  adv, _ = ppo.gae(jnp.array([[3.0, 4.0]]), jnp.zeros((1, 2)), jnp.ones((1, 2), bool), 0.0, 0.95)
  np.testing.assert_allclose(adv, [[3.0, 4.0]], atol=1e-6)


def test_token_rewards_put_the_score_on_the_last_token_and_the_kl_everywhere():
  logp = jnp.array([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
  ref = jnp.array([[-1.5, -1.0, -3.0], [-2.0, -2.0, -2.0]])
  mask = jnp.array([[True, True, False], [True, True, True]])
  r = ppo.token_rewards(jnp.array([10.0, 20.0]), jnp.where(mask, logp - ref, 0.0), mask, beta=2.0)
  np.testing.assert_allclose(r, [[-1.0, 2.0 + 10.0, 0.0], [-2.0, -2.0, -2.0 + 20.0]])


def _np_masked_mean(x, m):
  return (x * m).sum() / m.sum()


def test_clipped_losses_match_a_numpy_reference():
  rng = np.random.default_rng(0)
  shape = (4, 6)
  logp, old = rng.normal(-2, 0.3, shape), rng.normal(-2, 0.3, shape)
  adv, ret = rng.normal(size=shape), rng.normal(size=shape)
  v, v_old = rng.normal(size=shape), rng.normal(size=shape)
  mask = rng.random(shape) < 0.7
  ratio = np.exp(logp - old)
  want_pg = _np_masked_mean(np.maximum(-adv * ratio, -adv * np.clip(ratio, 0.8, 1.2)), mask)
  v_clip = v_old + np.clip(v - v_old, -0.3, 0.3)
  want_vf = 0.5 * _np_masked_mean(np.maximum((v - ret) ** 2, (v_clip - ret) ** 2), mask)
  f32 = lambda *xs: [jnp.asarray(x, jnp.float32) for x in xs]  # noqa: E731
  pg, stats = jax.jit(ppo.policy_loss, static_argnums=4)(*f32(logp, old, adv), mask, 0.2)
  vf = jax.jit(ppo.value_loss, static_argnums=4)(*f32(v, v_old, ret), mask, 0.3)
  np.testing.assert_allclose(pg, want_pg, rtol=1e-5)
  np.testing.assert_allclose(vf, want_vf, rtol=1e-5)
  clipped = -adv * np.clip(ratio, 0.8, 1.2) > -adv * ratio
  np.testing.assert_allclose(stats["clip_fraction"], _np_masked_mean(clipped, mask), rtol=1e-5)
  # The gradient flows only where the ratio is inside the clip range or clipping would not help.
  g = jax.grad(lambda lp: ppo.policy_loss(lp, *f32(old, adv), mask, 0.2)[0])(*f32(logp))
  np.testing.assert_array_equal(np.asarray(g) != 0, mask & ~clipped)


def test_whiten_normalises_over_the_mask_only():
  x = jnp.array([[1.0, 2.0, 3.0, 100.0]])
  m = jnp.array([[True, True, True, False]])
  w = ppo.whiten(x, m)
  np.testing.assert_allclose(w[0, :3], (np.array([1, 2, 3]) - 2) / np.std([1, 2, 3]), rtol=1e-4)
  assert w[0, 3] == 0
  np.testing.assert_allclose(ppo.masked_std(x, m), np.std([1, 2, 3]), rtol=1e-4)


def test_config_validation_names_the_field():
  with pytest.raises(ValueError, match="value_model"):
    ppo.PPOConfig(value_model="twin").validate()
  with pytest.raises(ValueError, match="not a multiple of num_minibatches × grad_accum = 2 × 2"):
    TINY_PPO.validate(batch_size=6)
  with pytest.raises(ValueError, match="warmup_steps"):
    ppo.PPOConfig(warmup_steps=-1).validate()
  with pytest.raises(ValueError, match="kl_estimator must be one of"):
    ppo.PPOConfig(kl_estimator="k3").validate()


def test_warmup_scales_the_first_adam_updates_linearly():
  """Adam's first update moves each weight by the learning rate (sign-like); with a warm-up of 4 updates,
  update k moves it by k/4 of that, then the full rate."""
  cfg = ppo.PPOConfig(learning_rate=1e-3, warmup_steps=4, max_grad_norm=1e9)
  tx, tx_flat = ppo.make_optimizer(cfg), ppo.make_optimizer(dataclasses.replace(cfg, warmup_steps=0))
  params = {"w": jnp.zeros(3)}
  grad = {"w": jnp.array([0.5, -2.0, 1e-3])}
  state, flat_state = tx.init(params), tx_flat.init(params)
  for k in range(1, 7):
    step, state = tx.update(grad, state, params)
    flat, flat_state = tx_flat.update(grad, flat_state, params)
    np.testing.assert_allclose(step["w"], min(k / 4, 1.0) * flat["w"], rtol=1e-6)
  np.testing.assert_allclose(np.abs(flat["w"]), 1e-3, rtol=1e-4)  # a constant gradient: |update| = lr


# ----------------------------------------------------------------------------------------------- the model


def test_forward_with_a_separate_value_model_agrees_with_token_logprobs():
  """(The shared-head forward is checked by training: its first KL to p0 is exactly 0.)"""
  model = tiny_model()
  module = TINY.module()
  rng = np.random.default_rng(1)
  pt, pm = jnp.asarray(rng.integers(3, 64, (2, 4)), jnp.int32), jnp.array([[0, 1, 1, 1], [1, 1, 1, 1]], bool)
  yt, ym = jnp.asarray(rng.integers(3, 64, (2, 5)), jnp.int32), jnp.array([[1, 1, 1, 0, 0], [1] * 5], bool)
  cfg = dataclasses.replace(TINY_PPO, value_model="separate")
  params = ppo.init_state(module, model.params, jax.random.key(0), cfg).params
  assert set(params["value"]) == {"head", "trunk"}
  # A head of ones reads the trunk's summed hidden states: values that the policy's weights do not change.
  params["value"]["head"] = jax.tree.map(jnp.ones_like, params["value"]["head"])
  moved = dict(params, policy=jax.tree.map(lambda x: x * 1.5, params["policy"]))
  fwd = jax.jit(ppo.forward, static_argnums=(0, 6))
  logp, ent, values, kl = fwd(module, params, pt, pm, yt, ym, "separate")
  logp_moved, _, values_moved, _ = fwd(module, moved, pt, pm, yt, ym, "separate")
  assert kl is None  # no reference given
  _, want = token_logprobs(module, params["policy"], pt, pm, yt, ym)
  np.testing.assert_allclose(logp, want, atol=1e-5)
  assert not np.allclose(logp_moved, logp)
  np.testing.assert_array_equal(values_moved, values)
  ym = np.asarray(ym)
  assert np.all(np.asarray(values)[ym] != 0) and np.all(np.asarray(values)[~ym] == 0)
  assert np.all(np.asarray(ent)[ym] > 0) and np.all(np.asarray(ent)[~ym] == 0)


def test_exact_kl_matches_numpy():
  rng = np.random.default_rng(2)
  logits, ref_logits = rng.normal(size=(3, 5, 11)), rng.normal(size=(3, 5, 11))
  lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ref = ref_logits - np.log(np.exp(ref_logits).sum(-1, keepdims=True))
  want = (np.exp(lp) * (lp - ref)).sum(-1)
  got = ppo.exact_kl(jnp.asarray(lp, jnp.float32), jnp.asarray(ref, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.all(want > 0)


# Each estimator once and whitening on and off (the suite's time budget: the third combination adds no code path).
@pytest.mark.parametrize("estimator,whiten", [("sample", False), ("exact", True)])
def test_ppo_gradient_is_the_gradient_of_the_kl_regularised_objective(estimator, whiten):
  """Every 2-token response of the 64-token model, weighted by its probability under π: the PPO loss's
  gradient at π_old = π (ratio 1) must be −1/N times ∇_θ of J(θ) = E_π[score] − β KL(π ‖ p0), the exact
  objective differentiated directly. It holds for both KL estimators; the exact one without the loss's
  direct KL term must fail (so the test sees that term). Whitening rewards and advantages divides the whole
  gradient by one scale, which the direct term's kl_weight = β / scale must follow."""
  module = TINY.module()
  p0 = nn.meta.unbox(tiny_model().params)
  # π: p0 moved by noise, so KL(π ‖ p0) and its gradient are far from 0.
  leaves, tree = jax.tree.flatten(p0)
  keys = jax.random.split(jax.random.key(4), len(leaves))
  theta = jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  y = np.stack(np.meshgrid(np.arange(64), np.arange(64), indexing="ij"), -1).reshape(-1, 2).astype(np.int32)
  B, N = y.shape
  pt, pm = jnp.tile(jnp.array([[5, 9, 11]], jnp.int32), (B, 1)), jnp.ones((B, 3), bool)
  mask = jnp.ones((B, N), bool)
  score = jnp.asarray(3.0 * (y[:, 0] == 7) + 2.0 * (y[:, 1] % 3 == 0) - 0.5 * (y[:, 0] == y[:, 1]), jnp.float32)
  beta = 0.7
  cfg = dataclasses.replace(
    TINY_PPO,
    beta=beta,
    kl_estimator=estimator,
    gae_lambda=1.0,
    whiten_advantages=whiten,
    whiten_rewards=whiten,
    value_coef=0.0,
    max_new_tokens=N,
  )

  def objective(policy):
    _, lp = token_logprobs(module, policy, pt, pm, jnp.asarray(y), mask)
    _, ref = token_logprobs(module, p0, pt, pm, jnp.asarray(y), mask)
    logp = lp.sum(-1)
    return jnp.sum(jnp.exp(logp) * (score - beta * (logp - ref.sum(-1))))

  want = jax.jit(jax.grad(objective))(theta)
  params = ppo.init_state(module, theta, jax.random.key(0), cfg).params
  batch, _ = jax.jit(functools.partial(ppo.make_batch, module=module, cfg=cfg))(
    params, p0, pt, pm, jnp.asarray(y), mask, score
  )
  weight = B * jnp.exp(batch.logprobs.sum(-1))  # sampling y ~ π, exactly
  batch = batch._replace(advantages=batch.advantages * weight[:, None])
  if estimator == "exact":
    batch = batch._replace(kl_weight=batch.kl_weight * weight)
  grad_fn = jax.jit(jax.grad(lambda p, b: ppo.loss_fn(p, b, module=module, cfg=cfg)[0]))
  # The scale whitening divided by (1 without whitening): β / kl_weight before the weights were applied.
  unscale = beta / float(batch.kl_weight[0] / weight[0]) if whiten else 1.0
  got = grad_fn(params, batch)["policy"]
  scale = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want))
  close = lambda g, w: np.allclose(-N * unscale * g, w, rtol=1e-3, atol=5e-5 * scale)  # noqa: E731
  assert all(jax.tree.leaves(jax.tree.map(close, got, want)))
  if whiten:
    assert abs(unscale - 1.0) > 0.1, unscale
  if estimator == "exact":
    without = grad_fn(params, batch._replace(kl_weight=0.0 * batch.kl_weight))["policy"]
    assert not all(jax.tree.leaves(jax.tree.map(close, without, want)))


# ----------------------------------------------------------------------------------------------- training


def test_ppo_raises_a_synthetic_reward_and_the_kl_stays_finite():
  """Reward = fraction of token 7 (1/64 under the random model), λ = 20: the optimum p0·exp(20·frac) puts
  about 12× more mass on 7 per token; 30 PPO iterations must get a clear part of the way."""
  run = dataclasses.replace(TINY_RUN, num_steps=30)
  res = map_f.fine_tune(tiny_model(), tiny_prompts(), [token_fraction("7")], [20.0], TINY_PPO, run)
  reward = np.array([m["reward/frac7"] for m in res.history])
  kl = np.array([m["kl"] for m in res.history])
  assert res.history[0]["kl"] == 0.0  # the first rollout comes from p0 itself
  assert reward[:5].mean() < 0.04 and reward[-10:].mean() > 0.07, reward
  assert np.all(np.isfinite(kl)) and 0 < kl[-10:].mean() < 10, kl
  assert all(np.isfinite(m["loss"]) and m["tokens"] > 0 for m in res.history)


def test_sequential_stages_follow_the_solver_schedule():
  from map_jax.core.sequential import sequential_solve

  rng = np.random.default_rng(0)
  R = rng.normal(size=(200, 3))
  c = np.array([0.3, 0.2, 0.0])
  stages = map_f.sequential_stages(R, c, rounds=3)
  with jax.enable_x64(True):
    lam = np.asarray(sequential_solve(R, c, rounds=3).lam)
  total = np.zeros(3)
  for s in stages:
    total[s.value] += s.lam_step
    np.testing.assert_allclose(s.lam, total, atol=1e-12)
  np.testing.assert_allclose(total, lam, atol=1e-12)
  assert [s.round for s in stages] == sorted(s.round for s in stages) and stages[0].value == 0


def test_train_sequential_runs_one_value_per_stage_and_resumes(tmp_path):
  model = tiny_model()
  values = [token_fraction("7"), token_fraction("9")]
  stages = [map_f.Stage(0, 0, 5.0, np.array([5.0, 0.0])), map_f.Stage(0, 1, 5.0, np.array([5.0, 5.0]))]
  run = dataclasses.replace(TINY_RUN, num_steps=2)
  res = map_f.fine_tune_sequential(model, tiny_prompts(), values, stages, TINY_PPO, run, str(tmp_path))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["params", "stage_00_frac7", "stage_01_frac9"]
  assert "reward/frac9" in res.history[0] and "reward/frac7" not in res.history[0]
  final = restore_params(str(tmp_path / "params"), TINY)
  jax.tree.map(np.testing.assert_array_equal, res.params, nn.meta.unbox(final))
  again = map_f.fine_tune_sequential(model, tiny_prompts(), values, stages, TINY_PPO, run, str(tmp_path))
  assert again.history == []  # both stages were done: nothing retrained
