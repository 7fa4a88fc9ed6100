"""Sweep rows shared by the task configs' `get_sweep` (run by `python -m training.sweep`).

Not a task config: it builds rows (dicts of config overrides, training/sweep.py) for the
comparisons the papers make, so that every task states them the same way.

- `dagpam_rows`: softmax, daGPAM with fixed λ, daGPAM with trainable λ (Heo & Choi 2024,
  "Generalized Probabilistic Attention Mechanism in Transformers", arXiv:2410.15578), DIFF
  (Ye et al. 2024, "Differential Transformer", arXiv:2410.05258) as the closest peer, and a
  **parameter-matched softmax control**: softmax with a wider FFN, so that it has as many
  parameters as daGPAM adds (daGPAM's extra W_Q⁻ is one head_dim × head_dim matrix per attention
  module, shared by the heads; the control widens every FFN by the whole number of units that
  comes closest; the report's parameters column shows both counts).
- `lambda_grid_rows`: daGPAM over a (λ⁺, λ⁻) grid with fixed λ, the sensitivity study the paper
  does not report.
- `gpam_alternatives_rows`: the attention variants of the daGPAM paper's Table 1 (PTB): softmax,
  daGPAM with trainable λ, NON and NAP (Richter & Wattenhofer 2020, "Normalized Attention
  Without Probability Cage", arXiv:2005.09561) and CoDA (Tay et al. 2019, "Compositional
  De-Attention Networks", NeurIPS).
- `dagpam_sweeps`: the `dagpam` and `lambda` sweeps of a task, as its `get_sweep` returns them.
- `sea_rows`: a softmax teacher, SEA distilled from it (Lee et al. 2024, "SEA: Sparse Linear
  Attention with Estimated Attention Mask", arXiv:2310.01777), Performer and top-k at the same
  budget of kept keys, and the SEA checkpoint evaluated at several k without retraining.
"""

from __future__ import annotations

import math

import ml_collections


TEST = [{'name': 'test', 'flags': ['--split=test']}]


def _attention_modules_and_ffns(config: ml_collections.ConfigDict) -> tuple[int, int]:
  m = config.model
  if config.task == 'translation':
    return m.encoder_layers + 2 * m.decoder_layers, m.encoder_layers + m.decoder_layers
  return m.num_layers, m.num_layers


def dagpam_extra_parameters(config: ml_collections.ConfigDict) -> int:
  """Parameters daGPAM adds to the model of `config` with the default options (W_Q⁻ shared by
  the heads, no bias, fixed λ): head_dim² per attention module."""
  modules, _ = _attention_modules_and_ffns(config)
  head_dim = config.model.d_model // config.model.num_heads
  return modules * head_dim * head_dim


def matched_d_ff(config: ml_collections.ConfigDict) -> int:
  """The FFN width that gives softmax as many parameters as daGPAM (each FFN unit holds
  2·d_model + 1 parameters)."""
  _, ffns = _attention_modules_and_ffns(config)
  per_unit = ffns * (2 * config.model.d_model + 1)
  return config.model.d_ff + int(math.floor(dagpam_extra_parameters(config) / per_unit + 0.5))


def dagpam_rows(config: ml_collections.ConfigDict, prefix: str = '',
                extra: dict | None = None) -> list[dict]:
  """The daGPAM comparison for `config`; `extra` overrides go into every row (e.g. pre-LN)."""
  extra = dict(extra or {})
  return [
      {'name': f'{prefix}softmax', 'attention.kind': 'softmax', **extra},
      {'name': f'{prefix}softmax-param-matched', 'attention.kind': 'softmax',
       'model.d_ff': matched_d_ff(config), **extra},
      {'name': f'{prefix}dagpam-fixed', 'attention.kind': 'dagpam', **extra},
      {'name': f'{prefix}dagpam-trainable', 'attention.kind': 'dagpam',
       'attention.dagpam.trainable_lambdas': True, **extra},
      {'name': f'{prefix}diff', 'attention.kind': 'diff', **extra},
  ]


def with_overrides(config: ml_collections.ConfigDict, overrides: dict) -> ml_collections.ConfigDict:
  """A copy of `config` with dotted-key `overrides` applied (what a row's jobs will train)."""
  config = config.copy_and_resolve_references()
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


def dagpam_sweeps(config: ml_collections.ConfigDict, doc: str, *,
                  variants: tuple[tuple[str, dict], ...] = (('', {}),),
                  common: dict | None = None) -> dict:
  """`{'dagpam': …, 'lambda': …}` for a task's `get_sweep`. Each (prefix, overrides) variant
  repeats the daGPAM comparison (e.g. per direction and block type); `common` overrides go into
  every row of both sweeps (e.g. the paper's depth)."""
  common = dict(common or {})
  rows = []
  for prefix, overrides in variants:
    extra = {**common, **overrides}
    rows += dagpam_rows(with_overrides(config, extra), prefix=prefix, extra=extra)
  return {
      'dagpam': {'doc': doc, 'evals': TEST, 'rows': rows},
      'lambda': {'doc': 'daGPAM with fixed (λ⁺, λ⁻) on a grid: the sensitivity study the paper '
                        'does not report.', 'evals': TEST, 'x_label': 'λ⁺',
                 'rows': [dict(r, **common) for r in lambda_grid_rows()]},
  }


def translation_variants(directions, norms) -> tuple[tuple[str, dict], ...]:
  """`dagpam_sweeps` variants per direction ('en-de') and block ('preln', 'postln', or '' for
  the recipe's own)."""
  variants = []
  for direction in directions:
    src, tgt = direction.split('-')
    for norm in norms:
      overrides = {'data.src_lang': src, 'data.tgt_lang': tgt}
      if norm:
        overrides['model.pre_norm'] = norm == 'preln'
      variants.append((f'{direction}-{norm}-' if norm else f'{direction}-', overrides))
  return tuple(variants)


def lambda_grid_rows(values=(0.25, 0.5, 1.0)) -> list[dict]:
  """daGPAM with fixed (λ⁺, λ⁻) over `values`²: one curve per λ⁻, λ⁺ along x."""
  return [{'name': f'dagpam-lp{lp:g}-ln{ln:g}', 'group': f'lambda_neg={ln:g}', 'x': lp,
           'attention.kind': 'dagpam', 'attention.dagpam.lambda_pos': lp,
           'attention.dagpam.lambda_neg': ln}
          for ln in values for lp in values]


def gpam_alternatives_rows() -> list[dict]:
  return [{'name': 'softmax', 'attention.kind': 'softmax'},
          {'name': 'dagpam-trainable', 'attention.kind': 'dagpam',
           'attention.dagpam.trainable_lambdas': True},
          {'name': 'non', 'attention.kind': 'non'},
          {'name': 'nap', 'attention.kind': 'nap'},
          {'name': 'coda', 'attention.kind': 'coda'}]


def sea_rows(k: int, predictor_length: int, eval_ks=(8, 16, 32, 64, 128)) -> tuple[list, list]:
  """(rows, evals) of the SEA comparison: the softmax teacher first, then SEA distilled from
  the teacher of the same seed (`after`), Performer, and top-k keeping k keys per query."""
  rows = [
      {'name': 'softmax', 'attention.kind': 'softmax', 'evals': ['test']},
      {'name': f'sea-k{k}', 'attention.kind': 'sea', 'attention.sea.k': k,
       'attention.sea.predictor_length': predictor_length,
       'attention.sea.teacher': '{root}/softmax/seed{seed}', 'after': 'softmax'},
      {'name': 'performer', 'attention.kind': 'performer', 'evals': ['test']},
      {'name': f'topk-k{k}', 'attention.kind': 'topk', 'attention.topk.k': k, 'evals': ['test']},
  ]
  evals = TEST + [{'name': f'test-k{x}', 'x': x, 'flags': ['--split=test', f'--override=attention.sea.k={x}']}
            for x in eval_ks if x <= predictor_length]
  return rows, evals
