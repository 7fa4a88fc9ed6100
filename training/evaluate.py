"""Token-weighted evaluation of a model over a stream of batches, and the reported metrics."""

from __future__ import annotations

import math
from typing import Iterable

import jax
import numpy as np

from training import distributed
from training.progress import DEFAULT_INTERVAL, Progress


def summarize(loss_sum: float, weight: float, metric: str, correct: float | None = None) -> dict:
  """Mean NLL (nats/token) and the task's metric: perplexity, bits per character or accuracy."""
  loss = loss_sum / max(weight, 1.0)
  out = {'loss': loss, 'tokens': int(weight) if math.isfinite(weight) else weight}
  if metric == 'perplexity':
    out['perplexity'] = math.exp(min(loss, 700.0))
  elif metric == 'bpc':
    out['bpc'] = loss / math.log(2)
  elif metric == 'accuracy':
    out['accuracy'] = (correct or 0.0) / max(weight, 1.0)
  return out


def _num_batches(batches, max_batches: int) -> int | None:
  """How many batches `evaluate` will see: `len(batches)` capped by `max_batches`, else None."""
  try:
    n = len(batches)  # type: ignore[arg-type]
  except TypeError:
    return max_batches if max_batches >= 0 else None
  return n if max_batches < 0 else min(n, max_batches)


def evaluate(eval_step, params, batches: Iterable[dict], mesh, *, metric: str,
             max_batches: int = -1, progress: bool = False, desc: str = 'eval',
             progress_interval: float = DEFAULT_INTERVAL) -> dict:
  """Runs `eval_step` over `batches` (at most `max_batches`; −1 = all) and sums on the host.

  `progress` reports batches done on stderr (process 0 only): a tqdm bar on a terminal, else a
  plain line at most every `progress_interval` seconds and a final one; the total is known
  when `batches` has a `len()` or `max_batches` is given.
  """
  totals: dict[str, float] = {}
  pending = []
  with Progress(desc, _num_batches(batches, max_batches), unit='batches',
                interval=progress_interval,
                enabled=progress and jax.process_index() == 0) as bar:
    for i, batch in enumerate(batches):
      if 0 <= max_batches <= i:
        break
      pending.append(eval_step(params, distributed.global_batch(batch, mesh)))
      if len(pending) >= 16:  # bounded number of in-flight results
        for k, v in jax.device_get(pending.pop(0)).items():
          totals[k] = totals.get(k, 0.0) + float(np.asarray(v, np.float64))
      bar.update()
    for out in jax.device_get(pending):
      for k, v in out.items():
        totals[k] = totals.get(k, 0.0) + float(np.asarray(v, np.float64))
  if not totals:
    raise ValueError('evaluation saw no batches: the split is empty')
  return summarize(totals['loss_sum'], totals['weight'], metric, totals.get('correct'))


def peak_memory_bytes() -> int | None:
  """The most device memory this process has held at once (the allocator's
  `peak_bytes_in_use`, the largest over the local devices), or None where the backend does not
  report it: `memory_stats()` is None on CPU."""
  peaks = []
  for device in jax.local_devices():
    stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
    if not stats or 'peak_bytes_in_use' not in stats:
      return None
    peaks.append(int(stats['peak_bytes_in_use']))
  return max(peaks) if peaks else None
