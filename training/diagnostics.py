"""Rank collapse and gradient norms logged during training (`diagnostics.every=N`).

Every N updates (and after the last one) the run measures, on a fixed set of validation
sequences, what `eval.py --analysis=collapse` measures on a checkpoint (analysis/report.py:
`collapse`): per layer of each stack the relative residual ‖H − rank1(H)‖_F / ‖H‖_F, Dong et
al.'s composite-norm residual (absolute and relative), the mean pairwise cosine of token states,
and the gradient norms ‖∂L/∂W_Q‖ and ‖∂L/∂scores‖; for a language model also the same for its
pure attention stack (no skip, no FFN). Dong, Cordonnier & Loukas 2021, "Attention is Not All
You Need: Pure Attention Loses Rank Doubly Exponentially with Depth", arXiv:2103.03404; Heo &
Choi 2024, "Generalized Probabilistic Attention Mechanism in Transformers", arXiv:2410.15578,
§5.2 and Fig. 4, which track these quantities over depth.

Each measurement is one `"split": "diagnostics"` line of `W/metrics.jsonl` with the keys
`<stack>/<metric>/layer<l>` (stacks: `self` and `pure_attention` for an LM; `encoder`,
`decoder` and `cross` for translation; layers 1-based), and the same scalars in TensorBoard
under `diagnostics/`. The sequences are the first `diagnostics.examples` of the validation split
(no context; for translation, the first sentences), the same at every measurement, and dropout
is off, so a curve shows how the trained parameters change, not the batch.

The measurement runs the model outside the jitted train step, from the parameters gathered on
the host, with the analysis library's own forward pass: the training step is not changed. It is
refused in a run of several processes (the parameters of one process are then not the whole
model); run `eval.py --analysis=collapse` on its checkpoints instead.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

SPLIT = 'diagnostics'


def options(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(every, examples) of `config.diagnostics`; every = 0 when the config has none."""
  d = config.get('diagnostics')
  if d is None:
    return 0, 0
  return int(d.every), int(d.examples)


def check(config: ml_collections.ConfigDict, process_count: int) -> None:
  """Raises a one-line ValueError for diagnostics options this run cannot follow."""
  every, examples = options(config)
  if every < 0:
    raise ValueError(f'diagnostics.every={every}: expected a number of updates ≥ 1, or 0 (off)')
  if every and examples < 1:
    raise ValueError(f'diagnostics.examples={examples}: expected at least 1 validation sequence')
  if every and process_count > 1:
    raise ValueError(f'diagnostics.every={every} runs in a single process only (this run has '
                     f'{process_count}); set diagnostics.every=0 and run eval.py '
                     '--analysis=collapse on the checkpoints')


def flatten(stacks: dict[str, dict[str, list]]) -> dict[str, float]:
  """`{stack: {metric: [per layer]}}` → `{'<stack>/<metric>/layer<l>': value}`; a missing value
  (None) becomes NaN, which the metric log writes as null."""
  out = {}
  for stack, metrics in stacks.items():
    for metric, values in metrics.items():
      for layer, value in enumerate(values, start=1):
        out[f'{stack}/{metric}/layer{layer}'] = math.nan if value is None else float(value)
  return out


class Diagnostics:
  """Measures the collapse metrics of the current parameters on fixed validation sequences."""

  def __init__(self, config: ml_collections.ConfigDict, data, graphdef: Any, rest: Any):
    from analysis import inputs as inputs_lib  # pylint: disable=g-import-not-at-top
    self.every, examples = options(config)
    self._graphdef, self._rest = graphdef, rest
    translation = config.task == 'translation'
    self._batches = (inputs_lib.split_batches(data, config, 'valid', examples, translation)
                     if self.every else [])

  def due(self, step: int, is_last: bool) -> bool:
    return bool(self.every) and (step % self.every == 0 or is_last)

  def measure(self, params: Any) -> dict[str, float]:
    """The flattened metrics (`flatten`) of `params`, averaged over the fixed sequences."""
    from flax import nnx  # pylint: disable=g-import-not-at-top
    from analysis import report  # pylint: disable=g-import-not-at-top
    host = jax.tree.map(jnp.asarray, jax.device_get(params))  # one device
    model = nnx.merge(self._graphdef, host, self._rest)
    out = report.collapse(model, self._batches, name=SPLIT, meta={})
    return flatten(out.summary['stacks'])
