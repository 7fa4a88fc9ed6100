"""Timing helpers the benchmarks share: the machine a figure was measured on, and timing several
variants in turns (the order rotating round by round, so that a change of machine load hits
every variant alike), which is how the CPU comparisons with PyTorch are measured.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import time
from pathlib import Path
from typing import Callable


def machine() -> dict:
  """What the figures were measured on: CPU model, cores, load, library versions."""
  import jax  # pylint: disable=g-import-not-at-top
  model = platform.processor() or platform.machine()
  info = {}
  try:
    for line in Path('/proc/cpuinfo').read_text().splitlines():
      key, _, value = line.partition(':')
      info.setdefault(key.strip(), value.strip())  # the first processor's
  except OSError:
    pass
  model = info.get('model name', model)
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  out = {'cpu': model, 'cores': cores}
  # Two machines that both call themselves "AMD EPYC" can be CPU generations apart (family 25
  # is Zen 3/4, 26 Zen 5); the widest vector extension matters most to XLA's CPU kernels.
  if 'cpu family' in info:
    out['cpu_family_model'] = f"{info['cpu family']}/{info.get('model', '?')}"
  flags = set(info.get('flags', '').split())
  if flags:
    out['vector_isa'] = next((isa for isa in ('avx512f', 'avx2', 'avx', 'sse4_2') if isa in flags),
                             'other')
  return {**out, 'jax': jax.__version__, 'jaxlib': importlib.metadata.version('jaxlib'),
          'load_average_1min_at_start': os.getloadavg()[0]}


def time_in_turns(runners: dict[str, Callable[[], None]], rounds: int,
                  steps: int, warmup: int = 0) -> dict[str, list[list[float]]]:
  """Seconds per call of each runner, `[round][step]`, the runners taking turns round by round
  in an order that rotates, so that a change of machine load hits every runner alike; each
  turn starts with `warmup` untimed calls."""
  names = list(runners)
  for run in list(runners.values()) * 2:  # warm caches and allocators
    run()
  times = {name: [] for name in names}
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      this_round = []
      for _ in range(warmup):
        runners[name]()
      for _ in range(steps):
        t = time.perf_counter()
        runners[name]()
        this_round.append(time.perf_counter() - t)
      times[name].append(this_round)
  return times
