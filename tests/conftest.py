"""Test-wide setup: the test process (and the notebook kernels it starts) use one core.

XLA:CPU (jaxlib 0.10.2) intermittently hangs on vmapped while-loop graphs such as the
batched dual solver over a few hundred palettes: every thread asleep, the caller
waiting on its buffers for good. Seen here within minutes with two such processes
running; neither --xla_cpu_multi_thread_eigen=false nor the removed thunk-runtime flag
helped, while a process pinned to one core (a one-thread intra-op pool) never hung in
the same runs and was as fast. The pin must come before JAX starts its CPU client.

The suite runs in two pytest-xdist workers (pytest.ini: -n 2), each pinned to its own core, which keeps
both the one-core pin and the machine's two cores busy. Tests group by file (the reward tests as one group:
they share a trained head in the user cache), so module and session fixtures load once per worker.
"""

import os
import pathlib

if hasattr(os, "sched_setaffinity"):
  # The controller records the cores before pinning itself; workers inherit its environment (and its pin,
  # which they widen again to their own core).
  _cores = [
    int(c)
    for c in os.environ.setdefault("MAP_JAX_TEST_CORES", ",".join(map(str, sorted(os.sched_getaffinity(0))))).split(",")
  ]
  _worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
  os.sched_setaffinity(0, {_cores[int(_worker[2:] or 0) % len(_cores)]})

import pytest  # noqa: E402  (after the pin)

_TESTS = pathlib.Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
  """One xdist group per test file, and one for all of tests/rewards (see the module docstring)."""
  for item in items:
    rel = pathlib.Path(str(item.fspath)).resolve().relative_to(_TESTS)
    item.add_marker(pytest.mark.xdist_group("rewards" if rel.parts[0] == "rewards" else str(rel)))


@pytest.fixture(scope="session")
def tiny_smollm_dir(tmp_path_factory):
  """A random 1-layer Llama over SmolLM2's vocabulary, saved as a Hugging Face directory with SmolLM2's real
  tokenizer (chat template included): the pipeline's code paths at a fraction of the cost."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  from map_jax.models import loading
  from map_jax.models import tokenizer as tok_lib

  d = tmp_path_factory.mktemp("tiny_smollm")
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(
    transformers.LlamaConfig(
      vocab_size=49152,
      hidden_size=32,
      intermediate_size=48,
      num_hidden_layers=1,
      num_attention_heads=4,
      num_key_value_heads=2,
      max_position_embeddings=128,
      tie_word_embeddings=True,
      bos_token_id=1,
      eos_token_id=2,
    )
  ).save_pretrained(d)
  path = loading.builtin_path("smollm2-135m-instruct")
  tok_lib.load_tokenizer(os.path.dirname(path), gguf_file=os.path.basename(path)).save_pretrained(d)
  return str(d)
