"""Pieces shared by every task config: the attention, model, optimizer and run blocks.

Task configs (`configs/<task>.py`) start from `base_config()` and fill in the recipe. Every key a
user may override must exist here, because configs are locked (a typo'd key is an error).
"""

from __future__ import annotations

import ml_collections

import attention


def apply_common_args(config: ml_collections.ConfigDict, args: ml_collections.ConfigDict) -> None:
  """Presets every task accepts: `attention=<kind>`, `steps=<N>`."""
  if args.get('attention'):
    attention.core_class(args.attention)  # a clear error listing the known kinds
    config.attention.kind = args.attention
  if args.get('steps'):
    config.train_steps = args.steps


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses `key=value,key2=value2` preset arguments (big_vision style) over `defaults`.

  A bare `key` means `key=True`. Values are converted to the type of the default.
  """
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, sep, value = item.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'unknown config argument {key!r}; known: {", ".join(sorted(defaults))}')
    default = defaults[key]
    if not sep:
      out[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ('true', 'false', '1', '0'):
        raise ValueError(f'config argument {key}={value!r}: expected true or false')
      out[key] = value.lower() in ('true', '1')
    elif default is None:
      out[key] = value
    else:
      out[key] = type(default)(value)
  return out


def attention_config() -> ml_collections.ConfigDict:
  """`config.attention`: which algorithm (`kind`), which implementation (`impl`), options."""
  c = ml_collections.ConfigDict()
  c.kind = 'softmax'          # attention.known_kinds()
  c.impl = 'xla'              # xla | cudnn | pallas | auto (where the kind has them)
  c.dropout = 0.0             # dropout on the attention weights
  c.block_q = 0               # Pallas kernels' query / key tile sizes (powers of two ≥ 16;
  c.block_k = 0               # 0: 64, or 128 on TPU)
  # Prior knowledge (attention/masks.py, attention/biases.py): expressions such as
  # "local_window(64) | global_tokens([0])" and "alibi()" or "learnable(gaussian_window(8))".
  c.mask = ''                 # binary prior mask, AND-ed with causal/padding
  c.bias = ''                 # continuous prior on the scores (additive or multiplicative)
  for kind, options in attention.default_configs().items():
    c[kind] = options
  return c


def _transformer_config(*, pre_norm: bool, max_len: int) -> ml_collections.ConfigDict:
  """The `config.model` keys every transformer shares (models/transformer.py)."""
  c = ml_collections.ConfigDict()
  c.d_model = 128
  c.num_heads = 4
  c.d_ff = 512
  c.activation = 'relu'       # relu | gelu
  c.dropout = 0.0             # residual/embedding dropout
  c.activation_dropout = 0.0  # dropout after the FFN activation
  c.pre_norm = pre_norm       # pre-LN (True) or post-LN (False) blocks
  c.final_norm = True         # LayerNorm after the last block of a stack (pre-LN only)
  c.positions = 'sinusoidal'  # sinusoidal | learned | none
  c.max_len = max_len         # longest sequence (position table; fairseq --max-*-positions)
  c.scale_embeddings = True   # multiply token embeddings by √d_model (fairseq)
  c.dtype = 'float32'         # compute dtype: float32 | bfloat16 (parameters stay float32)
  return c


def model_config() -> ml_collections.ConfigDict:
  """`config.model`: the shared decoder-only transformer (models/lm.py)."""
  c = _transformer_config(pre_norm=True, max_len=512)
  c.num_layers = 2
  c.tie_embeddings = True
  # Adaptive input / softmax (Baevski & Auli 2019; Grave et al. 2017). Empty cutoffs = off.
  c.adaptive_cutoffs = ()     # e.g. (20000, 60000)
  c.adaptive_factor = 4.0
  c.adaptive_input = False
  c.adaptive_softmax = False
  c.adaptive_softmax_dropout = 0.0
  c.vocab_size = -1           # set from the data
  return c


def seq2seq_model_config() -> ml_collections.ConfigDict:
  """`config.model` of the encoder–decoder transformer (models/seq2seq.py); post-LN by
  default, as fairseq's `transformer` (normalize_before=False), 1024 positions."""
  c = _transformer_config(pre_norm=False, max_len=1024)
  c.encoder_layers = 2
  c.decoder_layers = 2
  c.share_decoder_input_output_embed = True   # output layer = target embedding (fairseq flag)
  c.share_all_embeddings = False  # source embedding = target embedding too (joint vocabulary)
  # Attention kind per role; '' = attention.kind. Options come from attention.<kind>.
  c.encoder_attention = ''    # encoder self-attention
  c.decoder_attention = ''    # decoder (causal) self-attention
  c.cross_attention = ''      # encoder–decoder attention
  c.pad_id = 1                # fairseq's <pad>; source padding is found by this id
  c.src_vocab_size = -1       # set from the data
  c.tgt_vocab_size = -1       # set from the data
  return c


def decode_config() -> ml_collections.ConfigDict:
  """`config.decode`: beam search for eval.py and BLEU during training (models/decoding.py)."""
  c = ml_collections.ConfigDict()
  c.beam_size = 5             # 1 = greedy
  # Length penalty: fairseq divides a hypothesis' log-probability by len**lenpen; GNMT (Wu et
  # al. 2016, Vaswani et al. 2017) by ((5 + len) / 6)**alpha.
  c.length_penalty = 'fairseq'  # fairseq | gnmt | none
  c.lenpen = 1.0              # fairseq --lenpen
  c.alpha = 0.6               # GNMT α
  c.max_len_a = 1.2           # output ≤ max_len_a · source length + max_len_b (fairseq)
  c.max_len_b = 10
  c.min_len = 1
  c.mode = 'auto'             # auto | incremental (key/value cache) | recompute (whole prefix)
  c.max_tokens = 8192         # source tokens per decoding batch (per device): rows × width
  # Decoding batch shapes, one compiled search each (training/translate.py). A sentence goes to
  # the narrowest of `length_buckets` that holds its source (tokens with </s>; widths are capped
  # at the model's positions, and a bucket that wide is added for longer sentences) and is
  # padded to it. Batches of a bucket have the largest of `batch_sizes` within max_tokens; what
  # is left is cut into the smaller sizes, its last batch padded with empty rows. () = exact
  # shapes: the data layer's batches, one compilation per (rows, width) they happen to have.
  c.length_buckets = (16, 32, 64, 128, 256)
  c.batch_sizes = (16, 128)   # rows per device a decoding batch may have
  c.valid_beam_size = 1       # beam of the BLEU on a validation subset during training
  c.valid_sentences = 200     # validation sentences decoded for that BLEU (0 = off)
  return c


def optimizer_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = 'adamw'            # adam | adamw | nag
  c.learning_rate = 1e-3      # peak learning rate
  c.b1 = 0.9
  c.b2 = 0.98
  c.eps = 1e-8
  c.momentum = 0.99           # NAG
  c.weight_decay = 0.0
  c.schedule = 'inverse_sqrt'  # constant | inverse_sqrt | cosine
  c.warmup_steps = 100
  c.warmup_init_lr = 0.0
  c.min_lr = 0.0              # cosine floor
  c.grad_clip_norm = 0.0      # 0 = off
  c.grad_accum_steps = 1      # micro-batches per update
  return c


# Logical axis → mesh axis (or axes, or None = replicated). Every parameter has logical axis names
# (models/partitioning.py); the batch dimension is 'batch'. FSDP shards the model dimension of
# every matrix over `fsdp` (parameters and, with them, the optimizer state); tensor parallelism
# splits attention heads and FFN columns over `tensor` (Megatron-style: column-parallel in,
# row-parallel out). Vocabulary rows are not split (vocabularies such as WikiText-103's 267,735
# types do not divide), and norms and the small per-head vectors of the attention cores stay
# replicated. Edit here to try another layout; training/distributed.py applies these rules.
LOGICAL_AXIS_RULES = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('mlp', 'tensor'),
    ('vocab', None),
    ('band', None),
    ('norm', None),
    ('head_dim', None),
    ('core', None),
)


def mesh_config() -> ml_collections.ConfigDict:
  """`config.mesh`: device mesh axis sizes (training/distributed.py `make_mesh`).

  The product of the three sizes must equal the number of devices; one of them may be -1, the
  devices left over. The batch is split over `data` × `fsdp`; parameters and optimizer state
  are sharded over `fsdp`; heads and FFN columns over `tensor` (`LOGICAL_AXIS_RULES`). The mesh
  may change between runs of one workdir: a checkpoint restores onto any mesh that can hold it.
  """
  c = ml_collections.ConfigDict()
  c.data = -1                 # data parallelism (the default: every device)
  c.fsdp = 1                  # fully sharded data parallelism (ZeRO-3)
  c.tensor = 1                # tensor (head / FFN column) parallelism
  return c


def _run_config(task: str) -> ml_collections.ConfigDict:
  """Keys every task has: seed, steps, intervals, checkpoints, loss."""
  c = ml_collections.ConfigDict()
  c.task = task               # lm | translation (which model and data train.py builds)
  c.seed = 0
  c.attention = attention_config()
  c.optimizer = optimizer_config()
  c.mesh = mesh_config()
  c.data = ml_collections.ConfigDict()
  c.train_steps = 1000
  c.log_every = 50
  c.eval_every = 500
  c.eval_batches = 20         # validation batches per periodic evaluation (-1 = whole split)
  c.checkpoint_every = 500
  c.keep_checkpoints = 3      # last N kept, plus the best on validation
  c.label_smoothing = 0.0
  c.progress_bar = True       # a bar on a terminal; plain progress lines otherwise
  # An update whose loss or gradient is inf/NaN is never applied. `stop`: the run ends with
  # exit code 3 naming the step (the last checkpoint stays the newest); `skip_update`: the
  # update is dropped, training goes on, and the skips are counted (`skipped_updates`).
  c.nan_policy = 'stop'       # stop | skip_update
  c.inject_nonfinite_step = 0  # testing only: update k's token weights are made +inf (0 = off)
  # Testing only: once step k's checkpoint files are written, and before its checksums, the
  # process SIGKILLs itself (0 = off): the crash that leaves a saved step uncommitted.
  c.inject_kill_before_commit_step = 0
  # Rank collapse and gradient norms per layer on the first `examples` validation sequences,
  # every `every` updates and after the last (0 = off), into metrics.jsonl and TensorBoard
  # (training/diagnostics.py; what eval.py --analysis=collapse measures on a checkpoint).
  c.diagnostics = ml_collections.ConfigDict({'every': 0, 'examples': 16})
  return c


def base_config() -> ml_collections.ConfigDict:
  """A language-modelling config (models/lm.py): sequences of `seq_len` tokens."""
  c = _run_config('lm')
  c.model = model_config()
  c.batch_size = 32           # sequences per update (split across devices and micro-batches)
  c.seq_len = 128             # tokens per training sequence
  c.eval_context_window = 0   # eval.py default: tokens of context before each scored window
  return c


def translation_base_config() -> ml_collections.ConfigDict:
  """A translation config (models/seq2seq.py): batches by token count (`data.max_tokens`)."""
  c = _run_config('translation')
  c.model = seq2seq_model_config()
  c.decode = decode_config()
  c.label_smoothing = 0.1
  return c
