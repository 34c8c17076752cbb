"""Shared fixtures for reward tests: full-precision matmuls, the real MiniLM, the trained humor head."""

import os

import jax
import pytest

from tests.core.conftest import REFERENCE  # noqa: F401  (one definition of the data path)


@pytest.fixture(autouse=True)
def highest_precision():
  """Parity against PyTorch float32 needs full-precision matmuls."""
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture(scope="session")
def humor_head():
  """The witty-rating head: the full one from the cache when present, else trained now on 2,000
  conversations (about 40 s on 2 cores) so a cold run of tests/rewards stays near its time budget."""
  from map_jax.rewards import heads

  full = heads.cache_dir("heads", "chitchat-witty-all-minilm-l6-v2-64-nall-s0", "meta.json")
  return heads.chitchat_head("witty", limit=None if os.path.isfile(full) else 2000)


@pytest.fixture(scope="session")
def reference_rows():
  import json

  return json.loads(REFERENCE.read_text())


WORDS = (
  "the a cat dog sat on mat and ran fast slow today is good bad very i you we like hate it was "
  "human assistant : how are what why , . ! ?"
).split()


def word_tokenizer(directory, bos: bool = False):
  """A small whole-word tokenizer (tokenizers WordLevel) saved into `directory`, for tiny checkpoints.

  Ids: 0 <pad>, 1 <unk>, 2 <eos>, then WORDS. transformers loads it with AutoTokenizer like any other.
  """
  from tokenizers import Tokenizer, models, pre_tokenizers, processors
  from transformers import PreTrainedTokenizerFast

  vocab = {"<pad>": 0, "<unk>": 1, "<eos>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
  tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
  if bos:
    tk.post_processor = processors.TemplateProcessing(single="<eos> $A", special_tokens=[("<eos>", 2)])
  fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
  fast.save_pretrained(directory)
  return fast
