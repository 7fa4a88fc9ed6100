"""IWSLT14 German→English with fairseq's `transformer_iwslt_de_en` recipe.

    python train.py --config=configs/iwslt14.py:size=paper --config.data.dir=DATA/iwslt14/bpe10k
    python eval.py --workdir=W --split=test --beam=5 --lenpen=1 --average_last=5
    python train.py --config=configs/iwslt14.py:size=tiny,steps=50 --workdir=runs/iwslt-tiny

Data: fairseq's `prepare-iwslt14.sh` (`data/iwslt14.py` reproduces it: Moses tokenisation,
length-ratio cleaning, lowercasing, valid = every 23rd training line, test = dev2010, dev2012,
tst2010–2012, joint BPE with 10k merges) gives `{train,valid,test}.{de,en}` in `data.dir`;
separate dictionaries per language (fairseq-preprocess without --joined-dictionary). The default
`data.dir` is the shipped `../shared/data/iwslt14-de-en/bpe10k`, which has valid and test only:
point `data.dir` at a prepared folder, or train on valid with `--config.data.train='("valid",)'`.
Presets: `size=tiny|small|paper`, `attention=<kind>`, `steps=<N>`.

size=paper mirrors fairseq's `examples/translation` README (`transformer_iwslt_de_en`):
  6+6 post-LN layers, d_model 512, FFN 1024, 4 heads, ReLU, sinusoidal positions, shared decoder
  input/output embedding; dropout 0.3, attention and activation dropout 0; Adam (0.9, 0.98) with
  decoupled weight decay 1e-4, lr 5e-4, inverse-sqrt with 4000 warmup updates from 0, no
  clipping; label smoothing 0.1; 4096 tokens per batch (`--max-tokens 4096`, one GPU). fairseq
  sets no stop; ~20k updates (~50–70 epochs) is common practice [inferred]. Test protocol:
  `fairseq-generate --beam 5 --remove-bpe` (lenpen 1, max length 200), tokenized lowercased
  BLEU, ≈34.4–35.2 in the literature (≈35 with the last checkpoints averaged). fairseq's
  validation BLEU during training uses max_len_a 1.2, max_len_b 10.
size=small: 3+3 pre-LN layers × 256 (FFN 1024, 4 heads), a CPU-sized model for comparisons.
size=tiny: 1+1 layers × 64, a smoke test of the whole path. Measured on 2 CPU cores (no
  accelerator): its 200 updates, trained on the shipped valid set
  (`--config.data.train='("valid",)'`) with validation BLEU on 20 sentences, took 1m54s
  including data loading.

Sweep `dagpam` (`python -m training.sweep --config=configs/iwslt14.py:size=... --sweep=dagpam`):
softmax, parameter-matched softmax, daGPAM with fixed and trainable λ, and DIFF, in both
directions (en→de, de→en) with pre-LN and post-LN blocks. The daGPAM paper (Heo & Choi 2024,
arXiv:2410.15578) reports **en→de pre-LN: 28.54 → 29.25 BLEU** and an average gain of about
**+0.42 BLEU** on IWSLT14 (one run each; the other directions and LN variants not recovered).
Sweep `lambda`: daGPAM over a fixed (λ⁺, λ⁻) grid.
"""

from configs import common
from configs import sweeps as sweeps_lib
import data


def get_config(arg: str | None = None):
  args = common.parse_arg(arg, size='small', attention='', steps=0)
  c = common.translation_base_config()
  c.data = data.translation_data_config('iwslt14')
  m, o, d = c.model, c.optimizer, c.decode
  o.name, o.b1, o.b2, o.eps = 'adamw', 0.9, 0.98, 1e-8
  o.schedule, o.warmup_init_lr = 'inverse_sqrt', 0.0
  d.beam_size, d.length_penalty, d.lenpen = 5, 'fairseq', 1.0
  d.max_len_a, d.max_len_b = 0.0, 200   # fairseq-generate defaults
  m.share_decoder_input_output_embed, m.share_all_embeddings = True, False
  if args.size == 'paper':
    m.encoder_layers = m.decoder_layers = 6
    m.d_model, m.num_heads, m.d_ff = 512, 4, 1024
    m.pre_norm, m.dropout = False, 0.3
    o.learning_rate, o.warmup_steps, o.weight_decay, o.grad_clip_norm = 5e-4, 4000, 1e-4, 0.0
    c.data.max_tokens = 4096
    c.train_steps = 20000
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_batches = 100, 1000, 1000, -1
    c.keep_checkpoints = 10
  elif args.size == 'small':
    m.encoder_layers = m.decoder_layers = 3
    m.d_model, m.num_heads, m.d_ff = 256, 4, 1024
    m.pre_norm, m.dropout = True, 0.1
    o.learning_rate, o.warmup_steps, o.weight_decay, o.grad_clip_norm = 1e-3, 1000, 1e-4, 1.0
    c.data.max_tokens = 4096
    c.train_steps = 4000
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_batches = 50, 500, 500, 50
    c.keep_checkpoints = 5
  elif args.size == 'tiny':
    m.encoder_layers = m.decoder_layers = 1
    m.d_model, m.num_heads, m.d_ff = 64, 2, 128
    m.pre_norm = True
    o.learning_rate, o.warmup_steps, o.grad_clip_norm = 2e-3, 50, 1.0
    c.data.max_tokens = 1024
    c.train_steps = 200
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_batches = 25, 100, 100, 10
    d.beam_size, d.max_len_a, d.max_len_b = 2, 1.2, 10
    d.valid_sentences = 20
  else:
    raise ValueError(f'size={args.size!r}: expected tiny, small or paper')
  common.apply_common_args(c, args)
  return c


DIRECTIONS = ('en-de', 'de-en')
NORMS = ('preln', 'postln')
DAGPAM_DOC = ('daGPAM comparison on IWSLT14 (reported: en→de pre-LN 28.54 → 29.25 BLEU; average gain '
              'about +0.42 BLEU; one run each, no variances).')



def get_sweep(arg: str | None = None):
  """The daGPAM comparison on this task (module docstring); `arg` as for `get_config`."""
  return sweeps_lib.dagpam_sweeps(
      get_config(arg), DAGPAM_DOC, variants=sweeps_lib.translation_variants(DIRECTIONS, NORMS))
