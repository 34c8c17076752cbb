"""map_jax.spec: one schema for values and palettes in decoding and PPO configs."""

import ml_collections
import pytest

import configs
from map_jax import spec


def test_decoding_and_ppo_configs_spell_values_and_palettes_the_same_way():
  for name in ("default", "paper_opt1.3b", "ppo_default", "ppo_opt1.3b"):
    c = configs.load(name)
    targeted, kept = spec.value_names(c)
    assert targeted and not set(targeted) & set(kept), name
    assert spec.parse_palettes(c.palettes, targeted, kept), name
    spec.value_options(c)


def test_lists_are_comma_strings_or_sequences_of_strings():
  assert spec.names_list("targeted", " humor, ,positiveness ") == ["humor", "positiveness"]
  assert spec.names_list("kept", ("coherence", "diversity")) == ["coherence", "diversity"]
  assert spec.names_list("kept", None) == []
  with pytest.raises(ValueError, match="config.kept must be a comma-separated string"):
    spec.names_list("kept", 3)
  c = ml_collections.ConfigDict(dict(targeted="h=classifier:/ckpt:1,positiveness", kept="diversity"))
  assert spec.value_specs(c) == (["h=classifier:/ckpt:1", "positiveness"], ["diversity"])
  assert spec.value_names(c) == (["h", "positiveness"], ["diversity"])
  assert spec.palette_quantiles({"h": 0.7}, ["h", "positiveness", "diversity"]) == [0.7, None, None]


def test_value_options_must_name_values_and_hold_options():
  c = ml_collections.ConfigDict(dict(targeted="humor", kept="", value_options={"humor": {"batch_size": 8}}))
  assert spec.value_options(c) == {"humor": {"batch_size": 8}}
  c.value_options = {"wit": {"batch_size": 8}}
  with pytest.raises(ValueError, match=r"value_options names \['wit'\]"):
    spec.value_options(c)
  c = ml_collections.ConfigDict(dict(targeted="humor", kept="", value_options={"humor": 8}))
  with pytest.raises(ValueError, match="value_options.humor must map option names"):
    spec.value_options(c)
  with pytest.raises(ValueError, match="config.palettes must be a ';'-separated string"):
    spec.parse_palettes(("HHH-70%",), ["humor"], [])
