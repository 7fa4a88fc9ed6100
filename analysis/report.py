"""The four analyses of `eval.py --analysis=…` on a trained model: numbers, arrays, pictures.

    out = norms(model, batches, info)          # or maps / collapse / alignment (word_alignment)
    write(out, workdir / 'analysis')           # <name>.json, <name>.npz, <name>-*.png

Each function takes a live model (`nnx.merge` of a checkpoint), batches of its task and a
`TokenInfo` (what the tokens are, for categories and labels), and returns an `Output`: the JSON
summary, the arrays and the pictures to draw. Nothing is written until everything is computed;
`write` then puts the files in place one rename each, so a failure leaves `analysis/` as it was.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
import tempfile
from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np

from analysis import collapse as collapse_lib
from analysis import gradients as gradients_lib
from analysis import layers as layers_lib
from analysis import norms as norms_lib
from analysis import plots

ANALYSES = ('norms', 'alignment', 'collapse', 'maps')
SIGNED_KINDS = ('dagpam', 'diff', 'non', 'nap', 'coda')
PUNCTUATION = ('.', ',')      # Kobayashi et al. 2020 §4: "." and "," only
FREQUENT_WORDS = 20           # the category 'frequent': the most frequent words of the data


@dataclasses.dataclass
class TokenInfo:
  """What the analysis needs to know about token ids.

  symbols: id → text (None for bytes or synthetic ids); `frequency_rank`: id → rank by
  training frequency (1 = most frequent; None where unknown).
  """
  symbols: Sequence[str] | None
  eos_id: int                                # -1: the data has no end-of-sentence token
  pad_id: int
  frequency_rank: np.ndarray | None = None
  byte_level: bool = False                   # ids are bytes (shown as characters)

  def categories(self) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    out = {}
    if self.eos_id >= 0:
      out['eos'] = lambda ids: ids == self.eos_id
    if self.symbols is not None:
      table = np.zeros(len(self.symbols), bool)
      for p in PUNCTUATION:
        table[[i for i, s in enumerate(self.symbols) if s in (p, '\u2581' + p)]] = True
      out['punctuation'] = lambda ids, t=table: t[ids]
    if self.frequency_rank is not None:
      frequent = (self.frequency_rank > 0) & (self.frequency_rank <= FREQUENT_WORDS)
      if self.symbols is not None:
        frequent &= ~table
      out['frequent'] = lambda ids, t=frequent: t[ids]
    out['other'] = lambda ids: ~np.any([f(ids) for k, f in out.items() if k != 'other'], axis=0)
    return out

  def text(self, ids: Sequence[int]) -> list[str]:
    if self.symbols is None:
      if self.byte_level:
        return [repr(chr(i)) if 32 <= i < 127 else str(i) for i in ids]
      return [str(int(i)) for i in ids]
    return [self.symbols[i] if 0 <= i < len(self.symbols) else '?' for i in ids]


@dataclasses.dataclass
class Output:
  name: str                                   # file stem, e.g. 'norms-valid-step400'
  summary: dict[str, Any]
  arrays: dict[str, np.ndarray]
  pictures: dict[str, Callable[[str], Any]]   # file suffix → draw(path)
  texts: dict[str, str] = dataclasses.field(default_factory=dict)  # file suffix → content


def output_name(analysis: str, source: str, step: int) -> str:
  """The file stem of an analysis of checkpoint `step`: `source` is the split, or 'text' for
  `--text`; `write` puts `<stem>.json`, `<stem>.npz` and `<stem>-*.png` under `W/analysis/`."""
  return f'{analysis}-{source}-step{step}'


def write(out: Output, directory: Path) -> dict[str, str]:
  """Draws the pictures into a temporary folder beside `directory`, then renames every file in.

  Returns {'json', 'npz', picture suffix: path}. A failure before the renames leaves
  `directory` untouched.
  """
  directory.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(prefix='.staging-', dir=directory))
  try:
    files = {'json': f'{out.name}.json', 'npz': f'{out.name}.npz'}
    text = json.dumps(out.summary, indent=1, allow_nan=False) + '\n'
    (staging / files['json']).write_text(text)
    np.savez_compressed(staging / files['npz'], **out.arrays)
    for suffix, draw in out.pictures.items():
      files[suffix] = f'{out.name}-{suffix}.png'
      draw(str(staging / files[suffix]))
    for suffix, content in out.texts.items():
      files[suffix] = f'{out.name}-{suffix}'
      (staging / files[suffix]).write_text(content, encoding='utf-8')
    for name in files.values():  # the JSON last: its presence means the set is complete
      if name != files['json']:
        os.replace(staging / name, directory / name)
    os.replace(staging / files['json'], directory / files['json'])
  finally:
    for leftover in staging.iterdir():
      leftover.unlink()
    staging.rmdir()
  return {k: str(directory / v) for k, v in files.items()}


# ---------------------------------------------------------------------------------- helpers


def _sides(layer, batch, model):
  """(query valid, key valid, key tokens, query tokens, key side, query side) of an attention
  layer for a batch; a side is 'source' or 'target' ('target' for an LM)."""
  if not layers_lib.is_translation(model):
    inputs = np.asarray(batch['inputs'])
    valid = np.asarray(batch['weights']) > 0
    return valid, valid, inputs, inputs, 'target', 'target'
  source, target_in = np.asarray(batch['source']), np.asarray(batch['target_in'])
  src_valid = source != model.pad_id
  tgt_valid = np.asarray(batch['weights']) > 0
  if layer.role == 'encoder':
    return src_valid, src_valid, source, source, 'source', 'source'
  if layer.role == 'decoder':
    return tgt_valid, tgt_valid, target_in, target_in, 'target', 'target'
  return tgt_valid, src_valid, source, target_in, 'source', 'target'


def _side_info(info, side: str) -> TokenInfo:
  return info[side] if isinstance(info, dict) else info


def _key_side(layer) -> str:
  return 'source' if layer.role in ('encoder', 'cross') else 'target'


def _kind(model, layer) -> str:
  return type(layers_lib.module_at(model, layer.path).core).kind


def _ln_after(model, layer):
  """γ of the LayerNorm that follows the residual of `layer` (norms.mixing_ratios)."""
  block = layers_lib.module_at(model, layer.block)
  if not block.pre_norm:
    norm = block.cross_attention_norm if layer.role == 'cross' else block.self_attention_norm
  elif layer.role != 'cross' and block.cross_attention is not None:
    norm = block.cross_attention_norm
  else:
    norm = block.ffn_norm
  return norm.scale[...]


# ------------------------------------------------------------------------------------ norms


def norms(model, batches: Sequence[dict[str, np.ndarray]], info, *,
          name: str, meta: dict[str, Any]) -> Output:
  """Norm-based analysis (analysis/norms.py) of every attention layer over `batches`.

  `info`: a TokenInfo, or {'source': …, 'target': …} for a translation model.
  """
  attention = layers_lib.attention_layers(model)
  stats = {l.path: norms_lib.CategoryStats(_side_info(info, _key_side(l)).categories())
           for l in attention}
  mixing = {l.path: {} for l in attention}
  errors = {l.path: [] for l in attention}
  pairs_alpha = {l.path: ([], []) for l in attention}
  pairs_freq = {l.path: ([], []) for l in attention}
  branch_sums = {l.path: np.zeros(2) for l in attention}
  first = None
  for batch in batches:
    _, sown = layers_lib.forward(model, batch)
    per_layer = layers_lib.group(sown, attention)
    parts_of = {}
    for layer in attention:
      mha = layers_lib.module_at(model, layer.path)
      parts = norms_lib.decompose(per_layer[layer.path], mha.out_proj.kernel[...])
      parts_of[layer.path] = parts
      q_valid, k_valid, k_tokens, _, k_side, _ = _sides(layer, batch, model)
      stats[layer.path].update(parts, k_tokens, q_valid, k_valid)
      errors[layer.path].append(float(parts['reconstruction_error']))
      if layer.role != 'cross':
        ratios = norms_lib.mixing_ratios(parts, per_layer[layer.path]['residual'],
                                         mha.out_proj.bias[...], _ln_after(model, layer),
                                         jnp.asarray(q_valid))
        for k, v in ratios.items():
          mixing[layer.path].setdefault(k, []).append(np.asarray(v)[q_valid])
      _correlation_points(parts, q_valid, k_valid, k_tokens, _side_info(info, k_side), layer,
                          model,
                          pairs_alpha[layer.path], pairs_freq[layer.path])
      if 'positive_weights' in per_layer[layer.path]:
        br = norms_lib.branches(per_layer[layer.path], parts['transformed'])
        m = q_valid[:, :, None] & k_valid[:, None, :]
        branch_sums[layer.path] += [float(np.sum(np.asarray(br['positive_summed_norm']) * m)),
                                    float(np.sum(np.asarray(br['negative_summed_norm']) * m))]
    if first is None:
      first = (batch, parts_of)
  summary_layers = []
  for layer in attention:
    kind = _kind(model, layer)
    entry = {'layer': layer.label, 'path': layer.path, 'kind': kind,
             'weights': 'estimate' if kind in norms_lib.ESTIMATED_KINDS else 'exact',
             'reconstruction_error': max(errors[layer.path]),
             'categories': stats[layer.path].result(),
             'spearman_alpha_vs_fnorm': norms_lib.spearman(*_concat(pairs_alpha[layer.path])),
             'spearman_fnorm_vs_frequency_rank': norms_lib.spearman(
                 *_concat(pairs_freq[layer.path]))}
    if mixing[layer.path]:
      entry['mixing_ratio'] = {k: float(np.mean(np.concatenate(v)))
                               for k, v in mixing[layer.path].items()}
    if branch_sums[layer.path].any():
      pos, neg = branch_sums[layer.path]
      entry['dagpam_branches'] = {'positive_summed_norm': pos, 'negative_summed_norm': neg,
                                  'negative_over_positive': neg / pos if pos else None}
    summary_layers.append(entry)
  batch0, parts0 = first
  arrays, pictures = {}, {}
  for role in dict.fromkeys(l.role for l in attention):
    ls = [l for l in attention if l.role == role]
    for key in ('weights', 'weighted_norm', 'summed_norm', 'mean_weights', 'transformed_norm'):
      arrays[f'{role}/{key}'] = np.stack([np.asarray(parts0[l.path][key][0]) for l in ls])
    q_valid, k_valid, k_tokens, q_tokens, k_side, q_side = _sides(ls[0], batch0, model)
    t, s = int(q_valid[0].sum()), int(k_valid[0].sum())
    tq = _side_info(info, q_side).text(q_tokens[0][:t])
    tk = _side_info(info, k_side).text(k_tokens[0][:s])
    w = arrays[f'{role}/mean_weights'][:, :t, :s]
    n = arrays[f'{role}/summed_norm'][:, :t, :s]
    pictures[f'{role}-weights-vs-norms'] = (
        lambda path, w=w, n=n, tq=tq, tk=tk, role=role: plots.side_by_side_maps(
            path, w, n, title=f'{role} attention, example 0: α (head mean) vs ‖Σ_h α f(x)‖',
            query_tokens=tq, key_tokens=tk))
  summary = {'analysis': 'norms', **meta, 'layers': summary_layers}
  return Output(name, summary, arrays, pictures)


def _correlation_points(parts, q_valid, k_valid, k_tokens, info, layer, model, alpha, freq):
  """Adds (mean α received, ‖f‖) per (sequence, head, key), and (‖f‖ head mean, rank)."""
  w = np.asarray(parts['weights'], np.float64)                    # [B, N, T, S]
  fn = np.asarray(parts['transformed_norm'], np.float64)          # [B, N, S]
  seen = q_valid[:, :, None] & k_valid[:, None, :]
  if not layers_lib.is_translation(model) or layer.role == 'decoder':
    seen = seen & np.tril(np.ones(seen.shape[1:], bool))[None]
  count = seen.sum(axis=1)                                         # [B, S]
  received = np.sum(w * seen[:, None], axis=2) / np.maximum(count, 1)[:, None]
  keep = np.broadcast_to((k_valid & (count > 0))[:, None, :], received.shape)
  alpha[0].append(received[keep])
  alpha[1].append(fn[keep])
  if info.frequency_rank is not None:
    ranks = info.frequency_rank[k_tokens]
    ok = k_valid & (ranks > 0)
    freq[0].append(fn.mean(axis=1)[ok])
    freq[1].append(ranks[ok].astype(np.float64))


def _concat(pair):
  return tuple(np.concatenate(p) if p else np.zeros(0) for p in pair)


# ------------------------------------------------------------------------------------- maps


def maps(model, batch: dict[str, np.ndarray], info, *, name: str,
         meta: dict[str, Any]) -> Output:
  """Attention maps of one sentence (the first row of `batch`), every layer × head."""
  attention = layers_lib.attention_layers(model)
  _, sown = layers_lib.forward(model, batch)
  per_layer = layers_lib.group(sown, attention)
  arrays, pictures, roles = {}, {}, {}
  for role in dict.fromkeys(l.role for l in attention):
    ls = [l for l in attention if l.role == role]
    q_valid, k_valid, k_tokens, q_tokens, k_side, q_side = _sides(ls[0], batch, model)
    t, s = int(q_valid[0].sum()), int(k_valid[0].sum())
    weights = np.stack([np.asarray(per_layer[l.path]['attention_weights'][0])[:, :t, :s]
                        for l in ls])                              # [L, N, T, S]
    arrays[f'{role}/weights'] = weights
    kind = _kind(model, ls[0])
    tq = _side_info(info, q_side).text(q_tokens[0][:t])
    tk = _side_info(info, k_side).text(k_tokens[0][:s])
    roles[role] = {'kind': kind, 'layers': len(ls), 'heads': int(weights.shape[1]),
                   'query_tokens': tq, 'key_tokens': tk,
                   'weights': 'estimate' if kind in norms_lib.ESTIMATED_KINDS else 'exact'}
    pictures[f'{role}-maps'] = (
        lambda path, m=weights, tq=tq, tk=tk, role=role, kind=kind: plots.attention_grid(
            path, m, title=f'{role} attention ({kind}), layer × head',
            row_labels=[f'layer {i + 1}' for i in range(m.shape[0])],
            col_labels=[f'head {h + 1}' for h in range(m.shape[1])], query_tokens=tq,
            key_tokens=tk, signed=kind in SIGNED_KINDS))
  return Output(name, {'analysis': 'maps', **meta, 'roles': roles}, arrays, pictures)


# --------------------------------------------------------------------------------- collapse


def collapse(model, batches: Sequence[dict[str, np.ndarray]], *, name: str,
             meta: dict[str, Any]) -> Output:
  """Rank collapse (analysis/collapse.py) and gradient norms (analysis/gradients.py) per layer,
  averaged over `batches`; for an LM also its pure attention stack."""
  translation = layers_lib.is_translation(model)
  sums: dict[str, dict[str, list]] = {}

  def add(stack, metrics):
    entry = sums.setdefault(stack, {})
    for k, values in metrics.items():
      entry.setdefault(k, []).append(values)

  for batch in batches:
    grads, sown = gradients_lib.model_gradients(model, batch)
    states = layers_lib.hidden_states(sown, model)
    for stack, hidden in states.items():
      valid = (np.asarray(batch['source']) != model.pad_id if stack == 'encoder' else
               np.asarray(batch['weights']) > 0)
      metrics = collapse_lib.collapse_metrics(hidden, valid)
      metrics = {k: metrics[k] for k in collapse_lib.METRICS}
      role_grads = grads['decoder' if stack == 'decoder' else stack]
      add(stack, {**metrics, **role_grads})
    if translation:
      add('cross', grads['cross'])
    else:
      pure, outputs = gradients_lib.pure_attention_stack(model, batch,
                                                         sown['layers.0.self_attention_input'])
      metrics = collapse_lib.collapse_metrics(outputs, np.asarray(batch['weights']) > 0)
      add('pure_attention', {**{k: metrics[k] for k in collapse_lib.METRICS},
                             'grad_wq': pure['grad_wq'], 'grad_scores': pure['grad_scores']})
  stacks = {stack: {k: _mean_lists(v) for k, v in entry.items()} for stack, entry in sums.items()}
  kind = _kind(model, layers_lib.attention_layers(model)[0])
  summary = {'analysis': 'collapse', **meta, 'kind': kind, 'batches': len(batches),
             'stacks': stacks}
  curves = curves_by_metric({kind: summary})
  pictures = {'depth': lambda path: plots.depth_curves(
      path, curves, title=f'rank collapse and gradients over depth ({kind})')}
  arrays = {f'{stack}/{k}': np.asarray([np.nan if x is None else x for x in v], np.float64)
            for stack, entry in stacks.items() for k, v in entry.items()}
  return Output(name, summary, arrays, pictures)


def _mean_lists(values: list[list]) -> list[float | None]:
  """Per-layer mean over batches of lists that may hold None."""
  out = []
  for column in zip(*values):
    kept = [x for x in column if x is not None]
    out.append(float(np.mean(kept)) if kept else None)
  return out


CURVE_METRICS = {'relative_residual': '‖H − rank1(H)‖_F / ‖H‖_F',
                 'relative_composite_residual': '‖res(H)‖_{1,∞} / ‖H‖_{1,∞}',
                 'mean_pairwise_cosine': 'mean cos(h_i, h_j)',
                 'grad_wq': '‖∂L/∂W_Q‖', 'grad_scores': '‖∂L/∂scores‖'}


def curves_by_metric(summaries: dict[str, dict[str, Any]], stacks: Sequence[str] | None = None
                     ) -> dict[str, dict[str, list]]:
  """`{metric title: {label: per-layer values}}` from collapse summaries `{label: summary}`
  (one label per kind, for comparing workdirs); each stack becomes its own line."""
  curves: dict[str, dict[str, list]] = {}
  for label, summary in summaries.items():
    for stack, entry in summary['stacks'].items():
      if stacks is not None and stack not in stacks:
        continue
      line = label if stack in ('self',) else f'{label} ({stack})'
      for metric, title in CURVE_METRICS.items():
        if metric in entry:
          curves.setdefault(title, {})[line] = entry[metric]
  return curves
