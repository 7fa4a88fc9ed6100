"""Attention kernels against sequence length: ours (Pallas), XLA, cuDNN and tokamax.

    python benchmarks/kernels.py                      # on a GPU: the full table (≈10 minutes)
    python benchmarks/kernels.py --lengths=1024,8192 --head_dims=128 --causal=false
    python benchmarks/kernels.py --smoke              # any machine: tiny shapes, checks the script

For each sequence length T, head dim H, causal or not (bfloat16 by default, B·N = `--heads`
heads of one example), every implementation that runs on this backend is timed:

- `pallas`: our flash kernel (attention/kernels/flash.py);
- `xla`: `jax.nn.dot_product_attention(implementation='xla')` (materialises T×T);
- `cudnn`: `jax.nn.dot_product_attention(implementation='cudnn')` (NVIDIA GPUs);
- `tokamax`: `tokamax.dot_product_attention` (when the optional package is installed).

and, for our kernels only, the cases the kernels exist for:

- `dagpam-fused` vs `softmax`: the fused two-map kernel against one softmax call (the target
  is ≤ 1.5×; two separate softmax calls cost about 2×);
- `local-512`: causal local window of 512 keys, block-sparse, against dense causal (speed-up vs
  the ratio of computed tiles);
- `topk` and `sea` (k = 64): peak memory against T (linear is the target).

Each row gives the median wall time over `--repeats` calls after a warm-up (forward, and
forward+backward: the gradient of Σ out·g with respect to q, k, v), the achieved TFLOP/s
(FlashAttention's count: 4·T·S·H per head forward, halved when causal; backward 2.5× the
forward) and the peak memory (the allocator's peak on GPU; XLA's buffer assignment elsewhere).
A case stops growing T once it fails (out of memory) or exceeds `--time_limit_s`.
Writes `<out>/kernels-<backend>.json` and `.md`.
"""

from __future__ import annotations

import functools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

_LENGTHS = flags.DEFINE_list('lengths', ['1024', '2048', '4096', '8192', '16384', '32768'],
                             'Sequence lengths T (= S).')
_HEAD_DIMS = flags.DEFINE_list('head_dims', ['64', '128'], 'Head widths H.')
_CAUSAL = flags.DEFINE_list('causal', ['false', 'true'], 'Causal masking: false, true or both.')
_HEADS = flags.DEFINE_integer('heads', 16, 'Heads N (batch 1).')
_DTYPE = flags.DEFINE_enum('dtype', 'bfloat16', ['bfloat16', 'float16', 'float32'],
                           'q, k, v dtype.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed calls per case (the median is reported).')
_TIME_LIMIT = flags.DEFINE_float('time_limit_s', 5.0,
                                 'Stop growing T for a case after a call slower than this.')
_IMPLS = flags.DEFINE_list('impls', ['pallas', 'xla', 'cudnn', 'tokamax'],
                           'Softmax implementations to compare.')
_EXTRA = flags.DEFINE_list('extra', ['dagpam', 'local', 'topk', 'sea'],
                           'Our other kernels: dagpam (fused vs softmax), local (block-sparse '
                           'window 512), topk, sea (memory against T).')
_SMOKE = flags.DEFINE_bool('smoke', False, 'Tiny shapes (T = 64, 128; H = 64): check the script '
                           'on any machine, the CPU interpreter included.')
_OUT = flags.DEFINE_string('out', 'benchmarks/results', 'Folder for the result files.')


def _flops(t: int, h: int, heads: int, causal: bool, backward: bool) -> float:
  forward = 4.0 * t * t * h * heads * (0.5 if causal else 1.0)
  return forward * (3.5 if backward else 1.0)


def _measure(fn, args, repeats: int):
  """(median seconds, peak bytes) of a jitted call."""
  import jax  # pylint: disable=import-outside-toplevel
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  device = jax.devices()[0]
  stats = device.memory_stats() if hasattr(device, 'memory_stats') else None
  if stats and 'peak_bytes_in_use' in stats:
    peak = stats['peak_bytes_in_use']
  else:
    m = compiled.memory_analysis()
    peak = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
            - m.alias_size_in_bytes)
  return statistics.median(times), peak


def _softmax_fn(impl: str, causal: bool, window=None):
  import jax  # pylint: disable=import-outside-toplevel
  from attention import masks  # pylint: disable=import-outside-toplevel
  from attention.kernels import flash  # pylint: disable=import-outside-toplevel
  if impl == 'pallas':
    mask = masks.causal() if causal else None
    if window is not None:
      mask = masks.local_window(window)
    return lambda q, k, v: flash.flash_attention(q, k, v, mask)[0]
  if impl == 'tokamax':
    import tokamax  # pylint: disable=import-outside-toplevel
    kwargs = {'is_causal': causal}
    if window is not None:
      kwargs['local_window_size'] = (window, 0)
    return lambda q, k, v: tokamax.dot_product_attention(q, k, v, **kwargs)
  kwargs = {'is_causal': causal, 'implementation': impl}
  if window is not None:
    kwargs['local_window_size'] = (window, 0)
  return functools.partial(jax.nn.dot_product_attention, **kwargs)


def _with_backward(fn):
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  def loss(q, k, v, g):
    return jnp.sum(fn(q, k, v).astype(jnp.float32) * g)

  return jax.grad(loss, (0, 1, 2))


def _available(impl: str, backend: str) -> str | None:
  """None if `impl` runs here, else why not."""
  if impl == 'cudnn' and backend != 'gpu':
    return 'needs an NVIDIA GPU'
  if impl == 'tokamax':
    try:
      import tokamax  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      return 'tokamax not installed'
    from absl import flags as absl_flags  # pylint: disable=import-outside-toplevel
    if not absl_flags.FLAGS.is_parsed():
      absl_flags.FLAGS.mark_as_parsed()
  return None


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from attention.kernels import flash  # pylint: disable=import-outside-toplevel
  from attention import masks  # pylint: disable=import-outside-toplevel

  backend = jax.default_backend()
  lengths = [64, 128] if _SMOKE.value else [int(x) for x in _LENGTHS.value]
  head_dims = [64] if _SMOKE.value else [int(x) for x in _HEAD_DIMS.value]
  heads = 2 if _SMOKE.value else _HEADS.value
  dtype = jnp.dtype(_DTYPE.value if backend != 'cpu' else 'float32')
  repeats = 1 if _SMOKE.value else _REPEATS.value
  rows, skipped = [], []

  def inputs(t, h, width=None):
    keys = jax.random.split(jax.random.key(0), 4)
    shape = (1, t, heads, h)
    q, k, v = (jax.random.normal(x, shape, jnp.float32).astype(dtype) for x in keys[:3])
    g = jax.random.normal(keys[3], (1, t, heads, width or h), jnp.float32)
    return q, k, v, g

  def run(case, impl, t, h, causal, fn, backward, note=''):
    q, k, v, g = inputs(t, h)
    args = (q, k, v, g) if backward else (q, k, v)
    f = _with_backward(fn) if backward else fn
    try:
      seconds, peak = _measure(f, args, repeats)
    except Exception as e:  # pylint: disable=broad-except
      skipped.append(f'{case} {impl} T={t} H={h} causal={causal} '
                     f'{"fwd+bwd" if backward else "fwd"}: {type(e).__name__}: '
                     f'{str(e).splitlines()[0][:160] if str(e) else ""}')
      print('  skipped:', skipped[-1], flush=True)
      return None
    row = {'case': case, 'impl': impl, 'T': t, 'H': h, 'causal': causal,
           'pass': 'fwd+bwd' if backward else 'fwd', 'ms': seconds * 1e3,
           'tflops': _flops(t, h, heads, causal, backward) / seconds / 1e12,
           'peak_mib': peak / 2 ** 20, 'note': note}
    rows.append(row)
    print(f"{case:>14} {impl:>8} T={t:>6} H={h:>3} {'causal' if causal else 'full':>6} "
          f"{row['pass']:>7}: {row['ms']:9.3f} ms {row['tflops']:7.1f} TFLOP/s "
          f"{row['peak_mib']:9.1f} MiB {note}", flush=True)
    return row

  causal_values = [c.lower() == 'true' for c in _CAUSAL.value]
  for h in head_dims:
    for causal in causal_values:
      for impl in _IMPLS.value:
        why = _available(impl, backend)
        if why:
          skipped.append(f'softmax {impl}: {why}')
          continue
        for backward in (False, True):
          for t in lengths:
            row = run('softmax', impl, t, h, causal, _softmax_fn(impl, causal), backward)
            if row is None or row['ms'] / 1e3 > _TIME_LIMIT.value:
              break

  extra = set(_EXTRA.value)
  h = head_dims[-1]
  for t in lengths:
    if 'dagpam' in extra:
      def fused(q, k, v):
        q_neg = -jax.nn.relu(q)
        return flash.two_map_attention(q, k, q_neg, None, v, 1.5, 0.5, masks.causal())[0]
      run('dagpam-fused', 'pallas', t, h, True, fused, False)
      run('dagpam-fused', 'pallas', t, h, True, fused, True)
    if 'local' in extra and t >= 2048:
      window = 512
      summary = flash.block_summary(masks.local_window(window), t, t, 64, 64)
      causal_summary = flash.block_summary(masks.causal(), t, t, 64, 64)
      ratio = (summary != 0).sum() / (causal_summary != 0).sum()
      run('local-512', 'pallas', t, h, True, _softmax_fn('pallas', True, window), False,
          note=f'computed tiles {ratio:.3f} of causal')
    for kind in ('topk', 'sea'):
      if kind not in extra:
        continue
      from attention.registry import make_core  # pylint: disable=import-outside-toplevel
      options = ({'k': 64, 'query_chunk_size': 512} if kind == 'topk' else
                 {'predictor_length': 128, 'k': 64, 'distill': False, 'inference': 'chunked'})
      core = make_core(kind, num_heads=heads, head_dim=h, impl='pallas', max_len=max(lengths),
                       **options)
      run(kind, 'pallas', t, h, True,
          lambda q, k, v, core=core: core(q, k, v, masks.causal()), True)

  out = Path(_OUT.value)
  out.mkdir(parents=True, exist_ok=True)
  name = f'kernels-{backend}' + ('-smoke' if _SMOKE.value else '')
  meta = {'backend': backend, 'device': str(jax.devices()[0].device_kind), 'jax': jax.__version__,
          'dtype': dtype.name, 'heads': heads, 'batch': 1, 'repeats': repeats,
          'command': 'python benchmarks/kernels.py ' + ' '.join(sys.argv[1:])}
  (out / f'{name}.json').write_text(json.dumps({'meta': meta, 'rows': rows,
                                                'skipped': skipped}, indent=1))
  lines = [f"# Attention kernels on {meta['device']} ({backend}, jax {jax.__version__}, "
           f"{dtype.name}, batch 1 × {heads} heads)", '', f"`{meta['command']}`", '',
           '| case | impl | T | H | mask | pass | ms | TFLOP/s | peak MiB | note |',
           '|---|---|---:|---:|---|---|---:|---:|---:|---|']
  for r in rows:
    lines.append(f"| {r['case']} | {r['impl']} | {r['T']} | {r['H']} | "
                 f"{'causal' if r['causal'] else 'full'} | {r['pass']} | {r['ms']:.3f} | "
                 f"{r['tflops']:.1f} | {r['peak_mib']:.1f} | {r['note']} |")
  if skipped:
    lines += ['', 'Not run:', ''] + [f'- {s}' for s in skipped]
  (out / f'{name}.md').write_text('\n'.join(lines) + '\n')
  print(f'wrote {out / name}.json and .md')


if __name__ == '__main__':
  app.run(main)
