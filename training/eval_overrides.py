"""The attention settings eval.py may change after training: `--override=KEY=VALUE`.

    python eval.py --workdir=W --override=attention.sea.k=16 --override=attention.impl=pallas

One trained checkpoint, evaluated at several settings without retraining (SEA's question of
what happens when k changes after training, Lee et al. 2024, arXiv:2310.01777). Only the keys
of `INFERENCE_KEYS` are accepted: each changes how the trained function is computed, or how
many keys a sparse attention keeps, but no parameter's shape or meaning. Everything else (the
kind, heads, model sizes, SEA's predictor_length, ...) is refused, because the checkpoint's
parameters were trained for it.

`parse` refuses an unknown key, a malformed or repeated one, a value of the wrong type, a key
of an attention kind the model does not use and one that would change nothing (a tile size
without attention.impl=pallas); `check_model` then builds the overridden model
abstractly (`nnx.eval_shape`, no array is computed), so the attention kind's own checks refuse an
out-of-range value (`attention.sea.k=0`, an implementation the kind lacks) with its own message.
Both run before any data or parameter is read. `file_tag` names an evaluation's files so that
settings never overwrite one another. This module imports nothing heavy until `check_model`.
"""

from __future__ import annotations

import re
from typing import Any

# key -> the type its value is parsed as; ranges are checked by the attention kind itself
# (`check_model`). A comment per key says why changing it after training is sound.
INFERENCE_KEYS: dict[str, type] = {
    # Which implementation computes the kind's algorithm (xla, pallas, cudnn, auto, ...): the
    # same function of the same parameters, up to floating-point rounding.
    'attention.impl': str,
    # Pallas tile sizes: the order of the work, not the function.
    'attention.block_q': int,
    'attention.block_k': int,
    # Keys kept per query: a selection from the estimate Â, which has predictor_length columns
    # whatever k is (k̂_i = round(k·K/L_i), clipped to [1, K]); no parameter depends on k. The
    # paper's own question (arXiv:2310.01777).
    'attention.sea.k': int,
    # dense (T×S mask) or chunked (O(T·K + C·S) memory): the same output.
    'attention.sea.inference': str,
    # Queries per chunk of the chunked path: memory, not the function.
    'attention.sea.query_chunk_size': int,
    # Scores kept per query; top-k attention has no parameters of its own (k ≥ S is softmax).
    'attention.topk.k': int,
    # Queries per step of the scan: memory, not the function.
    'attention.topk.query_chunk_size': int,
    # Positions per step of the causal prefix sums: memory, not the function.
    'attention.performer.chunk_size': int,
}

# key -> (the setting it acts under, the values that setting must have). Under other values the
# key is never read, and an override of it would only name a second file for the same numbers.
_ACTS_UNDER = {
    'attention.block_q': ('attention.impl', ('pallas',)),
    'attention.block_k': ('attention.impl', ('pallas',)),
    'attention.sea.query_chunk_size': ('attention.sea.inference', ('chunked',)),
}

_SAFE_TEXT = re.compile(r'[A-Za-z0-9_.+-]+')  # values become part of file names


def accepted() -> str:
  return ', '.join(INFERENCE_KEYS)


def attention_kinds(config) -> set[str]:
  """The attention kinds a workdir's model uses (a translation model's roles may differ)."""
  if config.get('task', 'lm') != 'translation':
    return {config.attention.kind}
  return {config.model.get(f'{role}_attention') or config.attention.kind
          for role in ('encoder', 'decoder', 'cross')}


def _lookup(config, key: str):
  node = config
  for part in key.split('.'):
    if part not in node:
      return False, None
    node = node[part]
  return True, node


def parse(texts: list[str], config) -> dict[str, Any]:
  """`['attention.sea.k=16', ...]` as `{key: value}` in the order given; ValueError otherwise.

  Raises before anything is loaded: the key must be one of `INFERENCE_KEYS`, given once, of a
  kind the model uses and present in the workdir's config, and must act under the other
  settings (tile sizes with attention.impl=pallas); the value must parse as its type.
  """
  out: dict[str, Any] = {}
  kinds = attention_kinds(config)
  for text in texts:
    key, sep, raw = text.partition('=')
    key, raw = key.strip(), raw.strip()
    if not sep or not key or not raw:
      raise ValueError(f'--override={text}: expected KEY=VALUE, e.g. '
                       '--override=attention.sea.k=16')
    if key not in INFERENCE_KEYS:
      raise ValueError(f'--override={text}: {key} cannot change after training (only settings '
                       f'that leave the parameters\' shapes and meaning alone can); accepted: '
                       f'{accepted()}')
    if key in out:
      raise ValueError(f'--override={text}: {key} is given twice')
    kind = key.split('.')[1] if key.count('.') == 2 else None
    if kind is not None and kind not in kinds:
      raise ValueError(f'--override={text}: this workdir\'s model uses attention.kind='
                       f'{",".join(sorted(kinds))}, so attention.{kind}.* has no effect')
    present, recorded = _lookup(config, key)
    if not present:
      raise ValueError(f'--override={text}: the workdir\'s config.json has no {key} (it was '
                       'written by an older version of the code)')
    if INFERENCE_KEYS[key] is int:
      try:
        value: Any = int(raw)
      except ValueError:
        raise ValueError(f'--override={text}: expected an int for {key} (the workdir has '
                         f'{recorded!r})') from None
    else:
      if not _SAFE_TEXT.fullmatch(raw):
        raise ValueError(f'--override={text}: expected a name for {key} (the workdir has '
                         f'{recorded!r})')
      value = raw
    out[key] = value
  for key, (setting, values) in _ACTS_UNDER.items():
    current = out[setting] if setting in out else _lookup(config, setting)[1]
    if key in out and current not in values:
      raise ValueError(f'--override={key}={out[key]}: {key} acts only with {setting}='
                       f'{" or ".join(values)}, and this evaluation has {setting}={current}; '
                       f'add --override={setting}={values[0]}')
  return out


def apply(config, overrides: dict[str, Any]) -> None:
  """Sets the overrides on `config` (the one loaded from the workdir), in place."""
  for key, value in overrides.items():
    *path, last = key.split('.')
    node = config
    for part in path:
      node = node[part]
    node[last] = value


def check_model(config, overrides: dict[str, Any]) -> None:
  """Builds the overridden model abstractly: its attention kinds' checks refuse a value out of
  range (ValueError naming the overrides) before any data or parameter is read."""
  if not overrides:
    return
  from flax import nnx  # pylint: disable=g-import-not-at-top (keeps refusals fast)
  from training import builders  # pylint: disable=g-import-not-at-top
  try:
    nnx.eval_shape(lambda: builders.build_model(config))
  except ValueError as e:
    given = ' '.join(f'--override={k}={v}' for k, v in overrides.items())
    raise ValueError(f'{given}: {" ".join(str(e).split())}') from None


def file_tag(overrides: dict[str, Any]) -> str:
  """'' without overrides, else '-impl=pallas-sea.k=16' (keys sorted, 'attention.' dropped):
  the suffix of an evaluation's file names, the same whatever order the flags were given in."""
  return ''.join(f'-{key.removeprefix("attention.")}={value}'
                 for key, value in sorted(overrides.items()))
