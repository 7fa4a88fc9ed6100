"""Bucketed decoding (training/translate.py): a few fixed shapes, the hypotheses of exact shapes.

Properties:
- the plan holds every sentence once, in a bucket wide enough for it, in batches whose rows are
  a multiple of the devices and whose shapes come from buckets × batch sizes;
- padding a source with pad columns, adding filling rows and widening the output buffer change
  no hypothesis (the encoder masks pad keys, rows are searched independently);
- on a small parallel corpus the bucketed path gives the hypotheses of the exact-shape path
  (`decode.length_buckets=()`), greedy and beam, and compiles once per shape it uses;
- a config recorded before the batch-shape keys existed decodes bucketed; bad keys are refused.

The model has random weights (scaled up, so that outputs vary) and a vocabulary of 24 symbols,
so EOS is often among the beam's candidates and hypotheses end at many different lengths.
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from configs import common, iwslt14
from training import builders, distributed, translate

WORDS_DE = 'ich du er sie es wir ihr haus baum katze hund sieht mag hat ein eine der die das'.split()
WORDS_EN = 'i you he she it we they house tree cat dog sees likes has a an the the the'.split()
# The test's shapes: few, since each compilation of a search takes seconds on CPU.
BUCKETS, SIZES, MAX_TOKENS = (4,), (4,), 160


def _write_corpus(directory: Path, n_test: int = 13, seed: int = 0) -> None:
  """Word-for-word pairs of 1–7 words: sources of 2–8 tokens, one batch of width 8 for the
  exact path, two buckets (4 and the model's positions) for the bucketed one."""
  rng = np.random.default_rng(seed)
  for split, n in (('train', 12), ('valid', 4), ('test', n_test)):
    de, en = [], []
    for _ in range(n):
      idx = rng.integers(0, len(WORDS_DE), size=rng.integers(1, 8))
      de.append(' '.join(WORDS_DE[i] for i in idx))
      en.append(' '.join(WORDS_EN[i] for i in idx))
    (directory / f'{split}.de').write_text('\n'.join(de) + '\n')
    (directory / f'{split}.en').write_text('\n'.join(en) + '\n')


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """(config, data, graphdef, rest, params) of a tiny random-weight model on the corpus."""
  directory = tmp_path_factory.mktemp('corpus')
  _write_corpus(directory)
  c = iwslt14.get_config('size=tiny')
  c.data.dir, c.data.cache_dir = str(directory), str(tmp_path_factory.mktemp('cache'))
  c.model.d_model, c.model.d_ff, c.model.max_len = 16, 32, 40
  c.decode.max_len_a, c.decode.max_len_b = 1.0, 4
  c.seed = 1
  data = builders.build_data(c)
  graphdef, params, rest = builders.split_model(builders.build_model(c))
  # At their initial scale the weights give near-flat distributions and one repeated word;
  # three times larger, hypotheses vary in words and length, so equal ones mean something.
  params = jax.tree.map(lambda x: 3.0 * x, params)
  return c, data, graphdef, rest, params


def _settings(c, beam: int, buckets=BUCKETS) -> translate.DecodeSettings:
  d = ml_collections.ConfigDict(c.decode.to_dict())
  d.length_buckets, d.batch_sizes, d.max_tokens = buckets, SIZES, MAX_TOKENS
  return translate.DecodeSettings.from_config(d, beam_size=beam)


# --------------------------------------------------------------------------------- the plan

@pytest.mark.parametrize('devices', [1, 2, 4])
def test_plan_holds_every_sentence_once_in_fixed_shapes(devices):
  lengths = np.random.default_rng(1).integers(1, 65, size=157)
  widths = translate.bucket_widths((8, 16, 32, 512), max_source_positions=64)
  assert widths == (8, 16, 32, 64)
  plan = translate.plan_batches(lengths, widths, (2, 8), max_tokens=64, row_multiple=devices)
  ids = np.concatenate([i for i, _ in plan])
  assert sorted(ids[ids >= 0].tolist()) == list(range(len(lengths)))
  shapes = {(len(i), w) for i, w in plan}
  assert shapes <= {(s * devices, w) for s in (2, 8) for w in widths}
  for i, width in plan:
    real = lengths[i[i >= 0]]
    narrower = widths[widths.index(width) - 1] if width != widths[0] else 0
    assert narrower < real.min() and real.max() <= width   # the narrowest bucket that holds it
    assert len(i) % devices == 0
    full = len(i) // devices
    assert full * width <= 64 or full == 2, (len(i), width)   # the budget, or the smallest size
  # Only the last batch of a bucket has filling rows, fewer than the smallest size.
  for width in widths:
    fill = [int((i < 0).sum()) for i, w in plan if w == width]
    assert all(f == 0 for f in fill[:-1]) and (not fill or fill[-1] < 2 * devices)


def test_source_rows_are_the_data_layers_sources(setup):
  _, data, *_ = setup
  batch = next(iter(data.eval_batches('test', max_tokens=4096)))
  ids, width = batch['ids'], batch['source'].shape[1]
  np.testing.assert_array_equal(data.source_rows('test', ids, width), batch['source'])
  rows = data.source_rows('test', np.array([-1, ids[0]]), width + 5)
  assert (rows[0] == data.pad_id).all() and (rows[1, width:] == data.pad_id).all()
  assert (rows[1] != data.pad_id).sum() == data.source_lengths('test')[ids[0]]
  with pytest.raises(ValueError, match='narrower than the longest'):
    data.source_rows('test', ids, int(data.source_lengths('test').max()) - 1)


def test_plan_refuses_a_sentence_wider_than_every_bucket():
  with pytest.raises(ValueError, match='longer than the widest bucket'):
    translate.plan_batches(np.array([3, 9]), (8,), (2,), max_tokens=64)


# ------------------------------------------------------------ bucketed = exact, few compiles

@pytest.mark.parametrize('beam', [1, 3])
def test_bucketed_hypotheses_equal_exact_shapes_and_compile_once_per_shape(setup, beam):
  """The exact path decodes the whole split in one batch of exact width, buffer and rows; the
  bucketed one pads sources of 5–8 tokens to the model's 40 positions (with a buffer of 40 for
  13) and fills batches with empty rows, so equal hypotheses say that padding changes none."""
  c, data, graphdef, rest, params = setup
  mesh = distributed.data_mesh()
  out = {}
  for name, buckets in (('exact', ()), ('bucketed', BUCKETS)):
    t = translate.Translator(graphdef, rest, data, _settings(c, beam, buckets),
                             max_positions=c.model.max_len, mesh=mesh)
    out[name] = (t.translate(params, "test"), t)
  (exact, t_exact), (bucketed, t) = out['exact'], out['bucketed']
  assert len(t_exact.compiled) == 1 and t_exact.compiled[0][1] == 8
  assert bucketed == exact and len(bucketed) == data.num_examples('test')
  assert len({len(h.split()) for h in bucketed}) > 3   # hypotheses end at many lengths
  widths = translate.bucket_widths(BUCKETS, data.max_source_positions)
  plan = translate.plan_batches(data.source_lengths('test'), widths, SIZES,
                                max_tokens=MAX_TOKENS, row_multiple=jax.device_count())
  assert widths == (4, 40) and {w for _, w in plan} == set(widths)
  assert any((i < 0).any() for i, _ in plan)               # filling rows were decoded too
  shapes = {(len(i), w, t.buffer_length(w)) for i, w in plan}
  assert len(plan) > len(shapes)                            # batches share compiled shapes
  assert sorted(t.compiled) == sorted(shapes)              # one compilation per shape used
  if hasattr(t._search, '_cache_size'):                    # jax's count of cache misses
    assert t._search._cache_size() == len(shapes)
  assert t.translate(params, 'test') == bucketed
  assert len(t.compiled) == len(shapes)                     # a second call compiles nothing


# ---------------------------------------------------------------------------------- config

def test_recorded_config_without_the_keys_decodes_bucketed():
  d = common.decode_config().to_dict()
  del d['length_buckets'], d['batch_sizes']
  settings = translate.DecodeSettings.from_config(ml_collections.ConfigDict(d))
  assert settings.length_buckets == common.decode_config().length_buckets
  assert settings.batch_sizes == common.decode_config().batch_sizes
  d['length_buckets'], d['batch_sizes'] = [16, 32], [8]   # as config.json gives them back
  settings = translate.DecodeSettings.from_config(ml_collections.ConfigDict(d))
  assert settings.length_buckets == (16, 32) and settings.batch_sizes == (8,)


@pytest.mark.parametrize('key, value, message', [
    ('length_buckets', (16, 0), r'decode.length_buckets=\(16, 0\): expected positive'),
    ('batch_sizes', (), 'decode.batch_sizes is empty'),
])
def test_bad_shape_keys_are_refused(key, value, message):
  d = common.decode_config()
  d[key] = value
  with pytest.raises(ValueError, match=message):
    translate.DecodeSettings.from_config(d)
