"""MQAR (Zoology): examples are deterministic, well-formed, scored only at queries."""

import json

import numpy as np
import pytest

import data
from data import synthetic


def _mqar(**overrides):
  config = data.lm_data_config('mqar')
  config.update(overrides)
  return data.build_lm_data(config, seed=0)


def test_an_example_asks_keys_whose_values_are_the_targets():
  options = dict(num_kv_pairs=8, num_queries=8, key_vocab_size=32, value_vocab_size=32)
  for index in range(50):
    ex = synthetic.make_example(index, seq_len=64, **options)
    inputs, targets, weights = ex['inputs'], ex['targets'], ex['weights']
    assert inputs.shape == targets.shape == weights.shape == (64,)
    assert inputs.dtype == targets.dtype == np.int32 and weights.dtype == np.float32
    np.testing.assert_array_equal(inputs[1:], targets[:-1])  # targets are the next tokens
    keys, values = inputs[0:16:2], inputs[1:16:2]
    assert len(set(keys.tolist())) == 8 and ((1 <= keys) & (keys <= 32)).all()
    assert ((33 <= values) & (values <= 64)).all()
    answer = dict(zip(keys.tolist(), values.tolist()))
    queried = np.flatnonzero(weights)
    assert len(queried) == 8 and (queried >= 16).all()
    for pos in queried:
      assert targets[pos] == answer[int(inputs[pos])]
    assert len(set(inputs[queried].tolist())) == 8  # distinct keys asked
    assert (inputs[16:][weights[16:] == 0] != 0).sum() == 8  # the rest: answers and filler


def test_pair_tokens_hold_key_and_value_in_one_token():
  options = dict(num_kv_pairs=8, num_queries=8, key_vocab_size=16, value_vocab_size=16,
                 pair_tokens=True)
  first_pair = 1 + 16 + 16
  for index in range(50):
    ex = synthetic.make_example(index, seq_len=32, **options)
    inputs, targets, weights = ex['inputs'], ex['targets'], ex['weights']
    np.testing.assert_array_equal(inputs[1:], targets[:-1])
    pairs = inputs[:8]
    assert ((first_pair <= pairs) & (pairs < first_pair + 16 * 16)).all()
    key, value = np.divmod(pairs - first_pair, 16)
    answer = dict(zip((key + 1).tolist(), (value + 17).tolist()))
    assert len(answer) == 8  # distinct keys
    queried = np.flatnonzero(weights)
    assert len(queried) == 8 and (queried >= 8).all()
    for pos in queried:
      assert targets[pos] == answer[int(inputs[pos])]
  lm = _mqar(**options)
  assert lm.vocab_size == 1 + 16 + 16 + 256
  assert lm.decode([1, 17, first_pair + 16 * 2 + 5, 0]) == 'k0 v0 k2v5 .'
  with pytest.raises(ValueError, match='need seq_len ≥ 23'):
    lm.train_iterator(batch_size=2, seq_len=22, seed=0)


def test_chance_accuracy_is_at_most_ten_percent():
  lm = _mqar()
  assert lm.chance_accuracy == 1 / 32 and lm.describe()['chance_accuracy'] <= 0.1
  # Values are uniform: the answers of many queries cover the value ids evenly.
  answers = np.concatenate([
      ex['targets'][ex['weights'] == 1] for ex in
      (synthetic.make_example(i) for i in range(2000))])
  counts = np.bincount(answers - 33, minlength=32)
  assert counts.min() > 0.7 * counts.mean() and counts.max() < 1.3 * counts.mean()
  with pytest.raises(ValueError, match='at most 10%'):
    _mqar(value_vocab_size=9)


def test_examples_depend_only_on_seed_split_and_index():
  a = synthetic.make_example(5, split='valid', data_seed=1)
  b = synthetic.make_example(5, split='valid', data_seed=1)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a['inputs'], synthetic.make_example(5, split='test',
                                                                  data_seed=1)['inputs'])
  assert not np.array_equal(a['inputs'], synthetic.make_example(5, split='valid',
                                                                  data_seed=2)['inputs'])


def test_splits_do_not_share_examples():
  seen = {split: {synthetic.make_example(i, split=split)['inputs'].tobytes() for i in range(300)}
          for split in ('train', 'valid', 'test')}
  assert not seen['train'] & seen['valid'] and not seen['train'] & seen['test']
  assert not seen['valid'] & seen['test']


def test_eval_scores_every_query_once_and_pads_the_last_batch():
  lm = _mqar(num_valid_examples=10)
  batches = list(lm.eval_batches('valid', batch_size=4, seq_len=64, context_window=16))
  assert len(batches) == 3
  assert sum(b['weights'].sum() for b in batches) == lm.num_tokens('valid') == 80
  assert batches[-1]['weights'][2:].sum() == 0
  np.testing.assert_array_equal(batches[0]['inputs'][1],
                                synthetic.make_example(1, split='valid')['inputs'])
  with pytest.raises(ValueError, match='context_window'):
    lm.eval_batches('valid', batch_size=4, seq_len=64, context_window=64)
  with pytest.raises(ValueError, match='unknown split'):
    lm.eval_batches('holdout', batch_size=4, seq_len=64)


def test_train_iterator_resumes_bitwise():
  lm = _mqar(num_train_examples=50)
  it = lm.train_iterator(batch_size=8, seq_len=32, seed=3)
  for _ in range(5):  # crosses an epoch boundary
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  expected = [next(it) for _ in range(4)]
  fresh = lm.train_iterator(batch_size=8, seq_len=32, seed=3)
  fresh.set_state(state)
  for want in expected:
    got = next(fresh)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_sequence_too_short_is_explained():
  lm = _mqar()
  with pytest.raises(ValueError, match='need seq_len ≥ 31'):
    lm.train_iterator(batch_size=2, seq_len=30, seed=0)
  assert next(lm.train_iterator(batch_size=2, seq_len=31, seed=0))['weights'].sum() == 16


def test_describe_and_decode():
  lm = _mqar()
  info = lm.describe()
  json.dumps(info)
  assert info['vocab_size'] == lm.vocab_size == 65
  assert lm.metric == 'accuracy' and lm.num_tokens('test') == 8_000
  assert _mqar(data_seed=1).describe()['fingerprint'] != info['fingerprint']
  assert lm.decode([1, 33, 0]) == 'k0 v0 .'
