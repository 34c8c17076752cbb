"""eval/report: which values a palette raises, from a solved quantile palette on skewed pilot rewards."""

import jax
import numpy as np

from map_jax.core.dual import solve_dual
from map_jax.core.palette import quantile_palette
from map_jax.eval.report import raised_values, solution_record


def test_a_quantile_below_the_mean_keeps_the_value_instead_of_raising_it():
  rng = np.random.default_rng(0)
  # "skewed": a long right tail puts its median below its mean; "normal": median ~ mean.
  R = np.stack([rng.exponential(size=2000), rng.normal(size=2000), rng.normal(size=2000)], axis=1)
  names = ["skewed", "normal", "kept"]
  assert np.median(R[:, 0]) < R[:, 0].mean()
  with jax.enable_x64(True):
    c = np.asarray(quantile_palette(R, [0.5, 0.7, None]))
    rec = solution_record(R, names, c, solve_dual(R, c))
  np.testing.assert_allclose(c[[0, 2]], R[:, [0, 2]].mean(0), rtol=1e-12)  # floored at / kept at the mean
  assert c[1] > R[:, 1].mean()
  assert raised_values(rec) == ["normal"]
  with jax.enable_x64(True):
    c = np.asarray(quantile_palette(R, [0.8, 0.7, None]))  # the 80% quantile is above the mean
    assert raised_values(solution_record(R, names, c, solve_dual(R, c))) == ["skewed", "normal"]
