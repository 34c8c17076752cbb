"""Shared fixtures for the core solver tests: float64, the MAP reference pilot data."""

import json
import pathlib

import jax
import numpy as np
import pytest

REFERENCE = (
  pathlib.Path(__file__).resolve().parents[2] / "examples" / "map_reference" / "opt1.3b-Anthropic-harmless.json"
)
VALUES = ("humor", "gpt2-helpful", "gpt2-harmless", "diversity", "coherence", "perplexity")
TARGETED = 3  # humor, helpful, harmless are raised; the other three are kept at their mean


@pytest.fixture(autouse=True)
def float64():
  """Core tests compare against float64 references, so they run with x64 enabled."""
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="session")
def reference_rewards() -> np.ndarray:
  """The authors' OPT-1.3B / Anthropic-harmless pilot set, (2312, 6) float64."""
  rows = json.loads(REFERENCE.read_text())
  return np.array([[row[v] for v in VALUES] for row in rows], dtype=np.float64)


def hhh_palette(rewards: np.ndarray, q: float) -> np.ndarray:
  """The paper's HHH-q% palette: targeted values at max(mean, q-quantile), others at mean."""
  c = rewards.mean(axis=0)
  quantiles = np.quantile(rewards[:, :TARGETED], q, axis=0)
  c[:TARGETED] = np.maximum(c[:TARGETED], quantiles)
  return c
