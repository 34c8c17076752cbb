"""eval/levels: intervals, win rates and quantiles against SciPy/NumPy references and hand counts."""

import numpy as np
import pytest
from scipy import stats

from map_jax.eval import levels


def test_mean_ci_matches_scipy_t_interval():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(37, 3)) * [1.0, 2.0, 0.1] + [0.0, 5.0, -1.0]
  mean, lo, hi = levels.mean_ci(x, 0.9)
  for i in range(3):
    ref = stats.t.interval(0.9, 36, loc=x[:, i].mean(), scale=stats.sem(x[:, i]))
    np.testing.assert_allclose([lo[i], hi[i]], ref, rtol=1e-12)
  np.testing.assert_allclose(mean, x.mean(0))
  m1, l1, h1 = levels.mean_ci(x[:1])
  assert np.isneginf(l1).all() and np.isposinf(h1).all() and np.allclose(m1, x[0])
  with pytest.raises(ValueError, match="confidence"):
    levels.mean_ci(x, 1.5)


def test_win_rate_counts_ties_as_half():
  a = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0], [3.0, 1.0]])
  b = np.array([[0.0, 0.0], [2.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
  np.testing.assert_allclose(levels.win_rate(a, b), [(1 + 0.5 + 0 + 1) / 4, (0.5 + 0 + 0.5 + 1) / 4])
  with pytest.raises(ValueError, match="shape"):
    levels.win_rate(a, b[:2])


def test_quantile_of_is_mid_rank_ecdf():
  ref = np.array([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [1.0, 4.0]])
  q = levels.quantile_of(np.array([[0.0, 2.5], [2.0, 0.0]]), ref)
  np.testing.assert_allclose(q, [[1.5 / 4, 2 / 4], [1.0, 0.0]])
  rng = np.random.default_rng(1)
  big = rng.normal(size=(4001, 1))  # continuous: mid-rank = the ordinary ECDF = the percentile rank
  np.testing.assert_allclose(
    levels.quantile_of(np.array([0.3]), big), [stats.percentileofscore(big[:, 0], 0.3) / 100], atol=1e-12
  )


def test_compare_and_checks_on_a_shifted_population():
  rng = np.random.default_rng(2)
  P = 400
  original = rng.normal(size=(P, 2))
  aligned = original + [0.5, 0.0] + 0.1 * rng.normal(size=(P, 2))
  pilot = rng.normal(size=(5000, 2))
  cmp = levels.compare(
    original, aligned, pilot=pilot, predicted=aligned.mean(0) + [0.0, 10.0], names=["humor", "coherence"]
  )
  h, c = cmp["humor"], cmp["coherence"]
  assert h["shift"]["low"] > 0.4 and h["win_rate"] > 0.95 and h["aligned_quantile"] > h["original_quantile"]
  assert c["shift"]["low"] < 0 < c["shift"]["high"]
  assert h["predicted_in_interval"] and not c["predicted_in_interval"]
  np.testing.assert_allclose(h["shift"]["mean"], (aligned - original)[:, 0].mean())
  ok = levels.checks(cmp, raised=["humor"], held=["coherence"])
  assert ok["raised_rise"] == {"humor": True} and ok["held_hold"] == {"coherence": True}
  assert levels.checks(cmp, raised=["coherence"], held=[])["raised_rise"] == {"coherence": False}
  assert ok["prediction_within_interval"] == {"humor": True, "coherence": False}
  with pytest.raises(ValueError, match=r"\[P, 2\]"):
    levels.compare(original[:, :1], aligned[:, :1], pilot=pilot, predicted=[0.0], names=["a", "b"])


def test_resampling_levels_between_the_mean_and_the_tilted_mean():
  rng = np.random.default_rng(3)
  pilot = rng.normal(size=(3000, 2))
  lam = np.array([1.0, 0.0])
  np.testing.assert_allclose(levels.resampling_levels(pilot, lam, 1, num_draws=200_000), pilot.mean(0), atol=0.01)
  w = np.exp(pilot @ lam)
  tilted = (w / w.sum()) @ pilot  # ≈ (1, 0) for a standard normal tilted by λ = (1, 0)
  k4, k64 = (levels.resampling_levels(pilot, lam, k) for k in (4, 64))
  assert pilot.mean(0)[0] < k4[0] < k64[0] < tilted[0] and abs(k64[0] - tilted[0]) < 0.1
  # k = 2 by hand: E[(e^a a + e^b b) / (e^a + e^b)] over independent pairs of pilot rows
  a, b = pilot[rng.integers(0, 3000, 100_000), 0], pilot[rng.integers(0, 3000, 100_000), 0]
  ref = np.mean((np.exp(a) * a + np.exp(b) * b) / (np.exp(a) + np.exp(b)))
  np.testing.assert_allclose(levels.resampling_levels(pilot, lam, 2, num_draws=100_000)[0], ref, atol=0.01)
