"""Pure functions that run inside `jax.jit`: the train step and the evaluation step.

The model lives as (graphdef, params, rest) (training/builders.py `split_model`): `params` is
a pure nested dict of float32 arrays (what the optimizer updates and the checkpoint stores),
`rest` the non-parameter NNX state (RNG streams). Dropout keys are derived from the run's base
key and the step number (`fold_in(rng, step)`, then the micro-batch index), so a resumed run
draws exactly the masks the uninterrupted run would have drawn.

Losses and metrics are token-weighted: every function returns sums and a denominator (the
number of weighted tokens), never a mean of means (as the Flax examples do).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from training import distill

# LM: inputs, targets [B, T] int32, weights [B, T] float32. Translation: source [B, S],
# target_in (bos + target[:-1]) and targets [B, T] int32, weights [B, T] float32.
Batch = dict[str, jax.Array]
TrainState = dict[str, Any]    # params, opt_state, step, rng, skipped_updates


def _merge(graphdef, params, rest, key=None):
  # A fresh copy at this trace level: reseeding mutates the RNG variables in `rest`.
  model = nnx.merge(graphdef, params, jax.tree.map(jnp.asarray, rest))
  if key is not None:
    nnx.reseed(model, dropout=key)
  return model


def _forward_nll(graphdef, params, rest, batch: Batch, *, key, label_smoothing: float,
                 deterministic: bool, with_predictions: bool):
  model = _merge(graphdef, params, rest, key)
  if 'source' in batch:  # encoder–decoder, teacher-forced
    hidden = model(batch['source'], batch['target_in'], deterministic=deterministic)
  else:
    hidden = model(batch['inputs'], deterministic=deterministic)
  nll = model.token_nll(hidden, batch['targets'], label_smoothing=label_smoothing,
                        deterministic=deterministic)
  # Accuracy is reported for tasks with a small output vocabulary (the synthetic task).
  predictions = jnp.argmax(model.log_probs(hidden), axis=-1) if with_predictions else None
  return nll, predictions


def make_train_step(graphdef, rest, optimizer: optax.GradientTransformation, *,
                    grad_accum_steps: int, label_smoothing: float,
                    teacher: Any = None, distill_config: Any = None) -> Callable:
  """`train_step(state, batch, teacher_params=None) -> (state, metrics)`.

  Batch arrays are [micro-batches, B, T]. With a `teacher` (training/distill.py `Teacher`) the
  step minimises the distillation objective of `distill_config` (`attention.sea`) and
  `teacher_params` must be passed; metrics then also hold the objective and its terms as sums
  (`<name>_sum`, to divide by `weight`). `loss_sum` is always the task NLL.

  An update whose loss, gradient norm or update norm is not finite is not applied: parameters
  and optimizer state stay as they were (the step counter still advances), and
  `metrics['nonfinite']` is 1. The loop decides whether that stops the run or is counted as a
  skipped update (`nan_policy`).
  """

  def loss_sums(params, micro: Batch, key, teacher_params):
    w = micro['weights']
    if teacher is None:
      nll, _ = _forward_nll(graphdef, params, rest, micro, key=key,
                            label_smoothing=label_smoothing, deterministic=False,
                            with_predictions=False)
      return jnp.sum(nll * w), (jnp.sum(nll * w), jnp.sum(w), {})
    student = _merge(graphdef, params, rest, key)
    teacher_model = _merge(teacher.graphdef, teacher_params, teacher.rest)
    objective, nll, terms = distill.token_objective(student, teacher_model, micro,
                                                    distill_config, deterministic=False)
    sums = {f'{k}_sum': jnp.sum(v * w) for k, v in terms.items()}
    sums['objective_sum'] = jnp.sum(objective * w)
    return sums['objective_sum'], (jnp.sum(nll * w), jnp.sum(w), sums)

  # Gradient of the *sum* over tokens; divided by the token count of the whole update below.
  loss_sums_and_grad = jax.value_and_grad(loss_sums, has_aux=True)

  def train_step(state: TrainState, batch: Batch, teacher_params=None):
    if (teacher is None) != (teacher_params is None):
      raise ValueError('train_step: pass teacher_params exactly when the step distils')
    step_key = jax.random.fold_in(state['rng'], state['step'])

    def body(carry, xs):
      i, mb = xs
      grads, loss_sum, weight, extra = carry
      (_, (ls, w, e)), g = loss_sums_and_grad(state['params'], mb,
                                              jax.random.fold_in(step_key, i), teacher_params)
      return (jax.tree.map(jnp.add, grads, g), loss_sum + ls, weight + w,
              jax.tree.map(jnp.add, extra, e)), None

    zeros = jax.tree.map(jnp.zeros_like, state['params'])
    extra0 = {} if teacher is None else {
        f'{k}_sum': jnp.float32(0) for k in distill.TERMS + ('objective',)}
    (grads, loss_sum, weight, extra), _ = jax.lax.scan(
        body, (zeros, jnp.float32(0), jnp.float32(0), extra0),
        (jnp.arange(grad_accum_steps), batch))
    denom = jnp.maximum(weight, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    update_norm = optax.global_norm(updates)
    finite = jnp.isfinite(loss_sum) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
    for v in extra.values():
      finite &= jnp.isfinite(v)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
    skipped = state['skipped_updates'] + (1 - finite.astype(jnp.int32))
    new_state = dict(state, params=keep(params, state['params']),
                     opt_state=keep(opt_state, state['opt_state']), step=state['step'] + 1,
                     skipped_updates=skipped)
    metrics = {'loss_sum': loss_sum, 'weight': weight, 'grad_norm': grad_norm,
               'update_norm': update_norm,
               'nonfinite': 1.0 - finite.astype(jnp.float32), 'skipped_updates': skipped,
               **extra}
    return new_state, metrics

  return train_step


def make_eval_step(graphdef, rest, *, with_accuracy: bool) -> Callable:
  """`eval_step(params, batch) -> {'loss_sum', 'weight'[, 'correct']}` (sums over the batch)."""

  def eval_step(params, batch: Batch):  # the student alone when the run distils
    nll, pred = _forward_nll(graphdef, params, rest, batch, key=None, label_smoothing=0.0,
                             deterministic=True, with_predictions=with_accuracy)
    w = batch['weights']
    out = {'loss_sum': jnp.sum(nll * w), 'weight': jnp.sum(w)}
    if with_accuracy:
      out['correct'] = jnp.sum((pred == batch['targets']) * w)
    return out

  return eval_step
