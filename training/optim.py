"""Optimizers and learning-rate schedules of the reference recipes (fairseq names).

- `adam`: Adam (Kingma & Ba 2015), with L2 weight decay added to the gradient when
  `weight_decay > 0`; `adamw`: decoupled weight decay (Loshchilov & Hutter 2019), which is
  what fairseq's `--optimizer adam --weight-decay` does.
- `nag`: Nesterov momentum SGD, as fairseq's `--optimizer nag` (momentum 0.99). fairseq rescales
  the momentum buffer when the learning rate changes; optax's `sgd(nesterov=True)` does not. The
  two agree under a constant rate and differ slightly during warmup and decay.

Schedules all start with a linear warmup from `warmup_init_lr` to `learning_rate`:
- `constant`;
- `inverse_sqrt` (fairseq): lr · √warmup / √step after warmup;
- `cosine` (fairseq, one period, `--t-mult 1`): from `learning_rate` down to `min_lr` over the
  remaining `train_steps − warmup_steps` updates.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax

SCHEDULES = ('constant', 'inverse_sqrt', 'cosine')
OPTIMIZERS = ('adam', 'adamw', 'nag')


def learning_rate_schedule(config: ml_collections.ConfigDict, train_steps: int) -> optax.Schedule:
  """The schedule named by `config.schedule` (config = `config.optimizer`)."""
  if config.schedule not in SCHEDULES:
    raise ValueError(f'unknown optimizer.schedule {config.schedule!r}; known: {", ".join(SCHEDULES)}')
  peak, warmup = config.learning_rate, max(int(config.warmup_steps), 0)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    # Update number, 1-based as in fairseq, so the first update already uses a nonzero rate.
    n = step + 1.0
    warm = config.warmup_init_lr + (peak - config.warmup_init_lr) * n / max(warmup, 1)
    if config.schedule == 'constant':
      after = jnp.asarray(peak, jnp.float32)
    elif config.schedule == 'inverse_sqrt':
      after = peak * jnp.sqrt(max(warmup, 1) / n)
    else:
      period = max(train_steps - warmup, 1)
      progress = jnp.clip((n - warmup) / period, 0.0, 1.0)
      after = config.min_lr + 0.5 * (peak - config.min_lr) * (1 + jnp.cos(jnp.pi * progress))
    return jnp.where(n <= warmup, warm, after) if warmup > 0 else after

  return schedule


def make_optimizer(config: ml_collections.ConfigDict, train_steps: int) -> optax.GradientTransformation:
  """Gradient clipping, then the optimizer named by `config.name` (config = `config.optimizer`)."""
  if config.name not in OPTIMIZERS:
    raise ValueError(f'unknown optimizer.name {config.name!r}; known: {", ".join(OPTIMIZERS)}')
  if config.grad_accum_steps < 1:
    raise ValueError(f'optimizer.grad_accum_steps must be ≥ 1, got {config.grad_accum_steps}')
  lr = learning_rate_schedule(config, train_steps)
  chain = []
  if config.grad_clip_norm > 0:
    chain.append(optax.clip_by_global_norm(config.grad_clip_norm))
  if config.name == 'adamw':
    chain.append(optax.adamw(lr, b1=config.b1, b2=config.b2, eps=config.eps,
                             weight_decay=config.weight_decay))
  else:
    if config.weight_decay > 0:
      chain.append(optax.add_decayed_weights(config.weight_decay))
    if config.name == 'adam':
      chain.append(optax.adam(lr, b1=config.b1, b2=config.b2, eps=config.eps))
    else:
      chain.append(optax.sgd(lr, momentum=config.momentum, nesterov=True))
  return optax.chain(*chain)
