"""DPO: the loss and its gradient against float64 NumPy; an update on a tiny model raises the chosen log-ratio;
preference pairs stay within a prompt and honour the gap; soups interpolate exactly."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from map_jax.align import dpo
from map_jax.align.soup import soup
from map_jax.align.trainer import TrainState
from map_jax.sampling import token_logprobs

from .test_ppo import tiny_model


def _batch(rng, B=6, T=3, C=4):
  def tokens(shape):
    return jnp.asarray(rng.integers(3, 64, shape), jnp.int32)

  prompt_mask = np.ones((B, T), bool)
  prompt_mask[0, 0] = False  # left padding
  chosen_mask, rejected_mask = np.ones((B, C), bool), np.ones((B, C), bool)
  chosen_mask[1, 2:] = False  # right padding
  rejected_mask[2, 1:] = False
  return dpo.PreferenceBatch(
    tokens((B, T)),
    jnp.asarray(prompt_mask),
    tokens((B, C)),
    jnp.asarray(chosen_mask),
    tokens((B, C)),
    jnp.asarray(rejected_mask),
  )


def _np_loss_and_dlogps(pc, pr, rc, rr, beta):
  h = beta * ((pc - rc) - (pr - rr))
  loss = np.mean(np.log1p(np.exp(-h)))
  s = 1.0 / (1.0 + np.exp(h))  # σ(−h)
  return loss, -beta * s / len(h), beta * s / len(h)  # dL/d log π(y⁺), dL/d log π(y⁻)


def test_loss_and_gradient_match_float64_numpy():
  with jax.enable_x64(True):
    model = tiny_model()
    module = dataclasses.replace(model.config, dtype="float64", param_dtype="float64").module()
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), model.params)
    ref = jax.tree.map(lambda x: x + 0.05 * jnp.sin(jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)), params)
    batch = _batch(np.random.default_rng(0))
    beta = 0.3
    ref_logps = dpo.sequence_logps(module, ref, batch)
    (loss, metrics), grads = jax.value_and_grad(dpo.loss_fn, has_aux=True)(params, module, batch, ref_logps, beta)
    pc, pr = (np.asarray(x) for x in dpo.sequence_logps(module, params, batch))
    rc, rr = (np.asarray(x) for x in ref_logps)
    # The log-probs themselves, row by row, from the scorer on one sequence at a time.
    for i in range(3):
      one = token_logprobs(
        module,
        params,
        batch.prompt_tokens[i : i + 1],
        batch.prompt_mask[i : i + 1],
        batch.chosen_tokens[i : i + 1],
        batch.chosen_mask[i : i + 1],
      )[0]
      np.testing.assert_allclose(pc[i], float(one[0]), rtol=1e-12)
    np_loss, d_chosen, d_rejected = _np_loss_and_dlogps(pc, pr, rc, rr, beta)
    np.testing.assert_allclose(float(loss), np_loss, rtol=1e-12)
    h = beta * ((pc - rc) - (pr - rr))
    np.testing.assert_allclose(float(metrics.accuracy), np.mean(h > 0))
    np.testing.assert_allclose(float(metrics.margin), np.mean(h) / beta, rtol=1e-12)
    # The gradient is the chain rule through each sequence's log-prob, with NumPy's dL/d log π.
    jac = jax.jacobian(lambda p: jnp.concatenate(dpo.sequence_logps(module, p, batch)))(params)
    weights = jnp.asarray(np.r_[d_chosen, d_rejected])
    expected = jax.tree.map(lambda j: jnp.tensordot(weights, j, axes=1), jac)
    # The model's logits are float32 by design (models/llama.py), so the two routes to the gradient agree to
    # float32 rounding of the log-softmax, not to float64's.
    scale = max(float(jnp.abs(e).max()) for e in jax.tree.leaves(expected))
    for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
      np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-4, atol=1e-6 * scale)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 1e-4  # not trivially zero


def test_updates_on_a_synthetic_preference_raise_the_chosen_log_ratio():
  model = tiny_model()
  module = model.config.module()
  batch = _batch(np.random.default_rng(1), B=8)
  optimizer = optax.adam(1e-2)
  step = jax.jit(functools.partial(dpo.update, module=module, optimizer=optimizer, beta=0.5))
  state = TrainState(
    step=jnp.zeros((), jnp.int32), params=model.params, opt_state=optimizer.init(model.params), key=jax.random.key(0)
  )
  before = dpo.loss_fn(model.params, module, batch, dpo.sequence_logps(module, model.params, batch), 0.5)[1]
  for _ in range(10):
    state, metrics = step(state, model.params, batch)
  c0, r0 = dpo.sequence_logps(module, model.params, batch)
  c1, r1 = dpo.sequence_logps(module, state.params, batch)
  assert float(jnp.mean(c1 - c0)) > 0.1 and float(jnp.mean(r1 - r0)) < -0.1
  assert float(metrics.loss) < float(before.loss) and float(metrics.accuracy) == 1.0 and int(state.step) == 10


def _pairs(n=16):
  """Synthetic preference: responses rich in token 7 are chosen over responses without it."""
  rng = np.random.default_rng(3)
  out = []
  for _ in range(n):
    prompt = " ".join(map(str, rng.integers(3, 64, 3)))
    chosen = " ".join(["7"] * 3 + list(map(str, rng.integers(8, 64, 2))))
    rejected = " ".join(map(str, rng.integers(8, 64, 5)))
    out.append((prompt, chosen, rejected))
  return out


def test_dpo_runs_on_the_shared_trainer_and_resumes_bitwise(tmp_path):
  from map_jax.align import trainer

  model, pairs = tiny_model(), _pairs()
  cfg = dpo.DPOConfig(beta=0.5, learning_rate=1e-2, max_response_tokens=6)
  run = trainer.RunConfig(
    num_steps=4, batch_size=4, max_prompt_tokens=4, chat=False, checkpoint_every=1, tensorboard=False
  )
  straight = trainer.train(dpo.DPOMethod(model, pairs, cfg, run), run, str(tmp_path / "straight"))

  def crash(step, metrics):
    if step == 2:
      raise KeyboardInterrupt("killed")

  with pytest.raises(KeyboardInterrupt):
    trainer.train(dpo.DPOMethod(model, pairs, cfg, run), run, str(tmp_path / "killed"), on_step=crash)
  resumed = trainer.train(dpo.DPOMethod(model, pairs, cfg, run), run, str(tmp_path / "killed"))
  for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert (tmp_path / "killed" / "metrics.jsonl").read_text() == (tmp_path / "straight" / "metrics.jsonl").read_text()
  assert straight.history[-1]["margin"] > straight.history[0]["margin"] and straight.history[-1]["accuracy"] == 1.0
  other = dpo.DPOConfig(beta=0.1, learning_rate=1e-2, max_response_tokens=6)
  with pytest.raises(Exception, match="dpo.beta"):
    trainer.train(dpo.DPOMethod(model, pairs, other, run), run, str(tmp_path / "killed"))


def test_pairs_stay_within_a_prompt_and_honour_the_gap():
  rng = np.random.default_rng(2)
  prompt = np.repeat(np.arange(20), 4)
  rng.shuffle(prompt)
  reward = np.round(rng.normal(size=80), 1)  # ties happen
  pairs = dpo.preference_pairs(prompt, reward, min_gap=0.3)
  assert len(pairs.chosen) > 20
  np.testing.assert_array_equal(prompt[pairs.chosen], prompt[pairs.rejected])
  assert np.all(pairs.gap > 0.3) and np.all(reward[pairs.chosen] - reward[pairs.rejected] == pairs.gap)
  # Every qualifying pair is there, once.
  expected = sum(
    abs(reward[i] - reward[j]) > 0.3 for i in range(80) for j in range(i + 1, 80) if prompt[i] == prompt[j]
  )
  assert len(pairs.chosen) == expected
  assert len({tuple(sorted(p)) for p in zip(pairs.chosen, pairs.rejected)}) == expected
  assert len(dpo.preference_pairs(prompt, reward).chosen) >= expected  # gap 0: ties only are left out
  with pytest.raises(ValueError, match="non-finite"):
    dpo.preference_pairs(prompt, np.r_[reward[:-1], np.nan])
  size = len(pairs.chosen)
  src, idx = dpo.mix_pairs(size, 10, 0.25, 20, jax.random.key(0))
  assert (src == 1).sum() == 5 and (src == 0).sum() == 15 and len(set(idx[src == 0])) == 15
  assert np.all(idx[src == 1] < 10) and np.all(idx[src == 0] < size) and len(set(idx[src == 1])) == 5
  with pytest.raises(ValueError, match="the sets hold 30 and 10"):
    dpo.mix_pairs(30, 10, 0.75, 20, jax.random.key(0))


def test_soup_endpoints_and_a_soup_of_one_model():
  a = tiny_model().params
  b = jax.tree.map(lambda x: x + 1.0, a)
  for alpha, want in ((0.0, a), (1.0, b)):
    for x, y in zip(jax.tree.leaves(soup(a, b, alpha)), jax.tree.leaves(want)):
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  for x, y in zip(jax.tree.leaves(soup(a, a, 0.37)), jax.tree.leaves(a)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6)
  mid = soup(a, b, 0.25)
  for x, y in zip(jax.tree.leaves(mid), jax.tree.leaves(a)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y) + 0.25, rtol=1e-6, atol=1e-6)
