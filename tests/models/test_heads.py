"""Decoder reward models (`*ForSequenceClassification`) agree with transformers on each row of a padded batch."""

import jax.numpy as jnp
import numpy as np
import pytest

from map_jax.models import loading
from map_jax.models.heads import ClassifierConfig
from map_jax.models.tokenizer import pad_left, pad_right

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

V = 90
MAKERS = {
  "gpt2_reward": lambda: transformers.GPT2ForSequenceClassification(
    transformers.GPT2Config(
      vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_positions=64, num_labels=1, pad_token_id=0, initializer_range=0.3
    )
  ),
  "llama_3_labels": lambda: transformers.LlamaForSequenceClassification(
    transformers.LlamaConfig(
      vocab_size=V,
      hidden_size=32,
      intermediate_size=48,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      num_labels=3,
      pad_token_id=0,
      initializer_range=0.3,
    )
  ),
  "opt_2_labels": lambda: transformers.OPTForSequenceClassification(
    transformers.OPTConfig(
      vocab_size=V,
      hidden_size=32,
      num_hidden_layers=2,
      num_attention_heads=4,
      ffn_dim=48,
      max_position_embeddings=64,
      num_labels=2,
      pad_token_id=0,
      init_std=0.3,
    )
  ),
}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_decoder_classifier_matches_transformers(name, tmp_path):
  torch.manual_seed(0)
  hf = MAKERS[name]().eval()
  hf.save_pretrained(tmp_path)
  cfg, params, _ = loading.load_model(str(tmp_path), tokenizer=False)
  assert isinstance(cfg, ClassifierConfig) and cfg.num_labels == hf.config.num_labels
  rng = np.random.RandomState(0)
  seqs = [rng.randint(1, V, n).tolist() for n in (14, 5, 9)]
  module = cfg.module()
  left = np.asarray(module.apply({"params": params}, *map(jnp.asarray, pad_left(seqs, 0))))
  right = np.asarray(module.apply({"params": params}, *map(jnp.asarray, pad_right(seqs, 0))))
  for row, s in enumerate(seqs):
    with torch.no_grad():
      ref = hf(torch.tensor([s])).logits[0].numpy()
    assert np.abs(ref).max() > 0.05
    np.testing.assert_allclose(left[row], ref, atol=1e-4 * max(1.0, np.abs(ref).max()))
    np.testing.assert_allclose(right[row], ref, atol=1e-4 * max(1.0, np.abs(ref).max()))
