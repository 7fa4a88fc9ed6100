"""Attention distillation from a trained dense teacher (SEA, Lee et al. 2024, "SEA: Sparse Linear
Attention with Estimated Attention Mask", arXiv:2310.01777, §3.2): the student LM learns from
the task loss and from the teacher's per-layer attention, attention context, hidden states and
output distribution.

The student is `attention.kind=sea` with `attention.sea.distill=True`; its teacher is a finished
softmax run of the *same* LM, named by `attention.sea.teacher` (that run's workdir). On a fresh
start the student copies every teacher parameter whose path and shape it shares (embeddings,
projections, FFNs, norms: all but the SEA estimator), as the official code initialises the
student from the teacher. The teacher is frozen and runs on the same batch.

Per token t of a training batch (weights w_t; the update divides Σ_t w_t·ℓ_t by Σ_t w_t):

    ℓ_t = task_weight · nll_t
        + hidden_weight · mean_layers mean_D (h^S_l,t − h^T_l,t)²
        + logits_kl_weight · KL(p^T_t ‖ p^S_t)                      (output distributions)
        + attention_loss_weight · mean_layers (L_approx + L_prob + L_context)_l,t

with, for layer l and query t, averaged over heads (`attention.sea.kl_weight` = 0.1):

    L_approx = kl_weight·KL(A^T ‖ Â) + mean_S (Â − A^T)²     Â: the estimate interpolated to T×T
    L_prob   = kl_weight·KL(A^T ‖ A^S) + mean_S (A^S − A^T)²  A^S: the student's dense softmax
    L_context = mean_{N,H} (C_sea − C^T)²                     contexts before the output projection

Weights default to the official OPT recipe (`opt_trainer.py`): 0.1 task, 5 hidden-state MSE,
0.2 logits KL, 1 per-layer attention losses. Differences from the official code, said plainly:
PyTorch's `kl_div(log_softmax(student), softmax(teacher))` is KL(teacher ‖ student), which is what
is computed here; the official means run over all elements, here every term is a per-token
quantity weighted like the task loss (identical when no token is padding); the official run uses
learning-rate multipliers (×10 for SEA modules, ×0.2 for the rest), here one learning rate.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from attention import sea
from training import builders
from training import checkpoints as ckpt_lib
from training import workdir as workdir_lib

# The model keys that must agree between teacher and student for the distillation to make sense.
_SHARED_MODEL_KEYS = ('num_layers', 'd_model', 'num_heads', 'd_ff', 'vocab_size', 'pre_norm',
                      'final_norm', 'positions', 'tie_embeddings', 'adaptive_input',
                      'adaptive_softmax', 'adaptive_cutoffs')


# Per-token terms reported next to the objective (as `<term>_sum` metrics).
TERMS = ('attention_kd', 'hidden_mse', 'logits_kl')


def enabled(config: ml_collections.ConfigDict) -> bool:
  """Whether this run distils (SEA with `attention.sea.distill=True`)."""
  return config.attention.kind == 'sea' and bool(config.attention.sea.distill)


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A frozen teacher: its NNX graph, parameters, and the checkpoint they came from."""
  graphdef: Any
  params: Any
  rest: Any
  step: int
  workdir: Path


def load_teacher(config: ml_collections.ConfigDict, data_description: dict, mesh) -> Teacher:
  """Loads `attention.sea.teacher`'s best checkpoint; clear errors when it cannot be the teacher.

  Refused: no teacher named, a folder that is not a finished training workdir, a teacher that is
  not softmax attention, a teacher trained on different data (tokens would mean different words)
  or with a different model shape.
  """
  name = config.attention.sea.teacher
  if not name:
    raise ValueError('attention.sea.distill=True needs a teacher: set attention.sea.teacher to '
                     'the workdir of a trained attention.kind=softmax run of the same model '
                     '(or set attention.sea.distill=False to train SEA from the task loss only)')
  path = Path(name)
  if not (path / 'config.json').exists():
    raise ValueError(f'attention.sea.teacher={name!r} is not a training workdir (no '
                     'config.json there); train the softmax teacher first with train.py')
  teacher_config = workdir_lib.load_config(path)
  if teacher_config.attention.kind != 'softmax':
    raise ValueError(f'attention.sea.teacher={name!r} was trained with attention.kind='
                     f'{teacher_config.attention.kind!r}; the teacher must be a softmax run')
  theirs = workdir_lib.config_to_dict(teacher_config.model)
  ours = workdir_lib.config_to_dict(config.model)
  diff = [f'model.{k}: teacher {theirs.get(k)!r}, student {ours.get(k)!r}'
          for k in _SHARED_MODEL_KEYS if theirs.get(k) != ours.get(k)]
  if diff:
    raise ValueError(f'attention.sea.teacher={name!r} has a different model shape:\n  '
                     + '\n  '.join(diff))
  data_path = path / 'data.json'
  if data_path.exists():
    saved = json.loads(data_path.read_text())
    data_diff = workdir_lib.differences(saved, data_description)
    if data_diff:
      raise ValueError(f'attention.sea.teacher={name!r} was trained on different data:\n  '
                       + '\n  '.join(data_diff))
  checkpoints = ckpt_lib.Checkpoints(path / 'checkpoints', keep=1, read_only=True)
  try:
    if not checkpoints.all_steps():
      raise ValueError(f'attention.sea.teacher={name!r} has no checkpoints; finish training it')
    step = checkpoints.best_step() or checkpoints.latest_step()
    graphdef, params, rest = builders.split_model(builders.build_model(teacher_config))
    params = checkpoints.restore_params(step, builders.abstract_params(params, mesh))
  finally:
    checkpoints.close()
  return Teacher(graphdef, params, rest, int(step), path)


def init_from_teacher(student_params: dict, teacher_params: dict) -> tuple[dict, int, int]:
  """Student params with every (path, shape)-matching teacher leaf copied in.

  Returns (params, copied leaves, leaves left at their initialisation).
  """
  flat_t = dict(jax.tree_util.tree_leaves_with_path(teacher_params))
  copied = kept = 0

  def pick(path, leaf):
    nonlocal copied, kept
    t = flat_t.get(path)
    if t is not None and t.shape == leaf.shape and t.dtype == leaf.dtype:
      copied += 1
      return jnp.array(t, copy=True)  # the student's state is donated; the teacher's is not
    kept += 1
    return leaf

  params = jax.tree_util.tree_map_with_path(pick, student_params)
  return params, copied, kept


def _layer_values(intermediates, name: str, where: str) -> list[jax.Array]:
  """The sown `name` of every layer's self-attention (`where` = 'core' or 'layer')."""
  out = []
  for i in sorted(intermediates['layers']):
    node = intermediates['layers'][i]['self_attention']
    if where == 'core':
      node = node['core']
    (value,) = node[name]
    out.append(value)
  return out


def token_objective(student, teacher_model, batch: dict, sea_config, *,
                    deterministic: bool) -> tuple[jax.Array, jax.Array, dict]:
  """Per-token distillation objective `[B, T]`, task NLL `[B, T]` and terms `{name: [B, T]}`.

  `student` and `teacher_model` are live NNX models (inside the jitted step).
  """
  tokens, targets = batch['inputs'], batch['targets']
  hidden_t = teacher_model(tokens, deterministic=True, sow_weights=True)
  inter_t = nnx.pop(teacher_model, nnx.Intermediate)
  log_p_t = jax.lax.stop_gradient(teacher_model.log_probs(hidden_t))
  inter_t = jax.lax.stop_gradient(nnx.to_pure_dict(inter_t))

  hidden_s = student(tokens, deterministic=deterministic, sow_weights=True)
  inter_s = nnx.to_pure_dict(nnx.pop(student, nnx.Intermediate))
  # One pass through the output layer serves the task NLL and the logits KL (it is most of the
  # step's FLOPs at word level).
  log_p_s = student.log_probs(hidden_s)
  nll = -jnp.take_along_axis(log_p_s, targets[..., None], axis=-1)[..., 0]

  t = tokens.shape[1]
  allowed = jnp.tril(jnp.ones((t, t), bool))[None, None]      # the LM's causal mask
  probs_t = _layer_values(inter_t, 'attention_weights', 'core')
  context_t = _layer_values(inter_t, 'context', 'layer')
  approx = _layer_values(inter_s, 'estimate_log_probs', 'core')
  dense = _layer_values(inter_s, 'dense_log_probs', 'core')
  context_s = _layer_values(inter_s, 'context', 'layer')
  kl_w = sea_config.kl_weight
  per_layer = []
  for p_t, c_t, a_s, d_s, c_s in zip(probs_t, context_t, approx, dense, context_s):
    # Per query token, averaged over heads.
    l_approx = jnp.mean(sea.attention_kd_rows(p_t, a_s, allowed, kl_weight=kl_w)[0], axis=1)
    l_prob = jnp.mean(sea.attention_kd_rows(p_t, d_s, allowed, kl_weight=kl_w)[0], axis=1)
    l_context = jnp.mean(jnp.square(c_s.astype(jnp.float32) - c_t.astype(jnp.float32)),
                         axis=(-2, -1))
    per_layer.append(l_approx + l_prob + l_context)
  attention_loss = jnp.mean(jnp.stack(per_layer), axis=0)     # [B, T]

  hs_s, hs_t = inter_s['hidden_states'], inter_t['hidden_states']
  hidden_loss = jnp.mean(jnp.stack([
      jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)), axis=-1)
      for a, b in zip(hs_s, hs_t)]), axis=0)                  # [B, T]
  logits_kl = jnp.sum(jnp.exp(log_p_t) * (log_p_t - log_p_s), axis=-1)   # [B, T]

  c = sea_config
  objective = (c.task_weight * nll + c.hidden_weight * hidden_loss
               + c.logits_kl_weight * logits_kl + c.attention_loss_weight * attention_loss)
  terms = {'attention_kd': attention_loss, 'hidden_mse': hidden_loss, 'logits_kl': logits_kl}
  return objective, nll, terms
