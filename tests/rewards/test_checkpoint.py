"""Checkpoint-backed values on tiny random GPT-2 / BERT / DistilBERT classifiers agree with transformers (PyTorch)."""

import os
import shutil

import numpy as np
import pytest

from map_jax.models import loading
from map_jax.rewards import RewardError, get_reward

from .conftest import word_tokenizer

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPTS = ["how are you ?", "what is the cat like ?", "why", "the dog"]
RESPONSES = [" i like the cat", " the cat sat on the mat and ran very fast today", "", " bad dog"]


def _save(model, directory, tokenizer):
  model.save_pretrained(directory)
  tokenizer(directory)
  return str(directory)


def _minilm_tokenizer(directory):
  src = os.path.dirname(loading.builtin_path("all-minilm-l6-v2"))
  for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
    if os.path.isfile(os.path.join(src, f)):
      shutil.copy(os.path.join(src, f), directory)


@pytest.fixture(scope="module")
def gpt2_reward_model(tmp_path_factory):
  torch.manual_seed(0)
  hf = transformers.GPT2ForSequenceClassification(
    transformers.GPT2Config(
      vocab_size=48,
      n_embd=32,
      n_layer=2,
      n_head=4,
      n_positions=16,
      num_labels=1,
      pad_token_id=0,
      bos_token_id=2,
      eos_token_id=2,
      initializer_range=0.3,
    )
  ).eval()
  return hf, _save(hf, tmp_path_factory.mktemp("gpt2_rm"), word_tokenizer)


def _torch_logits(hf, ids):
  with torch.no_grad():
    return hf(torch.tensor([ids])).logits[0].numpy().astype(np.float64)


def test_gpt2_reward_model_matches_transformers_on_the_hh_template(gpt2_reward_model):
  hf, path = gpt2_reward_model
  value = get_reward(f"gpt2-harmless=reward_model:{path}", batch_size=3)
  assert value.name == "gpt2-harmless"
  with pytest.warns(UserWarning, match="truncated") as record:
    got = value(PROMPTS, RESPONSES)
    value(PROMPTS, RESPONSES)  # the same long row again: no second warning
  assert sum("truncated" in str(w.message) for w in record) == 1
  tok = transformers.AutoTokenizer.from_pretrained(path)
  for p, r, g in zip(PROMPTS, RESPONSES, got):
    ids = tok(f"\n\nHuman: {p} \n\nAssistant:{r}")["input_ids"][-16:]  # decoders keep the end
    ref = _torch_logits(hf, ids)[0]
    assert abs(ref) > 1e-3
    np.testing.assert_allclose(g, ref, atol=1e-4 * max(1, abs(ref)))
  assert value.notice.count == 2  # one long row, scored twice


@pytest.mark.parametrize("flavor", ["bert", "distilbert"])
def test_encoder_classifier_logprob_prob_logit_match_transformers(flavor, tmp_path):
  torch.manual_seed(0)
  labels = {0: "serious", 1: "humor"}
  if flavor == "bert":
    cfg = transformers.BertConfig(
      vocab_size=30522,
      hidden_size=32,
      num_hidden_layers=2,
      num_attention_heads=4,
      intermediate_size=48,
      max_position_embeddings=32,
      id2label=labels,
      label2id={v: k for k, v in labels.items()},
      initializer_range=0.3,
    )
    hf = transformers.BertForSequenceClassification(cfg).eval()
  else:
    cfg = transformers.DistilBertConfig(
      vocab_size=30522,
      dim=32,
      n_layers=2,
      n_heads=4,
      hidden_dim=48,
      max_position_embeddings=32,
      id2label=labels,
      label2id={v: k for k, v in labels.items()},
      initializer_range=0.3,
    )
    hf = transformers.DistilBertForSequenceClassification(cfg).eval()
  path = _save(hf, tmp_path, _minilm_tokenizer)
  long = " ".join(["a very long sentence"] * 20)
  texts = ["That joke was hilarious!", "The report is due on Monday.", "", long]
  values = {out: get_reward(f"classifier:{path}:humor:{out}") for out in ("logprob", "prob", "logit")}
  assert get_reward(f"classifier:{path}:1").label_index == 1
  with pytest.warns(UserWarning, match="truncated"):
    got = {out: v(["prompt"] * 4, texts) for out, v in values.items()}
  tok = transformers.AutoTokenizer.from_pretrained(path)
  for i, t in enumerate(texts):
    ids = tok(t, truncation=True, max_length=32)["input_ids"]  # transformers' truncation: keep the start
    logits = _torch_logits(hf, ids)
    logp = logits - np.logaddexp.reduce(logits)
    np.testing.assert_allclose(got["logit"][i], logits[1], atol=1e-4)
    np.testing.assert_allclose(got["logprob"][i], logp[1], atol=1e-4)
    np.testing.assert_allclose(got["prob"][i], np.exp(logp[1]), atol=1e-5)


def test_classifier_spec_errors(gpt2_reward_model, tmp_path):
  _, path = gpt2_reward_model
  with pytest.raises(RewardError, match=r"unknown label 'funny'; labels are \['LABEL_0'\]"):
    get_reward(f"classifier:{path}:funny")
  with pytest.raises(RewardError, match="output 'odds' is not one of"):
    get_reward(f"classifier:{path}:0", output="odds")
  with pytest.raises(Exception, match="no such file|config.json"):
    get_reward(f"classifier:{tmp_path / 'missing'}:0")
