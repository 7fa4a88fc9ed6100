"""Gradient diagnostics per layer: ‖∂L/∂W_Q‖ and ‖∂L/∂scores‖, in the model and in a pure
attention stack built from its own attention layers.

Heo & Choi 2024 ("Generalized Probabilistic Attention Mechanism in Transformers",
arXiv:2410.15578, §5.2 / Fig. 4) compare, per layer, the gradient norm of the query weights of
softmax attention and daGPAM: attention that collapses rank less (peakier maps) has smaller
softmax Jacobians, the trade-off their Lemma 3 states. Here, for one batch and the task loss L
(token-weighted mean NLL, no label smoothing):

  grad_wq      ‖∂L/∂W_Q‖_F of each attention layer's query projection kernel
  grad_scores  ‖∂L/∂S‖_F of the scaled scores S = QKᵀ/√d (+ prior) of each layer, for the
               cores that form them (softmax; daGPAM: both branches, √(‖·‖²⁺ + ‖·‖²⁻); DIFF:
               its 2·N/2 half-head score maps; NON and NAP: the scores their maps are made
               of; CoDA: the scores of its tanh affinity, not its L1-distance gate); None
               for Performer and SEA (no score matrix) and top-k (its custom backward forms
               the scores internally).

`pure_attention_stack` runs the LM's attention layers one after the other on the embeddings,
with no residual connection, no FFN and no LayerNorm: the self-attention network (SAN) of
Dong, Cordonnier & Loukas 2021 ("Attention is Not All You Need: Pure Attention Loses Rank Doubly
Exponentially with Depth", arXiv:2103.03404), whose residual provably shrinks doubly
exponentially with depth. Its output goes through the model's final LayerNorm and output layer
for the loss. It reuses the trained layers (the same modules), so it shows what the skip
connections and FFNs protect the model from; it is not a model anyone trained.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from analysis import layers as layers_lib
from attention import capture
from attention import masks as masks_lib


def _mean_nll(model, hidden, targets, weights):
  nll = model.token_nll(hidden, targets, deterministic=True)
  return jnp.sum(nll * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _model_loss(model, batch):
  if layers_lib.is_translation(model):
    hidden = model(batch['source'], batch['target_in'], deterministic=True, sow_weights=True)
  else:
    hidden = model(batch['inputs'], deterministic=True, sow_weights=True)
  return _mean_nll(model, hidden, batch['targets'], batch['weights'])


def _pure_stack_loss(model, batch):
  """The LM's attention layers stacked without residuals, FFNs or LayerNorms (docstring)."""
  x = batch['embeddings']
  mask = masks_lib.causal()
  for block in model.layers:
    x = block.self_attention(x, None, mask, deterministic=True, sow_weights=True)
    block.sow(nnx.Intermediate, 'pure_stack_output', x)
  if model.final_norm is not None:
    x = model.final_norm(x)
  return _mean_nll(model, x, batch['targets'], batch['weights'])


def _norm(x) -> float:
  return float(jnp.sqrt(jnp.sum(jnp.square(jnp.asarray(x, jnp.float32)))))


def _per_layer(grads: dict[str, Any], score_grads: dict[str, Any],
               attention: list[layers_lib.AttentionLayer]) -> dict[str, list]:
  out = {'grad_wq': [], 'grad_scores': []}
  for layer in attention:
    out['grad_wq'].append(_norm(grads[f'{layer.path}.q_proj.kernel']))
    parts = [v for k, v in score_grads.items() if k.startswith(layer.path + '.core.')]
    out['grad_scores'].append(
        float(np.sqrt(sum(_norm(p) ** 2 for p in parts))) if parts else None)
  return out


def _flat_grads(grads) -> dict[str, Any]:
  return {'.'.join(str(p) for p in path): v.get_value() if isinstance(v, nnx.Variable) else v
          for path, v in nnx.to_flat_state(grads)}


@nnx.jit
def _model_gradients(model, batch):
  return capture.score_gradients(_model_loss, model, batch)


def model_gradients(model: nnx.Module, batch: dict[str, Any]
                    ) -> tuple[dict[str, dict[str, list]], dict[str, Any]]:
  """`({role: {'grad_wq': [...], 'grad_scores': [...]}}, sown)` for one batch (docstring)."""
  batch = {k: jnp.asarray(v) for k, v in batch.items()
           if k in ('inputs', 'targets', 'weights', 'source', 'target_in')}
  loss, grads, score_grads, sown = _model_gradients(model, batch)
  grads = _flat_grads(grads)
  attention = layers_lib.attention_layers(model)
  out = {}
  for role in dict.fromkeys(layer.role for layer in attention):
    out[role] = _per_layer(grads, score_grads, [l for l in attention if l.role == role])
  out['loss'] = float(loss)
  return out, sown


@nnx.jit
def _pure_gradients(model, batch):
  return capture.score_gradients(_pure_stack_loss, model, batch)


def pure_attention_stack(model: nnx.Module, batch: dict[str, Any], embeddings: jax.Array
                         ) -> tuple[dict[str, list], list[jax.Array]]:
  """Gradients and per-layer outputs of the LM's pure attention stack (docstring).

  `embeddings: [B, T, D]` is what enters the first layer (its sown 'self_attention_input').
  """
  if layers_lib.is_translation(model):
    raise ValueError('the pure attention stack is defined for language models')
  batch = {'embeddings': jnp.asarray(embeddings), 'targets': jnp.asarray(batch['targets']),
           'weights': jnp.asarray(batch['weights'])}
  loss, grads, score_grads, sown = _pure_gradients(model, batch)
  attention = layers_lib.attention_layers(model)
  out = _per_layer(_flat_grads(grads), score_grads, attention)
  out['loss'] = float(loss)
  outputs = [sown[f'{layer.block}.pure_stack_output'] for layer in attention]
  return out, outputs
