"""Draw attention maps, alignments and per-layer curves as PNG files: `attention_grid(path, maps)`.

Every function checks its inputs first (a wrong shape raises a ValueError naming the expected
one, before any folder or file is made), draws on a fresh Agg figure, writes the PNG to a
temporary file in the target folder and renames it onto `path`, so a failure leaves no
half-written picture; it returns `path`. Figures are made with `matplotlib.figure.Figure` and the
Agg canvas directly rather than through pyplot: nothing needs a display, no figure stays
registered anywhere, and the backend of a notebook or program that imports this module is left
as it was.

Pictures: a layer × head grid of maps (`attention_grid`); weight-based beside norm-based maps
per layer in the manner of Kobayashi et al. 2020, "Attention is Not Only a Weight: Analyzing
Transformers with Vector Norms", arXiv:2004.10102, Fig. 1 (`side_by_side_maps`); a word
alignment with its gold and hypothesis links (`alignment_matrix`); AER per layer
(`aer_per_layer`); and depth curves of collapse and gradient metrics (`depth_curves`).
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

DPI = 100
MAX_TICK_LABELS = 40  # more tokens than this on an axis: show indices instead


def _save(fig: Figure, path: str | os.PathLike) -> str:
  """Write `fig` as a PNG to a temporary file beside `path`, then rename it onto `path`."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  # Not mkstemp: its files are 0600, and the PNG should get the usual umask permissions.
  tmp = os.path.join(folder, f'.{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex}.tmp')
  try:
    with open(tmp, 'xb') as f:
      FigureCanvasAgg(fig)
      fig.savefig(f, format='png', dpi=DPI)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  finally:
    fig.clear()
  return path


def _maps(name: str, x: Any, ndims: Sequence[int], expected: str) -> np.ndarray:
  a = np.asarray(x, dtype=np.float64)
  if a.ndim not in ndims or 0 in a.shape:
    raise ValueError(f'{name} must be {expected}; got shape {a.shape}')
  return a


def _labels(name: str, labels: Sequence[str] | None, n: int, default: str) -> list[str]:
  if labels is None:
    return [f'{default} {i + 1}' for i in range(n)]
  if len(labels) != n:
    raise ValueError(f'{name} has {len(labels)} entries; the maps have {n} along that axis')
  return [str(x) for x in labels]


def _tokens(name: str, tokens: Sequence[str] | None, n: int) -> list[str] | None:
  if tokens is not None and len(tokens) != n:
    raise ValueError(f'{name} has {len(tokens)} tokens; the maps have {n} along that axis')
  return None if tokens is None or n > MAX_TICK_LABELS else [str(t) for t in tokens]


def _ticks(ax, query_tokens, key_tokens, left: bool, bottom: bool) -> None:
  """Token names on the outer panels' axes when short enough, indices otherwise."""
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.yaxis.set_major_locator(MaxNLocator(integer=True))
  if query_tokens is not None and left:
    ax.set_yticks(range(len(query_tokens)), query_tokens, fontsize=7)
  elif not left:
    ax.set_yticklabels([])
  if key_tokens is not None and bottom:
    ax.set_xticks(range(len(key_tokens)), key_tokens, fontsize=7, rotation=90)
  elif not bottom:
    ax.set_xticklabels([])


def _scale(values: np.ndarray, signed: bool) -> dict[str, Any]:
  """imshow colour settings: diverging and centred at 0 if signed, sequential from 0 if not."""
  if signed:
    m = float(np.nanmax(np.abs(values))) or 1.0
    return dict(cmap='RdBu_r', vmin=-m, vmax=m)
  return dict(cmap='viridis', vmin=min(0.0, float(np.nanmin(values))),
              vmax=float(np.nanmax(values)) or 1.0)


def _attention_grid_figure(maps, *, title, row_labels=None, col_labels=None, query_tokens=None,
                           key_tokens=None, signed=False, value_label=None) -> Figure:
  maps = _maps('maps', maps, (4,), '[L, H, T, S] (layers, heads, queries, keys)')
  n_layers, n_heads, t, s = maps.shape
  rows = _labels('row_labels', row_labels, n_layers, 'layer')
  cols = _labels('col_labels', col_labels, n_heads, 'head')
  queries, keys = _tokens('query_tokens', query_tokens, t), _tokens('key_tokens', key_tokens, s)
  panel = 2.2 if (queries or keys) else 1.6
  fig = Figure(figsize=(min(1.5 + panel * n_heads, 60), min(1.0 + panel * n_layers, 60)),
               layout='constrained')
  axes = fig.subplots(n_layers, n_heads, squeeze=False)
  colours = _scale(maps, signed)
  for i in range(n_layers):
    for j in range(n_heads):
      ax = axes[i, j]
      image = ax.imshow(maps[i, j], interpolation='nearest', aspect='auto', **colours)
      _ticks(ax, queries, keys, left=j == 0, bottom=i == n_layers - 1)
      if i == 0:
        ax.set_title(cols[j], fontsize=9)
      if j == 0:
        ax.set_ylabel(f'{rows[i]}\nquery', fontsize=9)
      if i == n_layers - 1:
        ax.set_xlabel('key', fontsize=9)
  fig.colorbar(image, ax=axes, shrink=0.6, label=value_label or 'attention weight')
  fig.suptitle(title)
  return fig


def attention_grid(path, maps, *, title: str, row_labels=None, col_labels=None,
                   query_tokens=None, key_tokens=None, signed: bool = False,
                   value_label: str | None = None) -> str:
  """Write a layer × head grid of `maps: [L, H, T, S]` heatmaps to the PNG `path`.

  One shared colour scale; `signed=True` uses a diverging map centred at 0, for attention with
  negative weights (daGPAM, DIFF). Tokens label the outer axes when given and at most
  `MAX_TICK_LABELS` long; indices otherwise. `value_label` names the colour bar ('attention
  weight' by default; e.g. '‖α f(x)‖' for norm maps).
  """
  return _save(_attention_grid_figure(maps, title=title, row_labels=row_labels,
                                      col_labels=col_labels, query_tokens=query_tokens,
                                      key_tokens=key_tokens, signed=signed,
                                      value_label=value_label), path)


def _layer_maps(name: str, x: Any) -> np.ndarray:
  """`[L, T, S]` as given; `[L, H, T, S]` averaged over heads."""
  a = _maps(name, x, (3, 4), '[L, T, S] (layer-level) or [L, H, T, S] (per head)')
  return a.mean(axis=1) if a.ndim == 4 else a


def side_by_side_maps(path, weights, norms, *, title: str, query_tokens=None, key_tokens=None,
                      weight_label: str = 'attention weight α',
                      norm_label: str = '‖α f(x)‖') -> str:
  """Write, per layer, the weight-based map beside the norm-based map of one sentence to `path`.

  `weights`, `norms`: `[L, T, S]` layer-level maps, or `[L, H, T, S]`, which are averaged over
  heads. Kobayashi et al.'s layer-level norm ‖Σ_h α_h f_h(x)‖ is not the head mean of per-head
  norms, so pass it as `[L, T, S]` when you have it. Each panel has its own colour bar: norms
  differ in scale from layer to layer, and a shared one would flatten the upper layers.
  """
  w, n = _layer_maps('weights', weights), _layer_maps('norms', norms)
  if w.shape != n.shape:
    raise ValueError(f'weights and norms must have the same [L, T, S] shape (after averaging '
                     f'heads); got {w.shape} and {n.shape}')
  n_layers, t, s = w.shape
  queries, keys = _tokens('query_tokens', query_tokens, t), _tokens('key_tokens', key_tokens, s)
  panel = 3.0 if (queries or keys) else 2.4
  fig = Figure(figsize=(2 * panel + 2.0, min(0.8 + panel * n_layers, 80)), layout='constrained')
  axes = fig.subplots(n_layers, 2, squeeze=False)
  for i in range(n_layers):
    for j, (values, label) in enumerate([(w[i], weight_label), (n[i], norm_label)]):
      ax = axes[i, j]
      image = ax.imshow(values, interpolation='nearest', aspect='auto', **_scale(values, False))
      fig.colorbar(image, ax=ax, shrink=0.8)
      _ticks(ax, queries, keys, left=True, bottom=i == n_layers - 1)
      ax.set_title(f'layer {i + 1}: {label}', fontsize=9)
      ax.set_ylabel('query', fontsize=8)
      if i == n_layers - 1:
        ax.set_xlabel('key', fontsize=8)
  fig.suptitle(title)
  return _save(fig, path)


def _links(name: str, links: Iterable[tuple[int, int]], n_src: int, n_tgt: int) -> set:
  out = {(int(i), int(j)) for i, j in links}
  bad = sorted((i, j) for i, j in out if not (0 <= i < n_src and 0 <= j < n_tgt))
  if bad:
    raise ValueError(f'{name} links must be 0-based (i_src, j_tgt) with i_src < {n_src} and '
                     f'j_tgt < {n_tgt}; out of range: {bad[:5]}')
  return out


def alignment_matrix(path, matrix, *, src_words: Sequence[str], tgt_words: Sequence[str],
                     sure: Iterable[tuple[int, int]], possible: Iterable[tuple[int, int]],
                     hypothesis: Iterable[tuple[int, int]] = (), title: str,
                     value_label: str = 'alignment score') -> str:
  """Write a word alignment `matrix: [T_words, S_words]` with its links to the PNG `path`.

  Target words are rows and source words columns; links are 0-based `(i_src, j_tgt)` pairs.
  Sure links are solid black squares, possible-only links dashed grey squares, hypothesis links
  red dots.
  """
  m = _maps('matrix', matrix, (2,), '[T_words, S_words] (target words × source words)')
  n_tgt, n_src = m.shape
  if len(src_words) != n_src or len(tgt_words) != n_tgt:
    raise ValueError(f'matrix is [T_words, S_words] = {m.shape}; got {len(tgt_words)} target '
                     f'and {len(src_words)} source words')
  sure_, possible_ = _links('sure', sure, n_src, n_tgt), _links('possible', possible, n_src, n_tgt)
  hypothesis_ = _links('hypothesis', hypothesis, n_src, n_tgt)
  fig = Figure(figsize=(2.5 + 0.35 * n_src, 1.5 + 0.35 * n_tgt), layout='constrained')
  ax = fig.subplots()
  image = ax.imshow(m, interpolation='nearest', aspect='equal', **_scale(m, m.min() < 0))
  fig.colorbar(image, ax=ax, shrink=0.8, label=value_label)
  for i, j in sorted(possible_ - sure_):
    ax.add_patch(Rectangle((i - 0.42, j - 0.42), 0.84, 0.84, fill=False, edgecolor='0.5',
                           linestyle='--', linewidth=1.2))
  for i, j in sorted(sure_):
    ax.add_patch(Rectangle((i - 0.45, j - 0.45), 0.9, 0.9, fill=False, edgecolor='black',
                           linewidth=2.0))
  if hypothesis_:
    xs, ys = zip(*sorted(hypothesis_))
    ax.scatter(xs, ys, s=18, color='red', zorder=3)
  ax.set_xticks(range(n_src), [str(x) for x in src_words], rotation=90, fontsize=8)
  ax.set_yticks(range(n_tgt), [str(x) for x in tgt_words], fontsize=8)
  ax.set_xlabel('source word')
  ax.set_ylabel('target word')
  fig.legend(handles=[
      Line2D([], [], marker='s', markersize=9, markerfacecolor='none', markeredgecolor='black',
             markeredgewidth=2, linestyle='none', label='sure'),
      Line2D([], [], marker='s', markersize=8, markerfacecolor='none', markeredgecolor='0.5',
             linestyle='none', label='possible'),
      Line2D([], [], marker='o', markersize=4, color='red', linestyle='none', label='hypothesis'),
  ], loc='outside lower center', ncols=3, fontsize=8, frameon=False)
  ax.set_title(title)
  return _save(fig, path)


def _series(name: str, values: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
  """1-based layers and float values of a per-layer list, with None entries dropped."""
  if isinstance(values, (str, bytes)) or not hasattr(values, '__len__'):
    raise ValueError(f'{name} must be a per-layer list of numbers; got {type(values).__name__}')
  kept = [(i + 1, float(v)) for i, v in enumerate(values) if v is not None]
  return (np.array([k for k, _ in kept], dtype=int), np.array([v for _, v in kept]))


def aer_per_layer(path, results: Mapping[str, Sequence[float | None]], *, title: str) -> str:
  """Write AER (%) per layer, one line per setting (`{'norms AWO': [per-layer %], …}`)."""
  if not results:
    raise ValueError("results is empty; expected {setting: [AER % per layer]}, e.g. "
                     "{'weights AWO': [...], 'norms AWO': [...]}")
  series = {name: _series(f'results[{name!r}]', v) for name, v in results.items()}
  fig = Figure(figsize=(6.4, 4.0), layout='constrained')
  ax = fig.subplots()
  styles = ['-', '--', '-.', ':']
  for k, (name, (x, y)) in enumerate(series.items()):
    ax.plot(x, y, marker='o', linestyle=styles[k % len(styles)], label=name)
  n_layers = max((int(x.max()) for x, _ in series.values() if x.size), default=1)
  ax.set_xticks(range(1, n_layers + 1))
  ax.set_xlabel('layer (1 = closest to the input)')
  ax.set_ylabel('AER (%), lower is better')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title)
  return _save(fig, path)


def _is_gradient(metric: str) -> bool:
  return '∂' in metric or 'grad' in metric.lower()


def depth_curves(path, curves: Mapping[str, Mapping[str, Sequence[float | None]]], *,
                 title: str, log_y: Iterable[str] | None = None) -> str:
  """Write one panel per metric of per-layer values, one line per attention kind, to `path`.

  `curves` is `{metric: {kind: [value per layer]}}`; None entries are skipped (a kind without
  dense scores has no score gradient). A line 'kind (stack)' has the colour of 'kind' and is
  dashed. The y axis is logarithmic for the metrics in `log_y`,
  by default those whose name holds '∂' or 'grad'; there non-positive values are skipped too.
  """
  if not curves:
    raise ValueError("curves is empty; expected {metric: {kind: [value per layer]}}")
  log = {m for m in curves if _is_gradient(m)} if log_y is None else set(log_y)
  kinds = list(dict.fromkeys(k for per_kind in curves.values() for k in per_kind))
  bases = list(dict.fromkeys(k.split(' (')[0] for k in kinds))
  colours = {k: f'C{bases.index(k.split(" (")[0]) % 10}' for k in kinds}
  styles = {k: '--' if ' (' in k else '-' for k in kinds}
  n, cols = len(curves), min(len(curves), 3)
  rows = -(-n // cols)
  fig = Figure(figsize=(4.2 * cols, 3.2 * rows + 0.6), layout='constrained')
  axes = fig.subplots(rows, cols, squeeze=False).ravel()
  shown = set()
  for ax, (metric, per_kind) in zip(axes, curves.items()):
    drawn = set()
    for kind, values in per_kind.items():
      x, y = _series(f'curves[{metric!r}][{kind!r}]', values)
      if metric in log:
        x, y = x[y > 0], y[y > 0]
      if x.size:
        ax.plot(x, y, marker='o', markersize=3, color=colours[kind],
                linestyle=styles[kind])
        drawn.add(kind)
    if metric in log and drawn:
      ax.set_yscale('log')
    if not drawn:
      ax.text(0.5, 0.5, 'no values', ha='center', va='center', transform=ax.transAxes)
    shown |= drawn
    ax.set_title(metric, fontsize=10)
    ax.set_xlabel('layer (1-based)')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
  for ax in axes[n:]:
    ax.set_visible(False)
  if shown:  # one legend for all panels; kinds without any value are left out of it
    fig.legend(handles=[Line2D([], [], color=colours[k], linestyle=styles[k], marker='o',
                               markersize=3, label=k)
                        for k in kinds if k in shown], loc='outside lower center',
               ncols=min(len(shown), 6), fontsize=8)
  fig.suptitle(title)
  return _save(fig, path)
