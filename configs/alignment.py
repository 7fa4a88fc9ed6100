"""Synthetic xs→xt translation with a gold word alignment, for checking attention alignments.

    python train.py --config=configs/alignment.py --workdir=W
    python eval.py --workdir=W --split=test
    python train.py --config=configs/alignment.py:size=tiny,steps=50 --workdir=runs/align-tiny

Data: `data/synthetic_alignment.py`, generated on first use into the data cache (or into
`data.dir` when set): a random word-for-word lexicon of 300 source words, adjective + noun
swapped to noun + adjective in the target, every fifth noun translated into two target words,
words of 3–4 syllables written as BPE pieces ("@@ ") on both sides; 30k training pairs of 4–14
source words, 500 validation and 500 test pairs (`data.synthetic.*`). Beside each split its gold
alignment (`test.talp`: 1-based `i-j` word links), for the alignment error rate of links read
from the cross-attention (Kobayashi et al. 2020, arXiv:2004.10102, §5); `gold_files(config.data,
'test')` gives the three paths. Separate fairseq dictionaries; BLEU on the text with BPE removed.
Harder variants (default 0, the task above): `data.synthetic.particle_share` (that share of the
'other' words translate into nothing), `data.synthetic.inserted_particles` (chance of one more
such particle after each source word, repeated) and `data.synthetic.free_order` (chance that
neighbouring units change places), and `data.synthetic.agreement=G` (G genders: a target word's
form shows the gender of the previous word's source, so the decoder must align by AWI; with
`model.encoder_layers=0`, G = 4 and 8,000 updates, 3.4 % norm-based AWI AER in layer 1);
docs/analysis.md reports the alignments they give.
Presets: `size=tiny|small`, `attention=<kind>`, `steps=<N>`.

size=small (the default): 2+2 pre-LN layers × 128 (FFN 256, 4 heads, so that per-head maps can
  be compared), no dropout, label smoothing 0.1; AdamW (0.9, 0.98), lr 3e-3 after 100 warmup
  updates, cosine to 0, clipping at 1; 2048 tokens per batch; 1,000 updates; beam 4, output
  length ≤ 1.5 · source + 10. On a 2-core CPU (no accelerator), eval.py --analysis=alignment
  of that run's step 1000 on the 500 test pairs: AER 4.5 % (norms, AWO, layer 2), 4.6 %
  (weights, AWO), but about 88 % with AWI (docs/analysis.md).
size=tiny: 1+1 layers × 64 (2 heads), 200 updates, a smoke test of the whole path.
"""

from configs import common
import data


def get_config(arg: str | None = None):
  args = common.parse_arg(arg, size='small', attention='', steps=0)
  c = common.translation_base_config()
  c.data = data.translation_data_config('synthetic_alignment')
  m, o, d = c.model, c.optimizer, c.decode
  o.name, o.b1, o.b2, o.eps = 'adamw', 0.9, 0.98, 1e-8
  o.schedule, o.warmup_init_lr = 'inverse_sqrt', 0.0
  d.beam_size, d.length_penalty, d.lenpen = 4, 'fairseq', 1.0
  d.max_len_a, d.max_len_b = 1.5, 10   # targets have more pieces than sources at times
  m.share_decoder_input_output_embed, m.share_all_embeddings = True, False
  m.pre_norm = True
  m.max_len = 128             # the longest pair is under 50 tokens
  c.data.length_bucket = 16   # 3 padded shapes, so 3 compilations of the train step
  if args.size == 'small':
    m.encoder_layers = m.decoder_layers = 2
    m.d_model, m.num_heads, m.d_ff = 128, 4, 256
    m.dropout = 0.0
    # A short run: cosine from the peak to 0 reaches ≈97 valid BLEU in 1,000 updates where
    # inverse-sqrt (lr 5e-3) stays near 91.
    o.schedule, o.learning_rate, o.warmup_steps, o.grad_clip_norm = 'cosine', 3e-3, 100, 1.0
    c.data.max_tokens = 2048
    c.train_steps = 1000
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_batches = 50, 500, 500, 20
    d.valid_sentences = 100
  elif args.size == 'tiny':
    m.encoder_layers = m.decoder_layers = 1
    m.d_model, m.num_heads, m.d_ff = 64, 2, 128
    o.learning_rate, o.warmup_steps, o.grad_clip_norm = 2e-3, 50, 1.0
    c.data.max_tokens = 1024
    c.train_steps = 200
    c.log_every, c.eval_every, c.checkpoint_every, c.eval_batches = 25, 100, 100, 10
    d.beam_size = 2
    d.valid_sentences = 20
  else:
    raise ValueError(f'size={args.size!r}: expected tiny or small')
  common.apply_common_args(c, args)
  return c
