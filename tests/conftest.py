"""Test-wide setup: the test process (and the notebook kernels it starts) use one core.

XLA:CPU (jaxlib 0.10.2) intermittently hangs on vmapped while-loop graphs such as the
batched dual solver over a few hundred palettes: every thread asleep, the caller
waiting on its buffers for good. Seen here within minutes with two such processes
running; neither --xla_cpu_multi_thread_eigen=false nor the removed thunk-runtime flag
helped, while a process pinned to one core (a one-thread intra-op pool) never hung in
the same runs and was as fast. The pin must come before JAX starts its CPU client.

The suite runs in two pytest-xdist workers (pytest.ini: -n 2), each pinned to its own core, which keeps
both the one-core pin and the machine's two cores busy. Tests group by file (the reward tests as one group:
they share a trained head in the user cache; the SmolLM2 parity tests as another: they share the GGUF loaded
by map-jax and by transformers, most of a minute each), so module and session fixtures load once per worker.
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

if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  # One persistent XLA compilation cache for the run, shared by the workers, the launchers and notebook kernels
  # the tests start (they inherit the environment): a program compiled once is loaded, not compiled again, in
  # every other process of the run. Removed when the run ends.
  import atexit
  import shutil
  import tempfile

  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="map-jax-xla-cache-")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")  # JAX's default 1 s misses most
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)

# Tests compile with XLA:CPU's LLVM back end at -O0. Compiling, not running, is most of a test here (tiny
# models, many programs): -O0 took the suite from 14 min 57 s to 11 min 22 s. The programs are the same XLA
# graphs; only LLVM's code generation differs, which moves results by float rounding alone (checked: a tiny
# Llama's logits, its gradients and λ by at most 2e-7 of their largest entry, between the two levels).
# Every process of a test compiles at the same level, so bitwise checks between runs still hold. Users and
# benchmarks compile at the default level. Subprocesses the tests start inherit the flag
# (`tests.test_parallel.xla_flags` adds their own flags to it).
_O0 = "--xla_backend_optimization_level=0"
if _O0 not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_O0}".strip()

import pytest  # noqa: E402  (after the pin)

_TESTS = pathlib.Path(__file__).resolve().parent


# Files whose tests share expensive session fixtures run in one group (see the module docstring).
_SHARED = {"models/test_llama.py": "smollm2-parity", "models/test_generate.py": "smollm2-parity"}


# The longest groups (a minute or more on one core), longest first. The workers take groups in collection
# order, so these go first and the short ones fill in around them, instead of a long group starting last.
_LONGEST_FIRST = (
  "test_compare.py",
  "notebooks/test_notebooks.py",
  "test_faults.py",
  "test_pipeline.py",
  "smollm2-parity",
  "align/test_lora.py",
  "test_benchmarks.py",
  "test_readme.py",
  "experiments/test_sensitivity_study.py",
)


def pytest_collection_modifyitems(config, items):
  """One xdist group per test file, one for all of tests/rewards, one per `_SHARED` name; longest first."""
  groups = {}
  for item in items:
    rel = pathlib.Path(str(item.fspath)).resolve().relative_to(_TESTS)
    group = "rewards" if rel.parts[0] == "rewards" else _SHARED.get(rel.as_posix(), rel.as_posix())
    item.add_marker(pytest.mark.xdist_group(group))
    groups[item] = group
  rank = {g: i for i, g in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(groups[item], len(rank)))  # stable: file order otherwise kept


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
