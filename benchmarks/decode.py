"""Decoding speed: sentences per second of greedy and beam search, cached vs recomputed prefix;
and a whole test set with exact batch shapes vs decode buckets.

    python benchmarks/decode.py                                   # IWSLT14 small shapes, CPU
    python benchmarks/decode.py --config=configs/wmt14.py:size=paper --batch=64 --beam=4
    python benchmarks/decode.py --config=configs/wmt14.py:size=small --test_set=newstest2014 \
        [--max_sentences=N] [--workdir=W]

**Search rows** (without --test_set). A model of the config's shape (random weights, or a
workdir's checkpoint with --workdir) decodes `--batch` random source sentences of `--source_len`
tokens. Every hypothesis is forced to exactly `--output_len` tokens before EOS (min length = max
length), so both modes do the same amount of search whatever the weights. For each search
(greedy, beam `--beam`) and each decoder mode (`incremental`: key/value cache, one token per
step; `recompute`: the decoder over the whole prefix buffer every step), the compiled search
runs `--repeats` times after a warm-up; the median wall time gives sentences per second. Before
timing, both modes' outputs are compared (identical tokens expected). Results are printed and
written to benchmarks/results/decode-<platform>.{json,md}.

**Test-set row** (--test_set). `training/translate.py`'s `Translator` decodes the test set (a
split of the config's data, or one of its files: `newstest2014` is the `test` split of
configs/wmt14.py) twice in one process, with the config's decode protocol (WMT14: beam 4, GNMT
α 0.6, output ≤ source + 50): first with the exact shapes of the data layer's batches
(`decode.length_buckets=()`, the path before buckets), then with the config's decode buckets.
Each path starts from a fresh jitted search and JAX's persistent compilation cache is off, so
each pays for every compilation it needs, as `eval.py` does in a fresh process. Reported per
path: wall time of `translate()` (everything a user waits for), sentences/s, the number of
compilations and their seconds (JAX's trace, lowering and XLA compile events), and whether the
two paths' hypotheses are identical. Results go to
benchmarks/results/decode-<test set>[-first<N>]-<platform>.{json,md}.

What is fair here: with random weights EOS is almost never chosen, so every hypothesis runs to
its limit `max_len_a·|src| + max_len_b` (the output reports the mean output length and the mean
limit). That is the most search per sentence the protocol allows, the same in both paths; a
trained model stops near the reference length, so it searches less and compilation is a larger
share of its time. The random-weight ratio is therefore the least favourable to buckets on this
measure. A checkpoint (--workdir) gives the ratio for real outputs.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))
from benchmarks import timing  # noqa: E402  pylint: disable=g-import-not-at-top

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
_TEST_SET = flags.DEFINE_string(
    'test_set', None, 'Decode a whole test set of the config\'s data with exact batch shapes and '
    'with decode buckets, side by side: a split (valid, test) or one of its files '
    '(newstest2014 for configs/wmt14.py). Replaces the search rows.')
_MAX_SENTENCES = flags.DEFINE_integer('max_sentences', None, 'With --test_set: only the first N '
                                      'sentences of the test set (file order).')

BOS, PAD, EOS = 2, 1, 2   # fairseq: the decoder starts from </s>


def _model(config):
  from training import builders  # pylint: disable=g-import-not-at-top
  from training import workdir as wd  # pylint: disable=g-import-not-at-top

  if _WORKDIR.value:
    config = wd.load_config(Path(_WORKDIR.value))   # vocabulary sizes recorded by train.py
  else:
    config.model.src_vocab_size = config.model.tgt_vocab_size = _VOCAB.value
  model = builders.build_model(config)
  graphdef, params, rest = builders.split_model(model)
  return config, graphdef, rest, _restore(params)


def _restore(params):
  """The workdir's last checkpoint into `params`' structure, or `params` (random weights)."""
  import jax  # pylint: disable=g-import-not-at-top
  from training import builders  # pylint: disable=g-import-not-at-top
  from training import checkpoints as ckpt_lib, distributed  # pylint: disable=g-import-not-at-top

  if _WORKDIR.value:
    mesh = distributed.data_mesh()
    ckpts = ckpt_lib.Checkpoints(Path(_WORKDIR.value) / 'checkpoints', keep=1, read_only=True)
    step = ckpts.resolve('last')
    params = ckpts.restore_params(step, builders.abstract_params(params, mesh))
  return jax.device_put(params)


def _stem(default: str) -> Path:
  stem = Path(_OUT.value) if _OUT.value else _REPO / 'benchmarks' / 'results' / default
  stem.parent.mkdir(parents=True, exist_ok=True)
  return stem


def main(argv):
  del argv
  if _TEST_SET.value:
    return run_test_set()
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
      'machine': _machine(),
      'command': 'python benchmarks/decode.py ' + ' '.join(sys.argv[1:]),
  }
  stem = _stem(f'decode-{jax.devices()[0].platform}')
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


# ---------------------------------------------------------------------------- the test-set row

_COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                   '/jax/core/compile/jaxpr_to_mlir_module_duration',
                   '/jax/core/compile/backend_compile_duration')


def _test_split(config, name: str) -> str:
  """The split of the config's data that `--test_set` names: a split, or a file of one."""
  if name in ('valid', 'test'):
    return name
  for split in ('test', 'valid'):
    entries = config.data[split]
    entries = (entries,) if isinstance(entries, str) else tuple(entries)
    if name in entries:
      return split
  raise ValueError(f'--test_set={name!r} is neither valid, test nor one of their files in the '
                   f'config (test: {list(config.data.test)}, valid: {list(config.data.valid)})')


class _LengthRecorder:
  """The data, recording how many tokens before EOS each hypothesis it turns into text has."""

  def __init__(self, data):
    self._data, self.lengths = data, []

  def __getattr__(self, name):
    return getattr(self._data, name)

  def postprocess(self, ids):
    self.lengths.append(len(ids))
    return self._data.postprocess(ids)


def _decode_path(name, settings, config, data, graphdef, rest, params, split, compile_s):
  """One path's row: wall time of `Translator.translate` from a fresh jitted search."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from training import distributed, translate  # pylint: disable=g-import-not-at-top

  recorder = _LengthRecorder(data)
  translator = translate.Translator(graphdef, rest, recorder, settings,
                                    max_positions=config.model.max_len,
                                    mesh=distributed.data_mesh())
  load_before, compile_before = os.getloadavg()[0], compile_s[0]
  start = time.perf_counter()
  hypotheses = translator.translate(params, split, max_sentences=_MAX_SENTENCES.value)
  wall = time.perf_counter() - start
  compiling = compile_s[0] - compile_before
  row = {'path': name, 'sentences': len(hypotheses), 'wall_s': wall,
         'sentences_per_s': len(hypotheses) / wall, 'compilations': len(translator.compiled),
         'compile_s': compiling, 'search_s': wall - compiling,
         'mean_output_tokens': float(np.mean(recorder.lengths)),
         'length_buckets': list(settings.length_buckets), 'batch_sizes': list(settings.batch_sizes),
         'shapes': [list(s) for s in translator.compiled],
         'load_average': [load_before, os.getloadavg()[0]]}
  print(json.dumps({k: v for k, v in row.items() if k != 'shapes'}), flush=True)
  return row, hypotheses


def run_test_set():
  """The test-set row (module docstring): exact shapes vs decode buckets, side by side."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax import monitoring  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  from models import decoding  # pylint: disable=g-import-not-at-top
  from training import builders, translate, workdir as wd  # pylint: disable=g-import-not-at-top

  # Every compilation is paid and counted, as in a fresh eval.py without a warm cache.
  jax.config.update('jax_enable_compilation_cache', False)
  compile_s = [0.0]

  def on_event(event, seconds, **_):
    if event in _COMPILE_EVENTS:
      compile_s[0] += seconds

  monitoring.register_event_duration_secs_listener(on_event)
  config = wd.load_config(Path(_WORKDIR.value)) if _WORKDIR.value else _CONFIG.value
  try:
    split = _test_split(config, _TEST_SET.value)
  except ValueError as e:
    sys.exit(f'error: {e}')
  data = builders.build_data(config)   # fills the vocabulary sizes in
  graphdef, params, rest = builders.split_model(builders.build_model(config))
  params = _restore(params)
  settings = translate.DecodeSettings.from_config(
      config.decode, beam_size=_BEAM.value if flags.FLAGS['beam'].present else None)
  if not settings.length_buckets:   # the config asks for exact shapes: compare with the defaults
    defaults = common.decode_config()
    settings = dataclasses.replace(settings, length_buckets=tuple(defaults.length_buckets),
                                   batch_sizes=tuple(defaults.batch_sizes))
  buckets = settings.length_buckets
  jax.block_until_ready(jax.jit(lambda x: x + 1)(np.zeros(2)))   # the backend is up before timing
  rows, outputs = [], {}
  for name, path_buckets in (('exact shapes', ()), ('decode buckets', buckets)):
    path_settings = dataclasses.replace(settings, length_buckets=path_buckets)
    row, outputs[name] = _decode_path(name, path_settings, config, data, graphdef, rest, params,
                                      split, compile_s)
    rows.append(row)
  exact, bucketed = outputs['exact shapes'], outputs['decode buckets']
  differ = sum(a != b for a, b in zip(exact, bucketed))
  n = len(exact)
  limits = decoding.max_output_lengths(data.source_lengths(split)[:n], a=settings.max_len_a,
                                       b=settings.max_len_b, cap=config.model.max_len - 1)
  speedup = rows[0]['wall_s'] / rows[1]['wall_s']
  print(f'hypotheses identical: {differ == 0} ({differ} of {n} differ); decode buckets '
        f'{speedup:.2f}x faster; mean output {rows[1]["mean_output_tokens"]:.1f} tokens, mean '
        f'limit {limits.mean():.1f}', flush=True)
  m = config.model
  weights = 'checkpoint' if _WORKDIR.value else 'random'
  result = {
      'rows': rows, 'identical': differ == 0, 'sentences_differing': differ, 'speedup': speedup,
      'protocol': {'test_set': _TEST_SET.value, 'split': split, 'sentences': n,
                   'max_sentences': _MAX_SENTENCES.value, **settings.describe(),
                   'max_tokens': settings.max_tokens, 'mean_limit_tokens': float(limits.mean()),
                   'model': {k: m[k] for k in ('encoder_layers', 'decoder_layers', 'd_model',
                                               'num_heads', 'd_ff', 'src_vocab_size',
                                               'tgt_vocab_size', 'max_len')},
                   'attention': config.attention.kind, 'weights': weights,
                   'order': 'exact shapes first, then decode buckets, one process',
                   'note': ('random weights: hypotheses run to their limit, the most search per '
                            'sentence; a trained model searches less, so compilation is a larger '
                            'share') if weights == 'random' else ''},
      'machine': _machine(),
      'command': 'python benchmarks/decode.py ' + ' '.join(sys.argv[1:]),
  }
  first = f'-first{_MAX_SENTENCES.value}' if _MAX_SENTENCES.value else ''
  stem = _stem(f'decode-{_TEST_SET.value}{first}-{jax.devices()[0].platform}')
  stem.with_suffix('.json').write_text(json.dumps(result, indent=2) + '\n')
  lines = ['| path | sentences | wall s | sentences/s | compilations | compile s | search s |',
           '|---|---:|---:|---:|---:|---:|---:|']
  for r in rows:
    lines.append(f'| {r["path"]} | {r["sentences"]} | {r["wall_s"]:.1f} | '
                 f'{r["sentences_per_s"]:.2f} | {r["compilations"]} | {r["compile_s"]:.1f} | '
                 f'{r["search_s"]:.1f} |')
  lines.append(f'\nDecode buckets / exact shapes: **{speedup:.2f}×** faster; hypotheses '
               f'identical: {differ == 0} ({differ} of {n} differ). Weights: {weights}.')
  stem.with_suffix('.md').write_text('\n'.join(lines) + '\n')
  print('\n'.join(lines))


def _machine() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  return {'platform': jax.devices()[0].platform, 'device': str(jax.devices()[0]),
          'device_count': jax.device_count(), **timing.machine()}


if __name__ == '__main__':
  app.run(main)
