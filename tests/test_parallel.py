"""Meshes and shardings: one device, and the PPO update on 8 simulated CPU devices equal to the 1-device one."""

import dataclasses
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from map_jax import parallel
from map_jax.align import ppo
from tests.align.test_ppo import TINY, TINY_PPO, tiny_model

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_one_device_mesh_and_bad_sizes():
  mesh = parallel.make_mesh()
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1, "tensor": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError, match="does not cover the 1 devices"):
    parallel.make_mesh(data=2, fsdp=1)
  with pytest.raises(ValueError, match="at most one"):
    parallel.make_mesh(data=-1, fsdp=-1)
  with pytest.raises(ValueError, match="data=1 × fsdp=1 × tensor=2 does not cover"):
    parallel.make_mesh(fsdp=1, tensor=2)
  parallel.check_batch_size(3, mesh)
  shardings = parallel.param_shardings(tiny_model().params, mesh)
  assert shardings["layers"]["q_proj"]["kernel"].spec == P(None, "fsdp", "tensor", None)


def _batch(rows=16, prompt=4, new=8):
  """A PPO batch (numpy) of the tiny model's shapes: ragged prompts and responses, log-probs near uniform
  over its 64 tokens (so ratios sit around the clip range), random advantages and returns."""
  rng = np.random.default_rng(0)
  prompt_mask = np.arange(prompt)[None] >= rng.integers(0, prompt, rows)[:, None]
  mask = np.arange(new)[None] < rng.integers(1, new + 1, rows)[:, None]
  f = lambda x: np.where(mask, x, 0).astype(np.float32)  # noqa: E731
  return ppo.Batch(
    rng.integers(3, 64, (rows, prompt)).astype(np.int32),
    prompt_mask,
    rng.integers(3, 64, (rows, new)).astype(np.int32),
    mask,
    f(rng.normal(-4.16, 0.1, mask.shape)),
    f(rng.normal(size=mask.shape)),
    f(rng.normal(size=mask.shape)),
    f(rng.normal(size=mask.shape)),
  )


# Adam's step m / (sqrt(v) + eps) is ~sign(g) for |g| >> eps: with the default eps = 1e-8, a gradient entry
# that is ~0 flips sign under the rounding of a sharded sum, and its step moves by up to 2 lr. With eps = 1e-4
# (about a typical gradient entry here) the step is a smooth function of the gradient, so the two meshes must
# agree to float32 rounding everywhere, and the weights still move by a median ~5e-3 over the 4 steps.
SHARDED_PPO = dataclasses.replace(TINY_PPO, adam_eps=1e-4)


# The tiny Llama with two layers (a scan, or an unrolled loop, over more than one layer) for the sampling tests.
def xla_flags(devices: int) -> str:
  """XLA_FLAGS for a subprocess with `devices` simulated CPU devices, keeping the test run's own flags."""
  return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()


TWO_LAYERS = dataclasses.replace(TINY, num_layers=2)


# Runs with 8 host devices: loads the initial state and batch, updates on a (data=2, fsdp=4) mesh, checks that
# the weights really are split, and saves the result.
_SHARDED = textwrap.dedent("""
    import sys
    import jax, numpy as np
    assert jax.device_count() == 8, jax.devices()
    from map_jax import parallel
    from map_jax.align import ppo
    from map_jax.models.loading import abstract_params
    from tests.align.test_ppo import TINY
    from tests.test_parallel import SHARDED_PPO
    module = TINY.module()
    data = np.load(sys.argv[1])
    like = ppo.abstract_state(module, SHARDED_PPO)
    leaves = [data[f"s{i}"] for i in range(len(jax.tree.leaves(like.replace(key=0))))]
    state = jax.tree.unflatten(jax.tree.structure(like.replace(key=0)), leaves).replace(
        key=jax.random.wrap_key_data(data["key"]))
    batch = ppo.Batch(**{k[2:]: data[k] for k in data.files if k.startswith("b_")})
    mesh = parallel.make_mesh(data=2, fsdp=4)
    shardings = ppo.state_shardings(module, SHARDED_PPO, mesh)
    state = parallel.shard(state, shardings)
    q = state.params["policy"]["layers"]["q_proj"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None), q.sharding
    assert q.addressable_shards[0].data.shape[1] == q.shape[1] // 4
    mu = state.opt_state[1][0].mu["policy"]["layers"]["q_proj"]["kernel"]
    assert mu.sharding == q.sharding, mu.sharding
    new, metrics = ppo.compile_update(module, SHARDED_PPO, mesh)(state, batch, jax.random.key(5))
    assert new.params["policy"]["layers"]["q_proj"]["kernel"].sharding == q.sharding
    # A dimension the axis does not divide (embed 32 over 3 devices) is replicated, not an error.
    three = parallel.make_mesh(1, 3, devices=jax.devices()[:3])
    assert parallel.param_shardings(abstract_params(TINY), three)["layers"]["q_proj"]["kernel"].spec == \\
        jax.sharding.PartitionSpec(None, None, "tensor", None)
    np.savez(sys.argv[2], *[np.asarray(x) for x in jax.tree.leaves(new.params)],
             loss=np.asarray(metrics["loss"]))
    print("ok")
""")


def test_sharded_update_on_8_devices_equals_one_device(tmp_path):
  mesh = parallel.make_mesh()
  state = ppo.compile_init(TINY.module(), SHARDED_PPO, mesh)(tiny_model().params, jax.random.key(3))
  batch = _batch()
  plain = state.replace(key=0)
  np.savez(
    tmp_path / "in.npz",
    key=np.asarray(jax.random.key_data(state.key)),
    **{f"s{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(plain))},
    **{f"b_{k}": x for k, x in batch._asdict().items() if x is not None},
  )
  env = dict(os.environ, XLA_FLAGS=xla_flags(8), PYTHONPATH=str(ROOT))
  proc = subprocess.run(
    [sys.executable, "-c", _SHARDED, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
    capture_output=True,
    text=True,
    timeout=300,
    cwd=ROOT,
    env=env,
  )
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]

  before = [np.asarray(x) for x in jax.tree.leaves(plain.params)]  # the update donates the state
  batch = jax.device_put(batch, parallel.batch_sharding(mesh))  # as the trainer passes it
  new, metrics = ppo.compile_update(TINY.module(), SHARDED_PPO, mesh)(state, batch, jax.random.key(5))
  got = np.load(tmp_path / "out.npz")
  want = [np.asarray(x) for x in jax.tree.leaves(new.params)]
  assert len(want) == len([k for k in got.files if k.startswith("arr_")])
  for i, w in enumerate(want):
    np.testing.assert_allclose(got[f"arr_{i}"], w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["loss"], metrics["loss"], rtol=1e-5, atol=1e-6)
  # The update moved the weights by more than one step of lr (so equality is not the trivial one of two
  # untouched states, and a wrong update would be off by far more than the tolerance).
  moved = np.concatenate([np.abs(w - b).ravel() for w, b in zip(want, before)])
  assert np.median(moved) > SHARDED_PPO.learning_rate, np.median(moved)


# Runs with 8 host devices: sampling and encoder scoring over several meshes against one device.
_DECODING = textwrap.dedent("""
    import tempfile
    import jax, jax.numpy as jnp, numpy as np
    assert jax.device_count() == 8, jax.devices()
    from map_jax import parallel
    from map_jax.rewards import get_reward
    from map_jax.sampling import generate
    from tests.rewards.conftest import WORDS, word_tokenizer
    from tests.test_parallel import TWO_LAYERS
    module = TWO_LAYERS.module()
    params = jax.jit(module.init)(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]
    tok = word_tokenizer(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    prompts = [" ".join(rng.choice(WORDS, rng.integers(1, 9))) for _ in range(11)]  # 11: not a multiple of 8
    kw = dict(key=jax.random.key(1), max_new_tokens=12, top_k=20, num_return_sequences=3)
    one = generate(module, params, tok, prompts, **kw)
    rows = [p for p in prompts for _ in range(3)]
    # (data=8) alone is the pipeline's mesh test (tests/test_pipeline.py), against one device too.
    for shape in [dict(data=2, fsdp=4), dict(fsdp=8), dict(data=2, fsdp=2, tensor=2)]:
        mesh = parallel.make_mesh(**{"fsdp": 1, **shape})
        placed = parallel.place_model(module, params, mesh)
        q = placed["layers"]["q_proj"]["kernel"]  # [layers, embed, heads, head_dim]: embed / fsdp, heads / tensor
        assert q.addressable_shards[0].data.shape == (2, 32 // mesh.shape["fsdp"], 4 // mesh.shape["tensor"], 8)
        out = generate(module, placed, tok, prompts, mesh=mesh, **kw)
        assert (out.tokens == one.tokens).all(), shape
        np.testing.assert_allclose(out.logprobs, one.logprobs, atol=2e-5)
        assert out.text == one.text
    mesh = parallel.make_mesh(data=2, fsdp=4)
    want = get_reward("coherence", batch_size=8)(rows, one.text)  # the real MiniLM, batches of 8 -> 8 devices
    np.testing.assert_allclose(get_reward("coherence", batch_size=8, mesh=mesh)(rows, one.text), want, atol=1e-5)
    print("ok")
""")


def test_sampling_and_scoring_over_meshes_equal_one_device():
  """On 8 simulated devices: the same tokens (same key) with data x fsdp, fsdp and data x fsdp x tensor meshes
  as on one device, the weights really split; coherence (the real MiniLM, an encoder) over a mesh equals one
  device's to float32 rounding. A decoder-backed value (perplexity) over a mesh is checked by the pipeline's
  mesh test in tests/test_pipeline.py."""
  env = dict(os.environ, XLA_FLAGS=xla_flags(8), PYTHONPATH=str(ROOT))
  proc = subprocess.run(
    [sys.executable, "-c", _DECODING], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
  )
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]
