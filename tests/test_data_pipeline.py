"""Training blocks (resumable, reshuffled per epoch) and fairseq context-window evaluation."""

import json
import pickle

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest

import data
from data import pipeline


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      assert x[k].dtype == y[k].dtype
      np.testing.assert_array_equal(x[k], y[k])


class TestTrainBlocks:

  def test_rows_are_contiguous_blocks_and_targets_are_next_tokens(self):
    tokens = np.arange(1000, 1101, dtype=np.int32)  # 101 tokens -> 10 blocks of 10+1
    it = pipeline.train_block_iterator(tokens, batch_size=5, seq_len=10, seed=0)
    batch = next(it)
    assert batch['inputs'].shape == batch['targets'].shape == batch['weights'].shape == (5, 10)
    assert batch['inputs'].dtype == batch['targets'].dtype == np.int32
    assert batch['weights'].dtype == np.float32 and (batch['weights'] == 1).all()
    for inputs, targets in zip(batch['inputs'], batch['targets']):
      start = inputs[0] - 1000
      assert start % 10 == 0  # blocks start at multiples of seq_len
      np.testing.assert_array_equal(inputs, tokens[start:start + 10])
      np.testing.assert_array_equal(targets, tokens[start + 1:start + 11])

  def test_each_epoch_is_a_permutation_of_the_blocks_and_epochs_differ(self):
    tokens = np.arange(0, 161, dtype=np.int32)  # 16 blocks of seq_len 10
    it = pipeline.train_block_iterator(tokens, batch_size=4, seq_len=10, seed=3)
    epochs = []
    for _ in range(3):
      starts = np.concatenate([b['inputs'][:, 0] // 10 for b in _take(it, 4)])
      assert sorted(starts.tolist()) == list(range(16))
      epochs.append(starts.tolist())
    assert epochs[0] != epochs[1] or epochs[1] != epochs[2]

  def test_same_seed_same_batches_other_seed_other_order(self):
    tokens = np.arange(0, 5001, dtype=np.int32)
    first = _take(pipeline.train_block_iterator(tokens, batch_size=8, seq_len=10, seed=7), 3)
    again = _take(pipeline.train_block_iterator(tokens, batch_size=8, seq_len=10, seed=7), 3)
    other = _take(pipeline.train_block_iterator(tokens, batch_size=8, seq_len=10, seed=8), 3)
    _assert_same_batches(first, again)
    assert not all(np.array_equal(a['inputs'], b['inputs']) for a, b in zip(first, other))

  @pytest.mark.parametrize('n_before', [0, 3, 7])  # 7 batches of 4 crosses an epoch (25 blocks)
  def test_resume_from_state_is_bitwise_identical(self, n_before):
    tokens = np.random.default_rng(0).integers(0, 500, size=251).astype(np.int32)
    it = pipeline.train_block_iterator(tokens, batch_size=4, seq_len=10, seed=1)
    _take(it, n_before)
    state = it.get_state()
    expected = _take(it, 9)

    # The state survives JSON (Orbax's grain handler writes JSON) and pickling.
    restored_state = json.loads(json.dumps(state))
    assert pickle.loads(pickle.dumps(state)) == state
    fresh = pipeline.train_block_iterator(tokens, batch_size=4, seq_len=10, seed=1)
    fresh.set_state(restored_state)
    _assert_same_batches(_take(fresh, 9), expected)

  def test_orbax_checkpoint_round_trip(self, tmp_path):
    ocp = pytest.importorskip('orbax.checkpoint')
    import grain  # pylint: disable=g-import-not-at-top
    tokens = np.arange(0, 401, dtype=np.int32)
    it = pipeline.train_block_iterator(tokens, batch_size=4, seq_len=10, seed=5)
    _take(it, 3)
    with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
      manager.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
      manager.wait_until_finished()
    expected = _take(it, 5)
    fresh = pipeline.train_block_iterator(tokens, batch_size=4, seq_len=10, seed=5)
    with ocp.CheckpointManager(tmp_path / 'ckpt') as manager:
      manager.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    _assert_same_batches(_take(fresh, 5), expected)

  def test_stream_too_short_for_a_block_is_an_error(self):
    with pytest.raises(ValueError, match='too short'):
      pipeline.train_block_iterator(np.arange(10), batch_size=1, seq_len=10, seed=0)


def _rows(batches):
  for b in batches:
    for i in range(b['inputs'].shape[0]):
      yield b['inputs'][i], b['targets'][i], b['weights'][i]


class TestContextWindows:

  def test_matches_the_hand_derived_fairseq_example(self):
    # tokens t0..t9 = 10..19, seq_len 4, context_window 2 -> stride 2, 5 windows. fairseq's
    # LMContextWindowDataset: window k scores targets [2k, 2k+2) and shows the previous (up to)
    # 2 inputs as context with padded targets; the input before t0 is </s> (here 99).
    tokens = np.arange(10, 20, dtype=np.int32)
    batches = list(pipeline.context_windows(tokens, batch_size=2, seq_len=4, context_window=2,
                                            start_id=99, pad_id=-1))
    assert len(batches) == 3
    rows = list(_rows(batches))
    expected = [
        ([99, 10, -1, -1], [10, 11, -1, -1], [1, 1, 0, 0]),
        ([99, 10, 11, 12], [10, 11, 12, 13], [0, 0, 1, 1]),
        ([11, 12, 13, 14], [12, 13, 14, 15], [0, 0, 1, 1]),
        ([13, 14, 15, 16], [14, 15, 16, 17], [0, 0, 1, 1]),
        ([15, 16, 17, 18], [16, 17, 18, 19], [0, 0, 1, 1]),
        ([-1, -1, -1, -1], [-1, -1, -1, -1], [0, 0, 0, 0]),  # padding row of the last batch
    ]
    assert len(rows) == len(expected)
    for (inputs, targets, weights), (ei, et, ew) in zip(rows, expected):
      np.testing.assert_array_equal(inputs, ei)
      np.testing.assert_array_equal(targets, et)
      np.testing.assert_array_equal(weights, ew)

  def test_context_window_zero_is_independent_blocks(self):
    tokens = np.arange(7, dtype=np.int32)
    rows = list(_rows(pipeline.context_windows(tokens, batch_size=8, seq_len=3, context_window=0,
                                               start_id=50, pad_id=0)))
    np.testing.assert_array_equal(rows[0][0], [50, 0, 1])
    np.testing.assert_array_equal(rows[1][0], [2, 3, 4])
    np.testing.assert_array_equal(rows[2][1], [6, 0, 0])
    np.testing.assert_array_equal(rows[2][2], [1, 0, 0])

  @settings(max_examples=60, deadline=None)
  @given(n=st.integers(1, 60), seq_len=st.integers(1, 12), draw=st.data(),
         batch_size=st.integers(1, 5))
  def test_every_token_scored_once_with_the_right_context(self, n, seq_len, draw, batch_size):
    context_window = draw.draw(st.integers(0, seq_len - 1))
    # Distinct token values, so a row's position in the stream can be read off its first target.
    tokens = (np.random.default_rng(n).permutation(n) + 4).astype(np.int32)
    stream = np.concatenate([[2], tokens])  # stream[j] is the input that predicts tokens[j]
    position = {int(t): j for j, t in enumerate(tokens)}
    batches = pipeline.context_windows(tokens, batch_size=batch_size, seq_len=seq_len,
                                       context_window=context_window, start_id=2, pad_id=1)
    scored = np.zeros(n, int)
    first_context = []
    for b in batches:
      assert b['inputs'].shape == (batch_size, seq_len)
      for inputs, targets, weights in zip(b['inputs'], b['targets'], b['weights']):
        length = int((targets != 1).sum())  # tokens are ≥ 4, so 1 marks padding
        if length == 0:
          assert weights.sum() == 0
          continue
        assert (targets[length:] == 1).all() and (weights[length:] == 0).all()
        # The row holds tokens[c:c+length] as targets and their predecessors as inputs: every
        # scored token sees exactly the stream before it, back to the row's start.
        c = position[int(targets[0])]
        np.testing.assert_array_equal(targets[:length], tokens[c:c + length])
        np.testing.assert_array_equal(inputs[:length], stream[c:c + length])
        scored_pos = [c + i for i in range(length) if weights[i] == 1]
        assert scored_pos == list(range(scored_pos[0], scored_pos[-1] + 1))
        for j in scored_pos:
          scored[j] += 1
          assert j - c >= min(context_window, j)  # at least the promised context
        # The first scored token sees exactly min(context_window, j) earlier tokens as context.
        j0 = scored_pos[0]
        first_context.append((j0, j0 - c))
        assert (weights[:j0 - c] == 0).all()
    np.testing.assert_array_equal(scored, np.ones(n, int))
    for j0, visible in first_context:
      assert visible == min(context_window, j0)

  def test_batches_are_reiterable_and_sized(self):
    tokens = np.arange(100, dtype=np.int32)
    batches = pipeline.context_windows(tokens, batch_size=3, seq_len=8, context_window=4,
                                       start_id=0, pad_id=0)
    assert len(batches) == len(list(batches)) == 9  # ceil(ceil(100 / 4) / 3)
    assert sum(b['weights'].sum() for b in batches) == 100

  @pytest.mark.parametrize('context_window', [8, 9, -1])
  def test_bad_context_window_is_an_error(self, context_window):
    with pytest.raises(ValueError, match='context_window'):
      pipeline.context_windows(np.arange(20), batch_size=2, seq_len=8,
                               context_window=context_window, start_id=0, pad_id=0)


class TestInterface:

  def test_split_names(self):
    assert pipeline.canonical_split('validation') == 'valid'
    with pytest.raises(ValueError, match='unknown split'):
      pipeline.canonical_split('dev2')

  def test_every_config_block_has_the_same_keys(self):
    keys = {name: set(data.lm_data_config(name).keys()) for name in data.NAMES}
    assert keys['mqar'] == keys['wikitext'] == keys['enwik8']
    for required in ('name', 'dir', 'source', 'tfds_data_dir', 'cache_dir', 'num_kv_pairs',
                     'num_queries', 'num_valid_examples', 'num_test_examples'):
      assert required in keys['mqar']
    with pytest.raises(ValueError, match='known: mqar, wikitext, enwik8'):
      data.lm_data_config('ptb')

  def test_configs_are_locked_against_typos(self):
    config = data.lm_data_config('wikitext')
    config.lock()
    with pytest.raises(AttributeError):
      config.cache_dri = '/tmp'

  def test_bad_source_and_dir_are_explained(self, tmp_path):
    config = data.lm_data_config('wikitext')
    config.source = 'hub'
    with pytest.raises(ValueError, match="'files' or 'tfds'"):
      data.build_lm_data(config, seed=0)
    config = data.lm_data_config('enwik8')
    config.dir = str(tmp_path / 'nowhere')
    with pytest.raises(ValueError, match='no enwik8 data in .*nowhere.*enwik8.zip'):
      data.build_lm_data(config, seed=0)

  def test_relative_dirs_fall_back_to_the_project_root(self, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert data.resolve_data_dir('data') == data.PROJECT_ROOT / 'data'
    (tmp_path / 'data').mkdir()
    assert data.resolve_data_dir('data') == tmp_path / 'data' or \
        data.resolve_data_dir('data').resolve() == (tmp_path / 'data').resolve()
