"""Where a beam-search step's time goes: the whole step, the step without the key/value cache
reorder, and the output layer alone, at one fixed shape.

    python benchmarks/decode_step.py --config=configs/wmt14.py:size=small

A model of the config's shape (random weights, `--vocab` target words) runs beam search over
`--batch` random sources of `--source_len` tokens, every hypothesis forced to `--output_len`
tokens (min length = max length). The rows are timed in turns, `--repeats` rounds, each turn
after one untimed call (benchmarks/timing.py); a search's median divided by its steps gives ms
per step. The second row runs the same search with the cache reorder
between beams replaced by the identity: its hypotheses are wrong, and it exists only to measure
what moving the caches costs. The third row times `model.log_probs` (the output projection and
log-softmax) on `batch × beam` rows alone. Printed and written to
benchmarks/results/decode-step-<platform>.json (docs/benchmarks.md, "Decoding a whole test set").
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:
  sys.path.insert(0, str(_REPO))
from benchmarks import timing  # noqa: E402  pylint: disable=g-import-not-at-top

_CONFIG = config_flags.DEFINE_config_file(
    'config', str(_REPO / 'configs' / 'wmt14.py') + ':size=small',
    'Translation config whose model shape to decode with.')
_BATCH = flags.DEFINE_integer('batch', 128, 'Sentences decoded together.')
_BEAM = flags.DEFINE_integer('beam', 4, 'Beam size.')
_SOURCE_LEN = flags.DEFINE_integer('source_len', 30, 'Source tokens per sentence (with EOS).')
_OUTPUT_LEN = flags.DEFINE_integer('output_len', 82, 'Output tokens per hypothesis before EOS.')
_VOCAB = flags.DEFINE_integer('vocab', 8000, 'Source and target vocabulary size.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed runs per row (the median is reported).')
_OUT = flags.DEFINE_string('out', None, 'Result file (default '
                           'benchmarks/results/decode-step-<platform>.json).')

BOS, PAD, EOS = 2, 1, 2


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from models import decoding  # pylint: disable=g-import-not-at-top
  from training import builders, translate  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  config.model.src_vocab_size = config.model.tgt_vocab_size = _VOCAB.value
  model = builders.build_model(config)
  graphdef, params, rest = builders.split_model(model)
  b, n_out, beam = _BATCH.value, _OUTPUT_LEN.value, _BEAM.value
  rng = np.random.default_rng(0)
  source = rng.integers(4, _VOCAB.value, size=(b, _SOURCE_LEN.value)).astype(np.int32)
  source[:, -1] = EOS
  max_lens = np.full((b,), n_out, np.int32)
  steps = n_out + 1
  reorder = decoding.reorder_cache
  searches = {}
  try:
    for label, reorder_fn in (('beam step', reorder),
                              ('beam step without the cache reorder (wrong results)',
                               lambda cache, rows: cache)):
      decoding.reorder_cache = reorder_fn  # read when the search is traced, so compiled here
      settings = translate.DecodeSettings(beam_size=beam, min_len=n_out, max_len_a=0.0,
                                          max_len_b=n_out, mode='incremental')
      search = translate.make_search(graphdef, rest, settings, bos_id=BOS, eos_id=EOS,
                                     pad_id=PAD)
      searches[label] = search.lower(params, source, max_lens, max_len=steps).compile()
  finally:
    decoding.reorder_cache = reorder
  hidden = jnp.asarray(rng.standard_normal((b * beam, config.model.d_model), np.float32))
  log_probs = jax.jit(model.log_probs)
  runners = {label: (lambda c=compiled: jax.block_until_ready(c(params, source, max_lens)))
             for label, compiled in searches.items()}
  runners['output layer alone (log_probs)'] = lambda: jax.block_until_ready(log_probs(hidden))
  # In turns, so that a change of machine load hits every row alike; each turn starts with an
  # untimed call, so that the output layer is timed warm, as inside the search; medians.
  times = timing.time_in_turns(runners, _REPEATS.value, 1, warmup=1)
  rows = {label: 1000 * statistics.median(t for r in rounds for t in r)
                 / (steps if label in searches else 1)
          for label, rounds in times.items()}
  result = {'ms_per_step': rows,
            'protocol': {'batch': b, 'beam': beam, 'hypotheses': b * beam,
                         'source_len': _SOURCE_LEN.value, 'output_len': n_out,
                         'vocab': _VOCAB.value, 'repeats': _REPEATS.value,
                         'config': config_flags.get_config_filename(flags.FLAGS['config'])},
            'machine': {'platform': jax.devices()[0].platform, **timing.machine()},
            'command': 'python benchmarks/decode_step.py ' + ' '.join(sys.argv[1:])}
  out = Path(_OUT.value) if _OUT.value else (
      _REPO / 'benchmarks' / 'results' / f'decode-step-{jax.devices()[0].platform}.json')
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2) + '\n')
  print(f'{b} sentences × beam {beam}, {n_out} output tokens, vocab {_VOCAB.value}:')
  for label, ms in rows.items():
    print(f'  {label:55s} {ms:8.1f} ms')
  print(f'  written to {out}')


if __name__ == '__main__':
  app.run(main)
