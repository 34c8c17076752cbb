"""Tokenizer from the SmolLM2 GGUF: vocabulary, special tokens and chat template agree with the file itself."""

import os

import jinja2
import numpy as np
import pytest

from map_jax.models import loading
from map_jax.models.tokenizer import bucket, chat_prompt, encode, load_tokenizer, pack, pad_left, pad_right

TEXTS = [
  "Hello, world!",
  "  leading spaces and\ttabs\nnewlines\n\n",
  "Ünïcödé café, naïve façade — 日本語のテキスト 🙂🚀",
  "def f(x):\n    return x ** 2  # square\n",
  "Numbers 1234567890 and 3.14159, emails a.b@c.org, URLs https://example.com/x?y=1",
]


@pytest.fixture(scope="module")
def gguf_fields():
  import gguf

  reader = gguf.GGUFReader(loading.builtin_path("smollm2-135m-instruct"))
  return {
    k: reader.fields[k].contents()
    for k in (
      "tokenizer.ggml.tokens",
      "tokenizer.chat_template",
      "tokenizer.ggml.bos_token_id",
      "tokenizer.ggml.eos_token_id",
    )
  }


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_and_vocabulary_match_the_gguf(smollm2, gguf_fields, text):
  tok = smollm2.tokenizer
  ids = encode(tok, [text])[0]
  assert tok.decode(ids) == text
  vocab = gguf_fields["tokenizer.ggml.tokens"]
  assert tok.convert_ids_to_tokens(ids) == [vocab[i] for i in ids]
  assert len(tok) == len(vocab)


def test_special_tokens_and_padding_side(smollm2, gguf_fields):
  tok = smollm2.tokenizer
  assert tok.convert_tokens_to_ids("<|im_end|>") == tok.eos_token_id == gguf_fields["tokenizer.ggml.eos_token_id"]
  assert tok("<|im_start|>user")["input_ids"][0] == gguf_fields["tokenizer.ggml.bos_token_id"]
  assert tok.padding_side == "left"
  assert smollm2.config.eos_token_ids == (tok.eos_token_id,)


def test_chat_template_matches_the_gguf_template_rendered_by_jinja(smollm2, gguf_fields):
  tok = smollm2.tokenizer
  template = jinja2.Environment().from_string(gguf_fields["tokenizer.chat_template"])
  messages = [{"role": "user", "content": "What is MAP alignment?"}]
  want = template.render(messages=messages, add_generation_prompt=True)
  assert chat_prompt(tok, "What is MAP alignment?") == want
  with_system = [{"role": "system", "content": "Be brief."}] + messages
  assert chat_prompt(tok, "What is MAP alignment?", system="Be brief.") == template.render(
    messages=with_system, add_generation_prompt=True
  )
  assert want.endswith("<|im_start|>assistant\n") and "You are a helpful AI assistant" in want


def test_bucketed_padding():
  assert [bucket(n) for n in (1, 16, 17, 25, 33, 49, 65, 100)] == [16, 16, 24, 32, 48, 64, 96, 128]
  tokens, mask = pad_left([[5, 6, 7], [8]], pad_id=0)
  assert tokens.shape == (2, 16)
  np.testing.assert_array_equal(tokens[:, -3:], [[5, 6, 7], [0, 0, 8]])
  np.testing.assert_array_equal(mask.sum(1), [3, 1])
  assert not mask[:, :13].any()
  tokens, mask = pad_right([[5, 6, 7], [8]], pad_id=0, length=4)
  np.testing.assert_array_equal(tokens, [[5, 6, 7, 0], [8, 0, 0, 0]])
  with pytest.raises(ValueError, match="does not fit"):
    pad_left([[1] * 20], 0, length=16)


def test_cached_gguf_tokenizer_equals_the_fresh_conversion(monkeypatch, tmp_path):
  monkeypatch.setenv("MAP_JAX_CACHE", str(tmp_path))
  path = loading.builtin_path("smollm2-135m-instruct")
  fresh = load_tokenizer(os.path.dirname(path), gguf_file=os.path.basename(path))
  assert len(os.listdir(tmp_path / "tokenizers")) == 1
  cached = load_tokenizer(os.path.dirname(path), gguf_file=os.path.basename(path))
  for text in TEXTS + ["<|im_start|>user\nhi<|im_end|>"]:
    assert fresh(text)["input_ids"] == cached(text)["input_ids"]
  assert chat_prompt(fresh, "hi", system="s") == chat_prompt(cached, "hi", system="s")
  assert (fresh.eos_token_id, fresh.pad_token_id, fresh.padding_side) == (
    cached.eos_token_id,
    cached.pad_token_id,
    cached.padding_side,
  )


def test_pack_places_every_sequence_whole_and_numbers_its_segments():
  """Best-fit packing: each sequence intact at its index, segments 1, 2, ... in order within a row and 0 on
  padding, no token lost or duplicated, fewer rows than one per sequence; too long or empty ones named."""
  rng = np.random.RandomState(0)
  seqs = [rng.randint(1, 1000, rng.randint(1, 65)).tolist() for _ in range(300)] + [[7] * 64]
  packed = pack(seqs, 64, pad=0)
  R = len(packed.tokens)
  assert packed.tokens.shape == packed.segments.shape == (R, 64)
  assert R < len(seqs) and (packed.segments > 0).sum() == sum(map(len, seqs))
  assert R <= 1.1 * -(-sum(map(len, seqs)) // 64)  # within 10% of the fewest rows that could hold them
  covered = np.zeros(R * 64, int)
  for q, i in zip(seqs, packed.index):
    row, off = divmod(int(i), 64)
    assert packed.tokens[row, off : off + len(q)].tolist() == q
    assert len(set(packed.segments[row, off : off + len(q)].tolist())) == 1
    covered[i : i + len(q)] += 1
  assert covered.max() == 1 and (covered.reshape(R, 64) > 0).tolist() == (packed.segments > 0).tolist()
  for seg in packed.segments:
    ids = seg[seg > 0]
    assert ids[0] == 1 and set(np.diff(ids)) <= {0, 1}  # 1, 2, ... in order of offset, contiguous runs
  with pytest.raises(ValueError, match="sequence 1 has 9 tokens; packing needs 1 to 8"):
    pack([[1], [2] * 9], 8)
  with pytest.raises(ValueError, match="sequence 0 has 0 tokens"):
    pack([[]], 8)
