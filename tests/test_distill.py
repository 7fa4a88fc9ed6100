"""Attention distillation (training/distill.py): the loss terms, teacher loading, student init."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention import sea
from configs import default as default_config
from training import distill, loop


def _np_row_kd(p_t, log_p_s, allowed, kl_weight):
  p_t = np.asarray(p_t, np.float64)
  log_p_s = np.asarray(log_p_s, np.float64)
  p_s = np.where(allowed, np.exp(log_p_s), 0.0)
  kl = np.zeros(p_t.shape[:-1])
  for idx in np.ndindex(*p_t.shape[:-1]):
    for s in range(p_t.shape[-1]):
      a = allowed[(0, 0) + idx[2:] + (s,)] if allowed.ndim == 4 else allowed[idx + (s,)]
      if a and p_t[idx + (s,)] > 0:
        kl[idx] += p_t[idx + (s,)] * (np.log(p_t[idx + (s,)]) - log_p_s[idx + (s,)])
  mse = np.mean((p_s - p_t) ** 2, axis=-1)
  return kl_weight * kl + mse


def _causal_probs(key, shape):
  b, n, t, _ = shape
  allowed = np.tril(np.ones((t, t), bool))[None, None]
  logits = jax.random.normal(key, shape)
  return np.asarray(jax.nn.softmax(logits, axis=-1, where=allowed)), allowed


def test_attention_kd_rows_matches_numpy():
  p_t, allowed = _causal_probs(jax.random.key(0), (2, 3, 6, 6))
  _, _ = _causal_probs(jax.random.key(1), (2, 3, 6, 6))
  logits_s = jax.random.normal(jax.random.key(1), (2, 3, 6, 6))
  log_p_s = jnp.where(allowed, jax.nn.log_softmax(jnp.where(allowed, logits_s, -1e30), axis=-1), 0)
  got, rows = sea.attention_kd_rows(jnp.asarray(p_t), log_p_s, jnp.asarray(allowed),
                                    kl_weight=0.1)
  assert bool(jnp.all(rows))
  want = _np_row_kd(p_t, log_p_s, allowed, 0.1)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-7)


def test_attention_kd_is_zero_when_student_equals_teacher_and_finite_with_zeros():
  p_t, allowed = _causal_probs(jax.random.key(2), (1, 2, 5, 5))
  p_t = np.array(p_t)
  p_t[..., 0] = 0.0  # zero-probability teacher entries must not give NaN
  log_p_s = np.where(p_t > 0, np.log(np.where(p_t > 0, p_t, 1.0)), -30.0)
  loss, grad = jax.value_and_grad(lambda s: jnp.sum(sea.attention_kd_rows(
      jnp.asarray(p_t), s, jnp.asarray(allowed), kl_weight=0.1)[0]))(
          jnp.asarray(log_p_s, jnp.float32))
  assert abs(float(loss)) < 1e-5
  assert np.isfinite(np.asarray(grad)).all()


def test_init_from_teacher_copies_shared_leaves_only():
  teacher = {'a': {'w': jnp.ones((2, 3))}, 'b': jnp.full((4,), 2.0), 'c': jnp.zeros((5,))}
  student = {'a': {'w': jnp.zeros((2, 3))}, 'b': jnp.zeros((4,)), 'c': jnp.zeros((6,)),
             'sea': jnp.full((3,), 7.0)}
  params, copied, kept = distill.init_from_teacher(student, teacher)
  assert (copied, kept) == (2, 2)
  np.testing.assert_array_equal(params['a']['w'], teacher['a']['w'])
  np.testing.assert_array_equal(params['b'], teacher['b'])
  np.testing.assert_array_equal(params['c'], student['c'])  # shape differs: kept
  np.testing.assert_array_equal(params['sea'], student['sea'])


def _config(kind, steps):
  c = default_config.get_config()
  c.model.num_layers, c.model.d_model, c.model.d_ff = 2, 32, 64
  c.batch_size, c.train_steps = 8, steps
  c.log_every = c.eval_every = c.checkpoint_every = steps
  c.eval_batches, c.progress_bar = 2, False
  c.attention.kind = kind
  c.attention.sea.predictor_length, c.attention.sea.k = 8, 4
  return c


@pytest.fixture(scope='module')
def teacher_dir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('teacher')
  loop.train_and_evaluate(_config('softmax', 6), workdir)
  return workdir


def test_sea_student_distils_from_teacher(teacher_dir, tmp_path):
  c = _config('sea', 2)
  c.attention.sea.teacher = str(teacher_dir)
  out = loop.train_and_evaluate(c, tmp_path / 'student')
  assert np.isfinite(out['loss'])
  rows = [json.loads(line) for line in (tmp_path / 'student' / 'metrics.jsonl').read_text()
          .splitlines()]
  train = [r for r in rows if r['split'] == 'train'][-1]
  for term in distill.TERMS + ('objective',):
    assert np.isfinite(train[term]), term
  assert train['attention_kd'] > 0 and train['hidden_mse'] >= 0


def test_distill_without_teacher_is_refused(tmp_path):
  c = _config('sea', 2)
  with pytest.raises(ValueError, match='attention.sea.teacher'):
    loop.train_and_evaluate(c, tmp_path / 'student')


def test_teacher_of_another_shape_or_kind_is_refused(teacher_dir, tmp_path):
  c = _config('sea', 2)
  c.model.d_ff = 32
  c.attention.sea.teacher = str(teacher_dir)
  with pytest.raises(ValueError, match='model.d_ff'):
    loop.train_and_evaluate(c, tmp_path / 'a')
  c = _config('sea', 2)
  c.attention.sea.teacher = str(tmp_path / 'nowhere')
  with pytest.raises(ValueError, match='not a training workdir'):
    loop.train_and_evaluate(c, tmp_path / 'b')
