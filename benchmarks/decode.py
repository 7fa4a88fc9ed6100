"""Decoding speed: sentences per second of greedy and beam search, cached vs recomputed prefix.

    python benchmarks/decode.py                                   # IWSLT14 small shapes, CPU
    python benchmarks/decode.py --config=configs/wmt14.py:size=paper --batch=64 --beam=4

A model of the config's shape (random weights, or a workdir's checkpoint with --workdir) decodes
`--batch` random source sentences of `--source_len` tokens. Every hypothesis is forced to exactly
`--output_len` tokens before EOS (min length = max length), so both modes do the same amount of
search whatever the weights. For each search (greedy, beam `--beam`) and each decoder mode
(`incremental`: key/value cache, one token per step; `recompute`: the decoder over the whole
prefix buffer every step), the compiled search runs `--repeats` times after a warm-up; the
median wall time gives sentences per second. Before timing, both modes' outputs are compared
(identical tokens expected). Results are printed and written to
benchmarks/results/decode-<platform>.{json,md}.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))

_CONFIG = config_flags.DEFINE_config_file(
    'config', str(_REPO / 'configs' / 'iwslt14.py') + ':size=small',
    'Translation config whose model shape to decode with (configs/iwslt14.py or wmt14.py).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Optional training workdir: decode with its '
                               'last checkpoint (and its config) instead of random weights.')
_BATCH = flags.DEFINE_integer('batch', 32, 'Sentences decoded together.')
_SOURCE_LEN = flags.DEFINE_integer('source_len', 30, 'Source tokens per sentence (with EOS).')
_OUTPUT_LEN = flags.DEFINE_integer('output_len', 100, 'Output tokens per hypothesis before EOS.')
_BEAM = flags.DEFINE_integer('beam', 5, 'Beam size of the beam-search rows.')
_VOCAB = flags.DEFINE_integer('vocab', 8848, 'Source and target vocabulary size with random '
                              'weights (IWSLT14 de-en fairseq dictionaries: 8,848 / 6,632).')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per row (the median is reported).')
_OUT = flags.DEFINE_string('out', None, 'Output stem; default benchmarks/results/decode-<platform>.')

BOS, PAD, EOS = 2, 1, 2   # fairseq: the decoder starts from </s>


def _model(config):
  import jax  # pylint: disable=g-import-not-at-top
  from training import builders  # pylint: disable=g-import-not-at-top
  from training import checkpoints as ckpt_lib, distributed, workdir as wd  # pylint: disable=g-import-not-at-top

  if _WORKDIR.value:
    config = wd.load_config(Path(_WORKDIR.value))   # vocabulary sizes recorded by train.py
  else:
    config.model.src_vocab_size = config.model.tgt_vocab_size = _VOCAB.value
  model = builders.build_model(config)
  graphdef, params, rest = builders.split_model(model)
  if _WORKDIR.value:
    mesh = distributed.data_mesh()
    ckpts = ckpt_lib.Checkpoints(Path(_WORKDIR.value) / 'checkpoints', keep=1, read_only=True)
    step = ckpts.resolve('last')
    params = ckpts.restore_params(step, builders.abstract_params(params, mesh))
  return config, graphdef, rest, jax.device_put(params)


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from training import translate  # pylint: disable=g-import-not-at-top

  config, graphdef, rest, params = _model(_CONFIG.value)
  rng = np.random.default_rng(0)
  vocab = config.model.src_vocab_size
  source = rng.integers(4, vocab, size=(_BATCH.value, _SOURCE_LEN.value)).astype(np.int32)
  source[:, -1] = EOS
  n_out = _OUTPUT_LEN.value
  max_lens = np.full((_BATCH.value,), n_out, np.int32)
  rows, outputs = [], {}
  for beam in (1, _BEAM.value):
    for mode in ('incremental', 'recompute'):
      settings = translate.DecodeSettings(beam_size=beam, min_len=n_out, max_len_a=0.0,
                                          max_len_b=n_out, mode=mode)
      search = translate.make_search(graphdef, rest, settings, bos_id=BOS, eos_id=EOS,
                                     pad_id=PAD)
      run = lambda: jax.block_until_ready(search(params, source, max_lens, max_len=n_out + 1))
      start = time.perf_counter()
      tokens, lengths = run()
      compile_s = time.perf_counter() - start
      outputs[(beam, mode)] = np.asarray(tokens)
      assert (np.asarray(lengths) == n_out + 1).all(), 'every hypothesis should have the forced length'
      times = []
      for _ in range(_REPEATS.value):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
      median = statistics.median(times)
      row = {'search': 'greedy' if beam == 1 else f'beam {beam}', 'mode': mode,
             'sentences_per_s': _BATCH.value / median, 'median_s': median,
             'first_call_s': compile_s, 'times_s': times}
      rows.append(row)
      print(json.dumps(row), flush=True)
    same = np.array_equal(outputs[(beam, 'incremental')], outputs[(beam, 'recompute')])
    print(f'beam {beam}: incremental and recompute outputs identical: {same}', flush=True)
    rows[-1]['identical_to_incremental'] = bool(same)
  speedups = {}
  for search in sorted({r['search'] for r in rows}):
    by_mode = {r['mode']: r for r in rows if r['search'] == search}
    speedups[search] = by_mode['recompute']['median_s'] / by_mode['incremental']['median_s']
  m = config.model
  result = {
      'rows': rows, 'incremental_speedup': speedups,
      'protocol': {'batch': _BATCH.value, 'source_len': _SOURCE_LEN.value, 'output_len': n_out,
                   'beam': _BEAM.value, 'repeats': _REPEATS.value,
                   'model': {k: m[k] for k in ('encoder_layers', 'decoder_layers', 'd_model',
                                               'num_heads', 'd_ff', 'src_vocab_size',
                                               'tgt_vocab_size')},
                   'attention': config.attention.kind,
                   'weights': 'checkpoint' if _WORKDIR.value else 'random'},
      'machine': {'platform': jax.devices()[0].platform, 'device': str(jax.devices()[0]),
                  'device_count': jax.device_count(), 'cpu': platform.processor() or
                  platform.machine(), 'jax': jax.__version__},
      'command': 'python benchmarks/decode.py ' + ' '.join(sys.argv[1:]),
  }
  stem = Path(_OUT.value) if _OUT.value else (
      _REPO / 'benchmarks' / 'results' / f'decode-{jax.devices()[0].platform}')
  stem.parent.mkdir(parents=True, exist_ok=True)
  stem.with_suffix('.json').write_text(json.dumps(result, indent=2) + '\n')
  lines = ['| search | decoder | sentences/s | median s | speed-up of the cache |',
           '|---|---|---:|---:|---:|']
  for r in rows:
    speed = f'{speedups[r["search"]]:.1f}×' if r['mode'] == 'incremental' else ''
    lines.append(f'| {r["search"]} | {r["mode"]} | {r["sentences_per_s"]:.2f} | '
                 f'{r["median_s"]:.3f} | {speed} |')
  stem.with_suffix('.md').write_text('\n'.join(lines) + '\n')
  print('\n'.join(lines))
  print('incremental speed-up at output length', n_out, json.dumps(speedups))


if __name__ == '__main__':
  app.run(main)
