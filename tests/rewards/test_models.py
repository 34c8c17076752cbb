"""Model-backed values: MiniLM coherence against transformers' BertModel, perplexity against PyTorch and on SmolLM2."""

import os

import numpy as np
import pytest

from map_jax.models import loading
from map_jax.rewards import get_reward

from .conftest import word_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def coherence():
  return get_reward("coherence", batch_size=4)


def test_coherence_on_topic_beats_unrelated(coherence):
  prompts = ["What is a good recipe for chocolate chip cookies?", "How do I change a flat tire on my car?"] * 2
  responses = [
    "Cream butter and sugar, add flour, eggs and chocolate chips, then bake at 180C for 12 minutes.",
    "Loosen the lug nuts, jack up the car, swap the wheel for the spare and tighten the nuts.",
    "The stock market closed higher today after strong earnings reports.",
    "My favourite colour is blue and I like to swim in the summer.",
  ]
  r = coherence(prompts, responses)
  assert r[0] > r[2] + 0.2 and r[1] > r[3] + 0.2
  assert coherence(["Hello?"], [""])[0] == 0.0


def test_coherence_matches_transformers_mean_pooling(coherence):
  d = os.path.dirname(loading.builtin_path("all-minilm-l6-v2"))
  tok = transformers.AutoTokenizer.from_pretrained(d)
  model = transformers.BertModel.from_pretrained(d).eval()
  long = "word " * 400  # longer than MiniLM's 256-token budget: truncated, as sentence-transformers does
  prompts = ["A man is eating food.", "Tell me about cats.", "What is 2 + 2?", "Summarise this.", "Hi"]
  responses = ["A man is eating a piece of bread.", "Dogs bark loudly.", "Four.", long, "Hello there!"]

  def emb(texts):
    b = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
      h = model(**b).last_hidden_state
    m = b["attention_mask"][..., None].float()
    return torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()

  ref = np.sum(emb(prompts) * emb(responses), -1)
  with pytest.warns(UserWarning, match="256 tokens were truncated"):
    got = coherence(prompts, responses)
  np.testing.assert_allclose(got, ref, atol=2e-5)


def test_perplexity_matches_pytorch_token_nll(tmp_path):
  torch.manual_seed(0)
  hf = transformers.GPT2LMHeadModel(
    transformers.GPT2Config(
      vocab_size=40,
      n_embd=32,
      n_layer=2,
      n_head=4,
      n_positions=32,
      bos_token_id=2,
      eos_token_id=2,
      pad_token_id=0,
      initializer_range=0.3,
    )
  ).eval()
  hf.save_pretrained(tmp_path)
  tok = word_tokenizer(tmp_path)
  value = get_reward("perplexity", model=str(tmp_path), batch_size=2, min_bucket=8)
  long = " ".join(["the cat sat on the mat"] * 4)  # 24 tokens
  # Rows of mixed lengths (several packed length buckets, the last batch padded with copies) and rows over
  # the 32-position context: the prompt loses its oldest tokens first, then the response its last ones.
  prompts = ["the cat sat", "how are you ?", "", "we like it", long, "we like it", long + " " + long]
  responses = [" on the mat", " very good , and you ?", " the dog ran", "", " " + long, " " + long, " good"]
  with pytest.warns(UserWarning, match=r"2 text\(s\) longer than the model.s context of 32"):
    got = value(prompts, responses)
  for p, r, g in zip(prompts, responses, got):
    p_ids = tok(p)["input_ids"] or [2]  # empty prompt: EOS stands in as the context
    r_ids = tok(r, add_special_tokens=False)["input_ids"] or [2]  # empty response: log p(EOS | x)
    if len(p_ids) + len(r_ids) > 32:
      keep = max(1, 32 - len(r_ids))
      p_ids, r_ids = p_ids[-keep:], r_ids[: 32 - keep]
    with torch.no_grad():
      logp = torch.log_softmax(hf(torch.tensor([p_ids + r_ids])).logits[0], -1).numpy()
    steps = range(len(p_ids) - 1, len(p_ids) + len(r_ids) - 1)
    ref = np.mean([logp[t, (p_ids + r_ids)[t + 1]] for t in steps])
    np.testing.assert_allclose(g, ref, atol=1e-4)


def test_perplexity_prefers_fluent_text_on_smollm2():
  value = get_reward("perplexity", batch_size=4)
  prompts = ["Write a sentence about the weather.", "What do cats like to eat?"] * 2
  fluent = [
    "It is sunny and warm today, with a light breeze from the west.",
    "Cats usually like to eat fish, chicken and other kinds of meat.",
  ]
  rng = np.random.default_rng(0)
  salad = [" ".join(rng.permutation(s.split())) for s in fluent]
  r = value(prompts, fluent + salad)
  assert np.all(r < 0)
  edge = value(["", "Say nothing."], ["Hello.", ""])  # empty prompt / empty response: finite, defined
  assert np.all(np.isfinite(edge)) and np.all(edge < 0)
  assert r[0] > r[2] + 1.0 and r[1] > r[3] + 1.0
