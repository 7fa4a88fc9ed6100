"""Parameter overhead of daGPAM over softmax attention in the fairseq translation shapes.

    python benchmarks/param_overhead.py [--iwslt_src_vocab=8848] [--iwslt_tgt_vocab=6632] \
        [--wmt_vocab=32768] [--wq_neg_bias] [--out=benchmarks/results/param_overhead.json]

Heo & Choi (2024, "Generalized Probabilistic Attention Mechanism in Transformers",
arXiv:2410.15578) report +0.1 % to +0.84 % parameters for daGPAM across tasks. That range is
known second-hand, from the ICLR 2025 reviews of the paper (one reviewer puts it at about 1 %);
the paper's model configurations are not known. This counts the parameters of the two
encoder–decoder shapes its IWSLT14 and WMT14 experiments most plausibly use, the standard fairseq
recipes (the `size=paper` configs):

- IWSLT14 de-en, fairseq `transformer_iwslt_de_en`: 6 + 6 layers, d = 512, FFN 1024, 4 heads,
  separate source/target dictionaries, `--share-decoder-input-output-embed`;
- WMT14 en-de base, fairseq `transformer_wmt_en_de`: 6 + 6 layers, d = 512, FFN 2048, 8 heads,
  one joined dictionary with `--share-all-embeddings` (the Scaling NMT recipe, Ott et al. 2018,
  "Scaling Neural Machine Translation", arXiv:1806.00187).

with softmax attention and with daGPAM in every attention module (encoder self, decoder self and
encoder–decoder attention: 18 modules), W_Q⁻ shared by the heads or per head, λ fixed or
trainable (per layer or per head). The real model is built with `nnx.eval_shape` (shapes only,
no memory): `models.seq2seq.EncoderDecoder` from the `size=paper` model config of
`configs/iwslt14.py` and `configs/wmt14.py` (post-LN as fairseq's defaults, so no final
LayerNorm; sinusoidal positions, no parameters; tied output projections add nothing).

The recipes do not state dictionary sizes; the defaults come from fairseq-preprocess logs:
IWSLT14 `prepare-iwslt14.sh` + separate dictionaries gives "[de] Dictionary: 8848 types",
"[en] Dictionary: 6632 types"; the Scaling NMT WMT'16/14 en-de data (32k joint BPE,
`--joined-dictionary`) gives "Dictionary: 32768 types". fairseq's own `prepare-wmt14en2de.sh`
uses 40k BPE merges and gives a different size: set `--wmt_vocab` for it.

Prints a table and writes it as JSON to `--out`.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import app, flags  # noqa: E402

_IWSLT_SRC = flags.DEFINE_integer(
    'iwslt_src_vocab', 8848, 'IWSLT14 de-en source (de) dictionary size, incl. special symbols '
    '(fairseq-preprocess of prepare-iwslt14.sh: "[de] Dictionary: 8848 types").')
_IWSLT_TGT = flags.DEFINE_integer(
    'iwslt_tgt_vocab', 6632, 'IWSLT14 de-en target (en) dictionary size; the decoder input '
    'embedding is tied with the output projection ("[en] Dictionary: 6632 types").')
_WMT_VOCAB = flags.DEFINE_integer(
    'wmt_vocab', 32768, 'WMT14 en-de joined dictionary size, shared by encoder, decoder and '
    'output (--share-all-embeddings; Scaling NMT 32k-BPE data: "Dictionary: 32768 types").')
_BIAS = flags.DEFINE_bool(
    'wq_neg_bias', False, 'Give every daGPAM negative-query projection a bias '
                          '(attention.dagpam.wq_neg_bias).')
_OUT = flags.DEFINE_string(
    'out', str(Path(__file__).resolve().parent / 'results' / 'param_overhead.json'),
    'Where to write the table as JSON.')

# The range the paper reports, as quoted in its ICLR 2025 reviews.
PAPER_OVERHEAD_PERCENT = (0.1, 0.84)

# (label, attention.kind, attention.dagpam overrides)
VARIANTS = (
    ('softmax', 'softmax', {}),
    ('daGPAM shared W_Q⁻, fixed λ', 'dagpam', dict(share_wq_neg=True)),
    ('daGPAM shared W_Q⁻, trainable λ/layer', 'dagpam',
     dict(share_wq_neg=True, trainable_lambdas=True, lambda_granularity='layer')),
    ('daGPAM shared W_Q⁻, trainable λ/head', 'dagpam',
     dict(share_wq_neg=True, trainable_lambdas=True, lambda_granularity='head')),
    ('daGPAM per-head W_Q⁻, fixed λ', 'dagpam', dict(share_wq_neg=False)),
    ('daGPAM per-head W_Q⁻, trainable λ/layer', 'dagpam',
     dict(share_wq_neg=False, trainable_lambdas=True, lambda_granularity='layer')),
    ('daGPAM per-head W_Q⁻, trainable λ/head', 'dagpam',
     dict(share_wq_neg=False, trainable_lambdas=True, lambda_granularity='head')),
)


def recipes() -> dict[str, dict]:
  """The two fairseq shapes; `embeddings` lists the distinct embedding tables (name, rows)."""
  return {
      'iwslt14_de_en': dict(
          arch='transformer_iwslt_de_en', config='iwslt14', encoder_layers=6, decoder_layers=6, d_model=512,
          d_ff=1024, num_heads=4,
          embeddings=[('encoder embed_tokens (de)', _IWSLT_SRC.value),
                      ('decoder embed_tokens (en), tied with the output', _IWSLT_TGT.value)]),
      'wmt14_en_de': dict(
          arch='transformer_wmt_en_de', config='wmt14', encoder_layers=6, decoder_layers=6, d_model=512,
          d_ff=2048, num_heads=8,
          embeddings=[('joined embed_tokens, shared by encoder, decoder and output',
                       _WMT_VOCAB.value)]),
  }


def count_parameters(recipe: dict, kind: str, options: dict) -> dict[str, int]:
  """Parameters of the encoder–decoder, by part, built abstractly with `nnx.eval_shape`."""
  import importlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  from models import seq2seq  # pylint: disable=g-import-not-at-top

  config = importlib.import_module(f'configs.{recipe["config"]}').get_config('size=paper')
  m = config.model
  for key in ('encoder_layers', 'decoder_layers', 'd_model', 'd_ff', 'num_heads'):
    assert m[key] == recipe[key], (recipe['arch'], key, m[key], recipe[key])
  rows = [r for _, r in recipe['embeddings']]
  m.src_vocab_size, m.tgt_vocab_size = rows[0], rows[-1]
  config.attention.kind = kind
  for key, value in options.items():
    config.attention.dagpam[key] = value
  if kind == 'dagpam':
    config.attention.dagpam.wq_neg_bias = _BIAS.value

  model = nnx.eval_shape(
      lambda: seq2seq.EncoderDecoder(config.model, config.attention, rngs=nnx.Rngs(0)))
  size = lambda tree: sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(tree, nnx.Param)))
  counts = {'encoder': size(model.encoder_layers), 'decoder': size(model.decoder_layers),
            'embeddings': sum(size(e) for e in (model.src_embed, model.tgt_embed, model.output)
                              if e is not None)}
  # The attention cores' own parameters (daGPAM's W_Q⁻, b_Q⁻, λ; none for softmax).
  counts['attention_cores'] = sum(
      size(attn.core)
      for layers in (model.encoder_layers, model.decoder_layers) for layer in layers
      for attn in (layer.self_attention, layer.cross_attention) if attn is not None)
  counts['total'] = size(model)
  assert counts['total'] == counts['encoder'] + counts['decoder'] + counts['embeddings']
  return counts


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  for flag in (_IWSLT_SRC, _IWSLT_TGT, _WMT_VOCAB):
    if flag.value <= 0:
      raise app.UsageError(f'--{flag.name}={flag.value} must be positive')
  rows = []
  all_recipes = recipes()
  for recipe_name, recipe in all_recipes.items():
    base = None
    for label, kind, options in VARIANTS:
      counts = count_parameters(recipe, kind, options)
      base = counts['total'] if base is None else base
      extra = counts['total'] - base
      rows.append(dict(recipe=recipe_name, arch=recipe['arch'], variant=label, kind=kind,
                       dagpam_options=options, params=counts['total'], extra=extra,
                       overhead_percent=100.0 * extra / base, breakdown=counts))

  header = f'{"recipe":<15} {"variant":<42} {"params":>12} {"extra":>10} {"overhead":>9}'
  print(header)
  print('-' * len(header))
  for r in rows:
    print(f'{r["recipe"]:<15} {r["variant"]:<42} {r["params"]:>12,} {r["extra"]:>10,} '
          f'{r["overhead_percent"]:>8.3f}%')
  print(f'\npaper (as quoted in its ICLR 2025 reviews): +{PAPER_OVERHEAD_PERCENT[0]}% to '
        f'+{PAPER_OVERHEAD_PERCENT[1]}% parameters')

  result = dict(
      description='Parameters of fairseq encoder-decoder shapes with softmax vs daGPAM in all '
                  '18 attention modules (benchmarks/param_overhead.py).',
      recipes={name: dict(r, embeddings=[dict(name=n, rows=v) for n, v in r['embeddings']])
               for name, r in all_recipes.items()},
      wq_neg_bias=_BIAS.value,
      paper_overhead_percent=list(PAPER_OVERHEAD_PERCENT),
      rows=rows)
  out = Path(_OUT.value)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + '\n')
  print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
