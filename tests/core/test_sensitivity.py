"""Trade-off matrices of a palette against finite differences and the covariance formula."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from map_jax.core.dual import solve_dual
from map_jax.core.implicit import inverse_covariance_on_active
from map_jax.core.sensitivity import sensitivity

from .conftest import hhh_palette


def test_tradeoff_matrices(reference_rewards):
  r = reference_rewards
  c = hhh_palette(r, 0.6)
  d_lam, d_realized = (np.asarray(a) for a in sensitivity(r, c))
  lam = np.asarray(jax.jit(solve_dual)(r, c).lam)
  active = lam > 0
  # Targeted values follow their own palette one for one and ignore the others'.
  np.testing.assert_allclose(d_realized[np.ix_(active, active)], np.eye(active.sum()), atol=1e-8)
  # Kept values move by Cov[kept, active] Cov[active, active]⁻¹ (float64 NumPy).
  w = special.softmax(r @ lam)
  centered = r - w @ r
  cov = (centered * w[:, None]).T @ centered
  expected = cov[np.ix_(~active, active)] @ np.linalg.inv(cov[np.ix_(active, active)])
  np.testing.assert_allclose(d_realized[np.ix_(~active, active)], expected, rtol=1e-7, atol=1e-10)
  np.testing.assert_allclose(d_realized[:, ~active], 0.0, atol=1e-12)
  np.testing.assert_allclose(
    d_lam, np.asarray(inverse_covariance_on_active(jnp.asarray(r), jnp.asarray(lam))), rtol=1e-8, atol=1e-10
  )
  # Finite differences of the realized levels of a kept value.
  h = 1e-5
  realized = jax.jit(lambda c: solve_dual(r, c).realized)
  for k in np.flatnonzero(active):
    e = np.zeros(6)
    e[k] = h
    fd = np.asarray(realized(c + e)) - np.asarray(realized(c - e))
    np.testing.assert_allclose(d_realized[:, k], fd / (2 * h), rtol=1e-4, atol=1e-7)


def test_bad_input_and_a_singular_active_covariance_are_named(reference_rewards):
  import pytest

  c = hhh_palette(reference_rewards, 0.6)
  bad = reference_rewards.copy()
  bad[7, 1] = np.nan
  with pytest.raises(ValueError, match=r"rewards of value column 1 are not finite \(NaN or inf\) in rows 7"):
    sensitivity(bad, c)
  with pytest.raises(ValueError, match="palette level of value column 0 is not finite"):
    sensitivity(reference_rewards, c + np.array([np.inf, 0, 0, 0, 0, 0]))
  dup = np.concatenate([reference_rewards[:, :3], reference_rewards[:, :1]], axis=1)
  with pytest.raises(ValueError, match=r"active value columns \[0, 3\] under p_λ is singular"):
    sensitivity(dup, np.concatenate([c[:3], c[:1]]))
