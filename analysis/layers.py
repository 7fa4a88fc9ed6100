"""The attention layers of a model and what they sow, grouped per layer, from one forward.

    layers = attention_layers(model)             # [AttentionLayer('layers.0.self_attention', …)]
    sown = forward(model, batch)                 # one jitted call under nnx.capture
    per_layer = group(sown, layers)              # {path: {'attention_weights', 'values', …}}

A batch is a data batch of the model's task: {'inputs'} (+ 'weights') for a language model,
{'source', 'target_in'} for the encoder–decoder. The forward is the model's own `__call__` with
`sow_weights=True` (attention/capture.py): no second implementation of the model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from attention import capture

ROLES = ('self', 'encoder', 'decoder', 'cross')


@dataclasses.dataclass(frozen=True)
class AttentionLayer:
  """One attention sublayer: its path in the model, role, depth (0-based) and block path."""
  path: str        # e.g. 'decoder_layers.1.cross_attention'
  role: str        # self (LM) | encoder | decoder | cross
  index: int
  block: str       # e.g. 'decoder_layers.1'

  @property
  def label(self) -> str:
    return f'{self.role} {self.index + 1}'

  @property
  def residual_name(self) -> str:
    return 'cross_attention_input' if self.role == 'cross' else 'self_attention_input'


def is_translation(model: nnx.Module) -> bool:
  return hasattr(model, 'decoder_layers')


def attention_layers(model: nnx.Module) -> list[AttentionLayer]:
  """Every attention sublayer of a TransformerLM or EncoderDecoder, in forward order."""
  if not is_translation(model):
    return [AttentionLayer(f'layers.{i}.self_attention', 'self', i, f'layers.{i}')
            for i in range(len(model.layers))]
  out = [AttentionLayer(f'encoder_layers.{i}.self_attention', 'encoder', i, f'encoder_layers.{i}')
         for i in range(len(model.encoder_layers))]
  for i in range(len(model.decoder_layers)):
    block = f'decoder_layers.{i}'
    out.append(AttentionLayer(f'{block}.self_attention', 'decoder', i, block))
    out.append(AttentionLayer(f'{block}.cross_attention', 'cross', i, block))
  return out


def module_at(model: nnx.Module, path: str) -> Any:
  """The submodule at a dotted path ('layers.0.self_attention'; '' = the model)."""
  node = model
  for part in filter(None, path.split('.')):
    node = node[int(part)] if part.isdigit() else getattr(node, part)
  return node


def _call(model, batch: dict[str, jax.Array]):
  if is_translation(model):
    return model(batch['source'], batch['target_in'], deterministic=True, sow_weights=True)
  valid = batch.get('valid')
  return model(batch['inputs'], valid=valid, deterministic=True, sow_weights=True)


@nnx.jit
def _forward(model, batch):
  return nnx.capture(_call, nnx.Intermediate)(model, batch)


def forward(model: nnx.Module, batch: dict[str, Any]) -> tuple[jax.Array, dict[str, Any]]:
  """`(final hidden [B, T, D], {dotted path: sown value})` of one jitted, dropout-free call."""
  batch = {k: jnp.asarray(v) for k, v in batch.items() if k in ('inputs', 'valid', 'source',
                                                                 'target_in')}
  out, sown = _forward(model, batch)
  return out, capture.flatten(sown)


def group(sown: dict[str, Any], layers: list[AttentionLayer]) -> dict[str, dict[str, Any]]:
  """`{layer path: {name: value}}`: the core's and the layer's sows, and the residual input."""
  out = {}
  for layer in layers:
    entry = {}
    for prefix in (layer.path + '.core.', layer.path + '.'):
      for path, value in sown.items():
        if path.startswith(prefix) and '.' not in path[len(prefix):]:
          entry.setdefault(path[len(prefix):], value)
    residual = sown.get(f'{layer.block}.{layer.residual_name}')
    if residual is not None:
      entry['residual'] = residual
    out[layer.path] = entry
  return out


def hidden_states(sown: dict[str, Any], model: nnx.Module) -> dict[str, list[jax.Array]]:
  """Each stack's per-layer outputs: {'self': [...]} (LM) or {'encoder': …, 'decoder': …}."""
  def stack(name):
    states = sown.get(name, ())
    return list(states) if isinstance(states, tuple) else [states]
  if is_translation(model):
    return {'encoder': stack('encoder_hidden_states'), 'decoder': stack('decoder_hidden_states')}
  return {'self': stack('hidden_states')}
