"""Learned reward heads: the humor head predicts held-out human ratings; training, saving and Bradley–Terry."""

import json
import sys

import numpy as np
import pytest
from scipy.stats import spearmanr

from map_jax.rewards import get_reward, heads


def test_humor_head_beats_chance_on_held_out_chitchat_ratings(humor_head):
  texts, ratings = heads.chitchat_conversations()
  n = humor_head.meta["metrics"]["n_train"] + humor_head.meta["metrics"]["n_val"] + humor_head.meta["metrics"]["n_test"]
  _, _, test = heads.split_indices(n, humor_head.meta["config"]["seed"])
  value = heads.HeadReward(humor_head, name="humor")
  with pytest.warns(UserWarning, match="truncated"):  # long conversations are cut to the head's 64 tokens
    pred = value([""] * len(test), [texts[i] for i in test])
  rho, p = spearmanr(pred, ratings["witty"][test])  # scipy, independent of the head's own metric code
  assert rho > 0.15 and p < 0.01  # full head: rho ~0.31 on 599 rows; cold-cache 2,000-row head: ~0.20 on 200
  assert rho == pytest.approx(humor_head.meta["metrics"]["test_spearman"], abs=1e-3)
  assert 1.0 < pred.mean() < 10.0  # a predicted rating on the 1-10 scale


def test_head_save_load_and_head_spec(humor_head, tmp_path):
  humor_head.save(str(tmp_path / "h"))
  value = get_reward(f"h=head:{tmp_path / 'h'}")
  ref = heads.HeadReward(humor_head)
  texts = ["haha that is hilarious, you crack me up", ""]
  got = value(["x", "x"], texts)
  np.testing.assert_allclose(got, ref(["x", "x"], texts), rtol=1e-6)
  assert np.all(np.isfinite(got)) and value.name == "h"


def _sentiment_pairs(n, seed=0):
  """Real sentences: chosen is upbeat, rejected is glum (a preference any sentence encoder can learn)."""
  rng = np.random.default_rng(seed)
  subjects = ["the trip", "my day", "the movie", "dinner", "the concert", "our holiday", "the game", "work"]
  good = ["was wonderful and fun", "made me so happy", "was a delight", "was great, I loved it"]
  bad = ["was awful and boring", "made me miserable", "was a disaster", "was terrible, I hated it"]
  pick = lambda xs: xs[rng.integers(len(xs))]  # noqa: E731
  return [(f"{pick(subjects)} {pick(good)}", f"{pick(subjects)} {pick(bad)}") for _ in range(n)]


def test_bradley_terry_training_cli_learns_preferences(tmp_path, monkeypatch):
  monkeypatch.setenv("MAP_JAX_CACHE", str(tmp_path / "cache"))
  data = tmp_path / "prefs.jsonl"
  with open(data, "w") as f:
    for c, r in _sentiment_pairs(120):
      f.write(json.dumps({"prompt": "How was it?", "chosen": c, "rejected": r}) + "\n")
  import os
  import subprocess

  env = dict(os.environ, MAP_JAX_CACHE=str(tmp_path / "cache"))
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.train_reward",
      f"--data={data}",
      "--loss=bradley_terry",
      f"--workdir={tmp_path / 'bt'}",
      "--max_tokens=32",
      "--seed=1",
    ],
    capture_output=True,
    text=True,
    timeout=300,
    env=env,
  )
  assert proc.returncode == 0, proc.stderr
  assert "test_accuracy" in proc.stdout
  metrics = json.loads((tmp_path / "bt" / "metrics.json").read_text())
  assert metrics["test_accuracy"] >= 0.9
  value = get_reward(f"head:{tmp_path / 'bt'}")
  held_out = _sentiment_pairs(20, seed=7)
  r = value(["How was it?"] * 40, [c for c, _ in held_out] + [r for _, r in held_out])
  assert np.mean(r[:20] > r[20:]) >= 0.9


def test_fit_head_is_reproducible_and_stops_early():
  rng = np.random.default_rng(0)
  w = rng.normal(size=8)
  x = rng.normal(size=(300, 8)).astype(np.float32)
  y = (x @ w + 0.1 * rng.normal(size=300)).astype(np.float32)
  y = (y - y.mean()) / y.std()
  cfg = heads.HeadConfig(hidden=(16,), learning_rate=3e-3, max_epochs=300, patience=5, batch_size=32, seed=3)
  p1, h1 = heads.fit_head(x[:200], y[:200], x[200:], y[200:], cfg)
  p2, h2 = heads.fit_head(x[:200], y[:200], x[200:], y[200:], cfg)
  assert h1["val_loss"] == h2["val_loss"]
  assert h1["best_val_loss"] < 0.1  # learns a linear rating function
  assert len(h1["val_loss"]) <= h1["best_epoch"] + cfg.patience
  assert h1["best_val_loss"] == min(h1["val_loss"])


def test_humor_value_rates_jokes_above_dry_statements(humor_head):
  value = heads.HeadReward(humor_head, name="humor")
  jokes = [
    "Why did the scarecrow win an award? Because he was outstanding in his field! haha",
    "lol my cat just tried to fight a cucumber and lost, I cannot stop laughing",
  ]
  dry = ["The meeting is at 3pm.", "I do not know.", "Please submit the form by Friday."]
  r = value(["Tell me something."] * 5, jokes + dry)
  assert r[:2].mean() > r[2:].mean() + 0.5
