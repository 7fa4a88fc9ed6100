"""Read what attention layers sow: `attention_maps(model, ...)` returns every layer's weights.

Cores and layers sow their internals with `self.sow(nnx.Intermediate, name, value)` when called
with `sow_weights=True` (attention/registry.py lists the names). This module runs a call under
`nnx.capture`, so what was sown comes back as the call's second result and nothing stays on the
module: two calls never pile their values up, and a model that was inspected trains as before.

    maps = attention_maps(model, tokens)           # {'layers.0.self_attention': [B, N, T, T], …}
    out, sown = intermediates(model, tokens)       # every sown value, by dotted path
    maps = attention_maps(core, q, k, v, mask)     # one core: {'': [B, N, T, S]}

A path is the dotted attribute path of the module that sowed, relative to the module called
(`layers.0.self_attention.core`); `attention_maps` names a core's weights by its attention
layer (the path without the trailing `.core`). A module that was called k times in the call
sows a tuple of k values; a value sown once is returned bare.

Gradients of internal quantities (`score_gradients`): cores that form dense scores mark them
with `self.perturb('scores', s)` when sowing (registry docstring), so the gradient of any loss
with respect to the scores is `nnx.grad` with respect to those zero perturbations.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax import nnx

SOW_FLAG = 'sow_weights'


def flatten(state) -> dict[str, Any]:
  """`{dotted path: value}` of a captured State; the last path element is the sown name, and a
  value sown once is unwrapped from its 1-tuple."""
  out = {}
  for path, value in nnx.to_flat_state(state):
    value = value.get_value() if isinstance(value, nnx.Variable) else value
    if isinstance(value, tuple) and len(value) == 1:
      value = value[0]
    out['.'.join(str(p) for p in path)] = value
  return out


def intermediates(module: nnx.Module, *args, method: Callable | None = None,
                  **kwargs) -> tuple[Any, dict[str, Any]]:
  """`(output, {path.name: value})`: calls `module(*args, sow_weights=True, **kwargs)`.

  `method` (e.g. `model.encode`, a bound method of `module`) is called instead of
  `module.__call__`. The call's `sow_weights` flag is set unless `kwargs` gives it.
  """
  kwargs.setdefault(SOW_FLAG, True)
  fn = method if method is not None else module
  if method is not None and getattr(method, '__self__', None) is not module:
    raise ValueError('intermediates(module, method=...) needs a bound method of that module')
  out, sown = nnx.capture(fn, nnx.Intermediate)(*args, **kwargs)
  return out, flatten(sown)


def select(sown: dict[str, Any], name: str) -> dict[str, Any]:
  """`{module path: value}` of the values sown under `name` (the last path element)."""
  suffix = '.' + name
  out = {}
  for path, value in sown.items():
    if path == name:
      out[''] = value
    elif path.endswith(suffix):
      out[path[:-len(suffix)]] = value
  return out


def layer_path(core_path: str) -> str:
  """'layers.0.self_attention.core' → 'layers.0.self_attention' (a core's layer)."""
  if core_path == 'core':
    return ''
  return core_path[:-len('.core')] if core_path.endswith('.core') else core_path


def attention_maps(module: nnx.Module, *args, method: Callable | None = None,
                   **kwargs) -> dict[str, jax.Array]:
  """Every attention layer's weights `[B, N, T, S]`, by layer path, from one call.

  `module` is a model (keys like 'layers.0.self_attention', 'decoder_layers.1.cross_attention')
  or a single core (key ''). The weights are what each core sows as 'attention_weights': the
  softmax map, daGPAM's signed map P, DIFF's differential map, top-k's sparse map, the
  signed, unnormalised maps of NON, NAP and CoDA, and the implied map of Performer and SEA
  (an estimate: attention/registry.py says which are exact).
  """
  _, sown = intermediates(module, *args, method=method, **kwargs)
  return {layer_path(path): value
          for path, value in select(sown, 'attention_weights').items()}


def score_gradients(loss_fn: Callable[..., jax.Array], module: nnx.Module, *args,
                    **kwargs) -> tuple[jax.Array, Any, dict[str, Any], dict[str, Any]]:
  """`(loss, parameter grads, {path: ∂loss/∂scores}, sown)` for `loss_fn(module, *args)`.

  `loss_fn(module, *args, **kwargs)` must call the module with `sow_weights=True` (through
  its own code, e.g. `model(tokens, sow_weights=True)` then a loss). Cores that form dense
  scores mark them with `perturb('scores', …)`; a core without a dense score matrix
  (Performer, SEA, top-k's custom backward) contributes nothing to the third result.
  """
  _, zeros = nnx.capture(lambda m: loss_fn(m, *args, **kwargs), nnx.Perturbation)(module)

  def wrapped(m, perturbations):
    return nnx.capture(lambda mm: loss_fn(mm, *args, **kwargs), nnx.Intermediate,
                       init=perturbations)(m)

  (loss, sown), (grads, score_grads) = nnx.value_and_grad(
      wrapped, argnums=(0, 1), has_aux=True)(module, zeros)
  return loss, grads, flatten(score_grads), flatten(sown)
