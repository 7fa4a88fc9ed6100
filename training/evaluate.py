"""Token-weighted evaluation of a model over a stream of batches, and the reported metrics."""

from __future__ import annotations

import math
from typing import Iterable

import jax
import numpy as np
from tqdm import tqdm

from training import distributed


def summarize(loss_sum: float, weight: float, metric: str, correct: float | None = None) -> dict:
  """Mean NLL (nats/token) and the task's metric: perplexity, bits per character or accuracy."""
  loss = loss_sum / max(weight, 1.0)
  out = {'loss': loss, 'tokens': int(weight)}
  if metric == 'perplexity':
    out['perplexity'] = math.exp(min(loss, 700.0))
  elif metric == 'bpc':
    out['bpc'] = loss / math.log(2)
  elif metric == 'accuracy':
    out['accuracy'] = (correct or 0.0) / max(weight, 1.0)
  return out


def evaluate(eval_step, params, batches: Iterable[dict], mesh, *, metric: str,
             max_batches: int = -1, progress: bool = False, desc: str = 'eval') -> dict:
  """Runs `eval_step` over `batches` (at most `max_batches`; −1 = all) and sums on the host."""
  totals: dict[str, float] = {}
  pending = []
  for i, batch in enumerate(tqdm(batches, desc=desc, disable=not progress, leave=False)):
    if 0 <= max_batches <= i:
      break
    pending.append(eval_step(params, distributed.global_batch(batch, mesh)))
    if len(pending) >= 16:  # bounded number of in-flight results
      for k, v in jax.device_get(pending.pop(0)).items():
        totals[k] = totals.get(k, 0.0) + float(np.asarray(v, np.float64))
  for out in jax.device_get(pending):
    for k, v in out.items():
      totals[k] = totals.get(k, 0.0) + float(np.asarray(v, np.float64))
  if not totals:
    raise ValueError('evaluation saw no batches: the split is empty')
  return summarize(totals['loss_sum'], totals['weight'], metric, totals.get('correct'))
