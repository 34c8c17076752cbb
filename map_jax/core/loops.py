"""Loops for solvers that run under ``vmap`` over many problems of different difficulty."""

import jax
import jax.numpy as jnp


def compacting_while_loop(cond_fun, body_fun, consts, init, *, shrink: int = 4, min_lanes: int = 16):
  """``lax.while_loop`` whose ``vmap`` pays for the iterations its lanes need.

  Equivalent to ``lax.while_loop(lambda s: cond_fun(consts, s), lambda s:
  body_fun(consts, s), init)``. Under ``vmap`` a plain while loop runs its body on the
  whole batch until the slowest lane is done, so one palette near the feasibility
  boundary that needs 40 Newton steps makes a batch of thousands pay 40 steps each.
  Here the batched loop runs only while more than a quarter of the lanes are active,
  then gathers the active ones into a batch a quarter the size and goes on there, and
  so on down to ``min_lanes``; the results are scattered back. Every lane still applies
  ``body_fun`` exactly as long as its own ``cond_fun`` holds, so the answers are those
  of the plain loop (up to rounding that depends on the batch size).

  Args:
    cond_fun, body_fun: ``cond_fun(consts, state) -> bool`` and
      ``body_fun(consts, state) -> state`` for one lane.
    consts: a pytree the loop reads but does not change (batched or not).
    init: the initial state.
    shrink: factor by which each stage's batch is smaller than the last.
    min_lanes: the last stage, no larger than this, runs until every lane is done.

  Returns:
    The final state.
  """

  @jax.custom_batching.custom_vmap
  def loop(consts, state):
    return jax.lax.while_loop(lambda s: cond_fun(consts, s), lambda s: body_fun(consts, s), state)

  @loop.def_vmap
  def rule(axis_size, in_batched, consts, state):
    consts_batched, state_batched = in_batched
    state = jax.tree.map(
      lambda x, b: x if b else jnp.broadcast_to(x, (axis_size,) + jnp.shape(x)), state, state_batched
    )
    axes = jax.tree.map(lambda b: 0 if b else None, consts_batched)
    v_cond = jax.vmap(cond_fun, in_axes=(axes, 0))
    v_body = jax.vmap(body_fun, in_axes=(axes, 0))

    def select(active, new, old):
      return jax.tree.map(lambda a, b: jnp.where(active.reshape(active.shape + (1,) * (a.ndim - 1)), a, b), new, old)

    def run(consts, state, until):
      """Steps the active lanes while more than ``until`` of them are active."""

      def body(s):
        return select(v_cond(consts, s), v_body(consts, s), s)

      return jax.lax.while_loop(lambda s: jnp.sum(v_cond(consts, s)) > until, body, state)

    sizes = [axis_size]
    while sizes[-1] > min_lanes:
      sizes.append(-(-sizes[-1] // shrink))
    sizes.append(0)

    def stage(k, consts, state):
      state = run(consts, state, sizes[k + 1])
      if sizes[k + 1] == 0:
        return state
      active = v_cond(consts, state)
      # At most sizes[k + 1] < sizes[k] lanes are active, so an idle lane exists to pad
      # the next stage's batch; padding lanes stay idle and are written back unchanged.
      (lanes,) = jnp.nonzero(active, size=sizes[k + 1], fill_value=jnp.argmin(active))
      sub_consts = jax.tree.map(lambda x, b: x[lanes] if b else x, consts, consts_batched)
      sub = stage(k + 1, sub_consts, jax.tree.map(lambda x: x[lanes], state))
      return jax.tree.map(lambda x, y: x.at[lanes].set(y), state, sub)

    out = stage(0, consts, state)
    return out, jax.tree.map(lambda _: True, out)

  return loop(consts, init)


def unbatched_cond(pred, true_fun, false_fun, operand):
  """``lax.cond(pred, true_fun, false_fun, operand)`` for one problem; under ``vmap``, ``false_fun`` on every
  lane.

  For a step that pays only when a problem is solved alone, such as a better start that saves passes over data
  a batch reads once for all its lanes anyway. (Under ``vmap`` with a batched predicate, ``lax.cond`` would run
  both branches on every lane.) Both branches must give answers the caller treats alike, as two starts of
  the same solver do.

  Args:
    pred: a boolean scalar.
    true_fun, false_fun: functions of ``operand`` returning pytrees of the same structure. They must not
      close over traced values (``custom_vmap`` does not batch those): pass every one in ``operand``.
    operand: a pytree (batched or not).

  Returns:
    The chosen branch's value.
  """

  @jax.custom_batching.custom_vmap
  def run(pred, operand):
    return jax.lax.cond(pred, true_fun, false_fun, operand)

  @run.def_vmap
  def rule(axis_size, in_batched, pred, operand):
    axes = jax.tree.map(lambda b: 0 if b else None, in_batched[1])
    out = jax.vmap(false_fun, in_axes=(axes,), axis_size=axis_size)(operand)
    return out, jax.tree.map(lambda _: True, out)

  return run(pred, operand)
