"""Flax language models and encoders, and loading of real checkpoints into them."""

from map_jax.models.bert import Bert, BertConfig, EncoderOutput, SentenceEncoder, mean_pool
from map_jax.models.gpt2 import GPT2, GPT2Config
from map_jax.models.heads import ClassifierConfig, DecoderClassifier
from map_jax.models.layers import KVCache, LMOutput, positions_from_mask
from map_jax.models.llama import Llama, LlamaConfig
from map_jax.models.loading import (
  BUILTIN,
  CheckpointError,
  LoadedModel,
  load_gguf,
  load_hf,
  load_model,
  load_sentence_encoder,
  restore_params,
  save_params,
)
from map_jax.models.opt import OPT, OPTConfig
from map_jax.models.tokenizer import chat_prompt, load_tokenizer

__all__ = [
  "BUILTIN",
  "Bert",
  "BertConfig",
  "CheckpointError",
  "ClassifierConfig",
  "DecoderClassifier",
  "EncoderOutput",
  "GPT2",
  "GPT2Config",
  "KVCache",
  "LMOutput",
  "Llama",
  "LlamaConfig",
  "LoadedModel",
  "OPT",
  "OPTConfig",
  "SentenceEncoder",
  "chat_prompt",
  "load_gguf",
  "load_hf",
  "load_model",
  "load_sentence_encoder",
  "load_tokenizer",
  "mean_pool",
  "positions_from_mask",
  "restore_params",
  "save_params",
]
