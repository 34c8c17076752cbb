"""BERT-family parity with transformers: real all-MiniLM-L6-v2 sentence embeddings, tiny classifiers."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from map_jax.models import loading
from map_jax.models.tokenizer import pad_right

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TEXTS = [
  "A man is eating food.",
  "A man is eating a piece of bread.",
  "The girl is carrying a baby.",
  "Ünïcödé, numbers 3.14159 and a much longer sentence that goes on for a while, with commas; and more!",
]


def test_minilm_embeddings_match_transformers_bert_with_mean_pooling():
  enc = loading.load_sentence_encoder("all-minilm-l6-v2")
  got = enc(TEXTS)
  d = os.path.dirname(loading.builtin_path("all-minilm-l6-v2"))
  tok = transformers.AutoTokenizer.from_pretrained(d)
  model = transformers.BertModel.from_pretrained(d).eval()
  batch = tok(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
  with torch.no_grad():
    h = model(**batch).last_hidden_state
  m = batch["attention_mask"][..., None].float()
  ref = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1).numpy()
  assert got.shape == (4, 384)
  np.testing.assert_allclose(got, ref, atol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(got, axis=-1), 1.0, atol=1e-5)
  sim = got @ got.T
  assert sim[0, 1] > 0.5 > sim[0, 2]  # a real sentence model: paraphrases close, unrelated far


def test_builtin_minilm_loads_as_a_bert_model():
  cfg, params, tok = loading.load_model("all-minilm-l6-v2")
  assert (cfg.flavor, cfg.num_layers, cfg.hidden_size, cfg.num_labels) == ("bert", 6, 384, 0)
  ids = tok(["hello world"])["input_ids"]
  out = cfg.module().apply({"params": params}, jnp.asarray(ids))
  assert out.hidden.shape == (1, len(ids[0]), 384) and out.pooled.shape == (1, 384)


def _bert_cls():
  return transformers.BertForSequenceClassification(
    transformers.BertConfig(
      vocab_size=120,
      hidden_size=48,
      num_hidden_layers=2,
      num_attention_heads=4,
      intermediate_size=64,
      max_position_embeddings=64,
      num_labels=3,
      initializer_range=0.3,
    )
  )


def _distilbert_cls():
  return transformers.DistilBertForSequenceClassification(
    transformers.DistilBertConfig(
      vocab_size=120,
      dim=48,
      n_layers=2,
      n_heads=4,
      hidden_dim=64,
      max_position_embeddings=64,
      num_labels=2,
      initializer_range=0.3,
    )
  )


@pytest.mark.parametrize("make", [_bert_cls, _distilbert_cls], ids=["bert", "distilbert"])
def test_tiny_sequence_classifiers_match_transformers(make, tmp_path):
  torch.manual_seed(0)
  hf = make().eval()
  hf.save_pretrained(tmp_path)
  cfg, params, _ = loading.load_model(str(tmp_path), tokenizer=False)
  assert cfg.num_labels == hf.config.num_labels
  rng = np.random.RandomState(0)
  seqs = [rng.randint(1, 120, n).tolist() for n in (17, 6, 11)]
  tokens, mask = pad_right(seqs, 0)
  out = cfg.module().apply({"params": params}, jnp.asarray(tokens), jnp.asarray(mask))
  with torch.no_grad():
    ref = hf(
      input_ids=torch.tensor(tokens, dtype=torch.long),
      attention_mask=torch.tensor(mask, dtype=torch.long),
      output_hidden_states=True,
    )
  np.testing.assert_allclose(np.asarray(out.logits), ref.logits.numpy(), atol=1e-4)
  h = ref.hidden_states[-1].numpy()
  np.testing.assert_allclose(np.asarray(out.hidden)[mask], h[mask], atol=1e-4)
