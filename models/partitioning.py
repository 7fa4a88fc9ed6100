"""Logical axis names of every parameter, for sharding over a device mesh.

Each parameter dimension gets a logical name from the field: `vocab` (embedding rows), `embed`
(the model width D), `band` (an adaptive band's width), `heads` (the H·d_head columns of the query/key/value projections and the
rows of the output projection), `mlp` (the FFN's hidden units), `norm` (LayerNorm vectors),
`head_dim` (per-head vectors of a core, e.g. DIFF's λ vectors) and `core` (anything else inside
an attention core: SEA's estimator, NAP's per-head gain). `configs/common.py`
`LOGICAL_AXIS_RULES` maps logical names to mesh axes; `training/distributed.py` applies them.

The names come from a table of path patterns (`PARAM_AXES`) rather than from metadata on the
NNX variables because the training state holds parameters as a plain nested dict (the
optimizer's and the checkpoint's view), and one table keeps the whole layout readable in one
place, as t5x's and big_vision's partitioning rules do. A new attention core whose parameters
match no pattern is refused with the parameter's path (`logical_axes`), so nothing is silently
replicated; add its rows here.
"""

from __future__ import annotations

import re
from typing import Any

import jax

# (pattern on the '/'-joined path, logical names of the dimensions). The first match wins.
# Kernels of nnx.Linear are [in, out]; nnx.Conv kernels are [out, in, h, w] here (the core's own).
PARAM_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    # Positions (learned), token embeddings (shared with the output layer when tied), an
    # untied output layer.
    (r'(^|/)positions/embed/embedding$', (None, 'embed')),
    (r'(^|/)(embed|src_embed|tgt_embed)/embedding$', ('vocab', 'embed')),
    (r'(^|/)output/kernel$', ('embed', 'vocab')),
    (r'(^|/)output/bias$', ('vocab',)),
    # Adaptive input and softmax (models/adaptive.py): band b has its own width (`band`).
    (r'(^|/)embed/embeddings/0/embedding$', ('vocab', 'embed')),
    (r'(^|/)embed/embeddings/\d+/embedding$', ('vocab', 'band')),
    (r'(^|/)embed/projections/0/kernel$', ('embed', 'embed')),
    (r'(^|/)embed/projections/\d+/kernel$', ('band', 'embed')),
    (r'(^|/)adaptive_softmax/head_(words|clusters)/kernel$', ('embed', 'vocab')),
    (r'(^|/)adaptive_softmax/tail_projections/\d+/kernel$', ('embed', 'band')),
    (r'(^|/)adaptive_softmax/tail_outputs/\d+/kernel$', ('band', 'vocab')),
    # Attention projections around every core.
    (r'_attention/(q|k|v)_proj/kernel$', ('embed', 'heads')),
    (r'_attention/(q|k|v)_proj/bias$', ('heads',)),
    (r'_attention/out_proj/kernel$', ('heads', 'embed')),
    (r'_attention/out_proj/bias$', ('embed',)),
    # Feed-forward blocks.
    (r'/ffn/fc1/kernel$', ('embed', 'mlp')),
    (r'/ffn/fc1/bias$', ('mlp',)),
    (r'/ffn/fc2/kernel$', ('mlp', 'embed')),
    (r'/ffn/fc2/bias$', ('embed',)),
    # LayerNorms (per block, after a stack).
    (r'norm/(scale|bias)$', ('norm',)),
    # Attention cores' own parameters (attention/*.py).
    (r'/core/wq_neg$', ('head_dim', 'head_dim')),                       # daGPAM
    (r'/core/lambda_(q|k)(1|2)$', ('head_dim',)),                       # DIFF
    (r'/core/subln_scale$', ('head_dim',)),                             # DIFF
    (r'/core/(gain|bias)$', ('core',)),                                 # NAP
    (r'/core/v_eye_table$', ('core', 'core')),                          # SEA
    (r'/core/(conv1|conv2|conv_out)/kernel$', ('core', 'core', None, None)),   # SEA
    (r'/core/(conv1|conv2|conv_out|encoder|row_decoder|scaler)/bias$', ('core',)),
    (r'/core/(encoder|row_decoder|scaler)/kernel$', ('core', 'core')),
    (r'/core/(cnn_norm_in|cnn_norm_out|encoder_norm)/(scale|bias)$', ('core',)),
)
_COMPILED = tuple((re.compile(p), axes) for p, axes in PARAM_AXES)


def path_name(path) -> str:
  """A key path of a nested dict (jax.tree_util) → 'layers/0/ffn/fc1/kernel'."""
  return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def axes_of(name: str, ndim: int) -> tuple[str | None, ...]:
  """The logical names of the parameter at path `name`; ValueError when none applies."""
  for pattern, axes in _COMPILED:
    if pattern.search(name):
      if len(axes) != ndim:
        raise ValueError(f'parameter {name} has {ndim} dimension(s) but its logical axes '
                         f'{axes} name {len(axes)}; fix its row in models/partitioning.py')
      return axes
  raise ValueError(f'parameter {name} has no logical axis names; add a row for it to '
                   'models/partitioning.py PARAM_AXES')


def logical_axes(params: Any) -> Any:
  """A tree like `params` whose leaves are the logical names of each parameter's dimensions."""
  return jax.tree_util.tree_map_with_path(lambda p, x: axes_of(path_name(p), x.ndim), params)
