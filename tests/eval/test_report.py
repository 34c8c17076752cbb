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


def test_margins_keep_their_sign_and_low_ess_palettes_are_flagged():
  from map_jax.eval.report import LOW_ESS, low_ess_warning, signed

  assert signed(-0.0004) == "-4.0e-04" and signed(0.0004) == "+4.0e-04"  # never "-0.000"
  assert signed(0.0884) == "+0.088" and signed(-0.0324, 4) == "-0.0324" and signed(0.0) == "0"
  from map_jax.data.pilot import load_pilot
  from tests.core.conftest import REFERENCE, VALUES, hhh_palette

  R, _ = load_pilot(str(REFERENCE), list(VALUES))
  with jax.enable_x64(True):
    recs = {q: solution_record(R, VALUES, hhh_palette(R, q), solve_dual(R, hhh_palette(R, q))) for q in (0.5, 0.85)}
  assert recs[0.5]["ess"] > 1000 and low_ess_warning({**recs[0.5], "n": len(R)}) is None
  assert 1 < recs[0.85]["ess"] < LOW_ESS  # the reference set's HHH-85% rests on about 6 samples
  warning = low_ess_warning({**recs[0.85], "n": len(R)})
  assert warning.startswith(f"ESS {recs[0.85]['ess']:.1f} of {len(R)} pilot samples is below {LOW_ESS}")
