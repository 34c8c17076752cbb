"""Meshes and shardings: one device, and the PPO update on 8 simulated CPU devices equal to the 1-device one."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from map_jax import parallel
from map_jax.align import ppo
from tests.align.test_ppo import TINY, TINY_PPO, tiny_model

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_one_device_mesh_and_bad_sizes():
  mesh = parallel.make_mesh()
  assert dict(mesh.shape) == {"data": 1, "fsdp": 1}
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)
  with pytest.raises(ValueError, match="does not cover the 1 devices"):
    parallel.make_mesh(data=2, fsdp=1)
  with pytest.raises(ValueError, match="at most one"):
    parallel.make_mesh(data=-1, fsdp=-1)
  parallel.check_batch_size(3, mesh)
  shardings = parallel.param_shardings(tiny_model().params, mesh)
  assert shardings["layers"]["q_proj"]["kernel"].spec == P(None, "fsdp", None, None)


def _rollout_batch():
  """A real rollout of the tiny model made into a PPO batch (numpy), and the initial state's leaves."""
  from map_jax.models import tokenizer as tok_lib
  from tests.align.test_ppo import TINY_RUN, tiny_prompts
  model, module = tiny_model(), TINY.module()
  mesh = parallel.make_mesh()
  state = ppo.compile_init(module, TINY_PPO, mesh)(model.params, jax.random.key(3))
  ref = jax.tree.map(lambda x: x, state.params["policy"])
  ids = [[int(t) for t in p.split()] for p in tiny_prompts()[:TINY_RUN.batch_size]]
  pt, pm = tok_lib.pad_left(ids, 0, length=TINY_RUN.max_prompt_tokens)
  out = ppo.rollout(module, state, pt, pm, jax.random.key(4), TINY_PPO, eos_ids=TINY.eos_token_ids)
  mask = ppo.response_mask(out.lengths, TINY_PPO.max_new_tokens)
  scores = np.linspace(-1, 1, len(ids)).astype(np.float32)
  batch, _ = ppo.compile_make_batch(module, TINY_PPO, mesh)(state.params, ref, pt, pm, out.tokens, mask, scores)
  return state, jax.tree.map(np.asarray, batch)


# Runs with 8 host devices: loads the initial state and batch, updates on a (data=2, fsdp=4) mesh, checks that
# the weights really are split, and saves the result.
_SHARDED = textwrap.dedent("""
    import sys
    import jax, numpy as np
    assert jax.device_count() == 8, jax.devices()
    from map_jax import parallel
    from map_jax.align import ppo
    from tests.align.test_ppo import TINY, TINY_PPO, tiny_model
    module = TINY.module()
    data = np.load(sys.argv[1])
    like = ppo.abstract_state(module, TINY_PPO)
    leaves = [data[f"s{i}"] for i in range(len(jax.tree.leaves(like.replace(key=0))))]
    state = jax.tree.unflatten(jax.tree.structure(like.replace(key=0)), leaves).replace(
        key=jax.random.wrap_key_data(data["key"]))
    batch = ppo.Batch(*[data[f"b{i}"] for i in range(len(ppo.Batch._fields))])
    mesh = parallel.make_mesh(data=2, fsdp=4)
    shardings = ppo.state_shardings(module, TINY_PPO, mesh)
    state = parallel.shard(state, shardings)
    q = state.params["policy"]["layers"]["q_proj"]["kernel"]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None, None), q.sharding
    assert q.addressable_shards[0].data.shape[1] == q.shape[1] // 4
    mu = state.opt_state[1][0].mu["policy"]["layers"]["q_proj"]["kernel"]
    assert mu.sharding == q.sharding, mu.sharding
    new, metrics = ppo.compile_update(module, TINY_PPO, mesh)(state, batch, jax.random.key(5))
    assert new.params["policy"]["layers"]["q_proj"]["kernel"].sharding == q.sharding
    # A dimension the axis does not divide (embed 32 over 3 devices) is replicated, not an error.
    three = parallel.make_mesh(1, 3, devices=jax.devices()[:3])
    assert parallel.param_shardings(tiny_model().params, three)["layers"]["q_proj"]["kernel"].spec == \\
        jax.sharding.PartitionSpec(None, None, None, None)
    np.savez(sys.argv[2], *[np.asarray(x) for x in jax.tree.leaves(new.params)],
             loss=np.asarray(metrics["loss"]))
    print("ok")
""")


def test_sharded_update_on_8_devices_equals_one_device(tmp_path):
  state, batch = _rollout_batch()
  plain = state.replace(key=0)
  np.savez(tmp_path / "in.npz", key=np.asarray(jax.random.key_data(state.key)),
           **{f"s{i}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(plain))},
           **{f"b{i}": x for i, x in enumerate(batch)})
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=str(ROOT))
  proc = subprocess.run([sys.executable, "-c", _SHARDED, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
  assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-3000:]

  before = np.asarray(jax.tree.leaves(plain.params)[0])
  mesh = parallel.make_mesh()
  new, metrics = ppo.compile_update(TINY.module(), TINY_PPO, mesh)(state, ppo.Batch(*batch), jax.random.key(5))
  got = np.load(tmp_path / "out.npz")
  want = [np.asarray(x) for x in jax.tree.leaves(new.params)]
  assert len(want) == len([k for k in got.files if k.startswith("arr_")])
  for i, w in enumerate(want):
    np.testing.assert_allclose(got[f"arr_{i}"], w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["loss"], metrics["loss"], rtol=1e-5)
  # The update moved the weights (so equality is not the trivial one of two untouched states).
  assert not np.allclose(want[0], before)
