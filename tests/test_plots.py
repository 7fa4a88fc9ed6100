"""Pictures (analysis/plots.py): each writes a readable PNG, refuses wrong shapes, leaves no file.

Properties: every function writes one PNG that `matplotlib.image.imread` reads back with pixels
of more than one colour; the grid has one heatmap per (layer, head); a wrong shape raises a
ValueError naming the expected one and creates neither the file nor its folder; a failure while
writing leaves neither the PNG nor a temporary file; None values in depth curves are skipped;
pyplot keeps no figure.
"""

from __future__ import annotations

import os

import matplotlib.image
import numpy as np
import pytest
from matplotlib.figure import Figure

from analysis import plots


def rng(seed: int = 0) -> np.random.Generator:
  return np.random.default_rng(seed)


def softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def assert_png(path, written) -> np.ndarray:
  assert written == str(path)
  assert os.path.getsize(path) > 0
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[0] * image.shape[1] > 0
  assert np.ptp(image[..., :3]) > 0  # not a blank canvas
  assert [f for f in os.listdir(os.path.dirname(path)) if f.endswith('.tmp')] == []
  return image


def test_attention_grid_writes_a_png_of_the_figure_size(tmp_path):
  maps = softmax(rng().normal(size=(2, 3, 5, 5)))
  path = tmp_path / 'new' / 'folder' / 'grid.png'
  image = assert_png(path, plots.attention_grid(path, maps, title='softmax',
                                                query_tokens=list('abcde'),
                                                key_tokens=list('abcde')))
  fig = plots._attention_grid_figure(maps, title='softmax', query_tokens=list('abcde'))
  width, height = fig.get_size_inches() * plots.DPI
  assert image.shape[:2] == (round(height), round(width))


def test_attention_grid_has_one_heatmap_per_layer_and_head():
  maps = rng().normal(size=(3, 4, 6, 7))
  fig = plots._attention_grid_figure(maps, title='diff', signed=True)
  heatmaps = [ax for ax in fig.axes if ax.images]
  assert len(heatmaps) == 3 * 4
  low, high = heatmaps[0].images[0].get_clim()
  assert low == -high == -np.abs(maps).max()  # diverging scale centred at 0


def test_attention_grid_with_long_sentences_uses_indices(tmp_path):
  maps = softmax(rng().normal(size=(1, 1, 60, 60)))
  path = tmp_path / 'long.png'
  assert_png(path, plots.attention_grid(path, maps, title='long', query_tokens=['w'] * 60))


@pytest.mark.parametrize('shape', [(4, 5, 5), (2, 3, 4, 5, 6)])
def test_wrong_shape_names_the_expected_one_and_writes_nothing(tmp_path, shape):
  path = tmp_path / 'never' / 'grid.png'
  with pytest.raises(ValueError, match=r'\[L, H, T, S\]'):
    plots.attention_grid(path, np.zeros(shape), title='x')
  assert not path.parent.exists()


def test_label_counts_are_checked(tmp_path):
  with pytest.raises(ValueError, match='row_labels has 1 entries'):
    plots.attention_grid(tmp_path / 'g.png', np.zeros((2, 1, 3, 3)), title='x', row_labels=['a'])
  with pytest.raises(ValueError, match='key_tokens has 2 tokens'):
    plots.attention_grid(tmp_path / 'g.png', np.zeros((1, 1, 3, 3)), title='x',
                         key_tokens=['a', 'b'])
  assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
  path = tmp_path / 'grid.png'
  path.write_bytes(b'previous picture')

  def broken(self, *args, **kwargs):
    raise RuntimeError('disk full')

  monkeypatch.setattr(Figure, 'savefig', broken)
  with pytest.raises(RuntimeError, match='disk full'):
    plots.attention_grid(path, np.ones((1, 1, 2, 2)), title='x')
  assert [p.name for p in tmp_path.iterdir()] == ['grid.png']
  assert path.read_bytes() == b'previous picture'  # the old picture is not half-overwritten


@pytest.mark.parametrize('heads', [True, False])
def test_side_by_side_maps(tmp_path, heads):
  shape = (3, 2, 4, 4) if heads else (3, 4, 4)
  weights = softmax(rng().normal(size=shape))
  norms = weights * rng(1).uniform(0.5, 3.0, size=shape)
  path = tmp_path / 'side.png'
  assert_png(path, plots.side_by_side_maps(path, weights, norms, title='sentence 1',
                                           query_tokens=list('wxyz'), key_tokens=list('wxyz')))


def test_side_by_side_maps_refuses_mismatched_shapes(tmp_path):
  with pytest.raises(ValueError, match='same'):
    plots.side_by_side_maps(tmp_path / 's.png', np.ones((2, 3, 3)), np.ones((2, 3, 4)), title='x')
  with pytest.raises(ValueError, match=r'\[L, T, S\]'):
    plots.side_by_side_maps(tmp_path / 's.png', np.ones((3, 3)), np.ones((3, 3)), title='x')
  assert list(tmp_path.iterdir()) == []


def test_alignment_matrix(tmp_path):
  src, tgt = ['das', 'ist', 'gut', '.'], ['this', 'is', 'good', '.', '!']
  matrix = softmax(rng().normal(size=(5, 4)))
  sure = {(0, 0), (1, 1), (2, 2), (3, 3)}
  possible = sure | {(3, 4)}
  path = tmp_path / 'align.png'
  assert_png(path, plots.alignment_matrix(path, matrix, src_words=src, tgt_words=tgt, sure=sure,
                                          possible=possible, hypothesis={(0, 0), (2, 1)},
                                          title='layer 5 norms'))
  with pytest.raises(ValueError, match='out of range'):
    plots.alignment_matrix(tmp_path / 'bad.png', matrix, src_words=src, tgt_words=tgt,
                           sure={(4, 0)}, possible=set(), title='x')
  with pytest.raises(ValueError, match=r'\[T_words, S_words\]'):
    plots.alignment_matrix(tmp_path / 'bad.png', matrix.T, src_words=src, tgt_words=tgt,
                           sure=sure, possible=possible, title='x')
  assert not (tmp_path / 'bad.png').exists()


def test_aer_per_layer(tmp_path):
  results = {'weights AWO': [60.0, 55.0, 48.0, 50.0], 'weights AWI': [58.0, 51.0, 45.0, 49.0],
             'norms AWO': [55.0, 40.0, 30.0, 35.0], 'norms AWI': [52.0, 38.0, 28.0, None]}
  path = tmp_path / 'aer.png'
  assert_png(path, plots.aer_per_layer(path, results, title='AER per layer'))
  with pytest.raises(ValueError, match='empty'):
    plots.aer_per_layer(tmp_path / 'none.png', {}, title='x')


def test_depth_curves_skip_none_values(tmp_path):
  curves = {
      'relative residual': {'softmax': [0.9, 0.5, 0.2], 'dagpam': [0.9, 0.8, 0.7]},
      'mean cosine': {'softmax': [0.1, 0.6, 0.9], 'dagpam': [0.1, 0.2, None]},
      '‖∂L/∂W_Q‖': {'softmax': [1e-3, 1e-5, 1e-7], 'dagpam': [1e-3, 1e-4, 0.0]},
      '‖∂L/∂scores‖': {'softmax': [1e-2, 1e-3, 1e-4], 'performer': [None, None, None]},
  }
  path = tmp_path / 'depth.png'
  assert_png(path, plots.depth_curves(path, curves, title='collapse with depth'))


def test_pyplot_keeps_no_figure(tmp_path):
  import matplotlib.pyplot as plt
  before = plt.get_fignums()
  plots.aer_per_layer(tmp_path / 'a.png', {'norms AWO': [40.0, 30.0]}, title='x')
  assert plt.get_fignums() == before
