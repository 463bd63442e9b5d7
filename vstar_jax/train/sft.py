"""Supervised next-item training of the decoder (SFT), with per-epoch validation and auto-resume.

Each train row (history -> next item) is one example, as in MiniOneRec's sliding
windows; the loss is the mean over the L levels of the (label-smoothed)
cross-entropy of the level's code. Validation runs constrained beam search on the
valid split after every epoch; the best epoch by valid NDCG@10 is kept beside the
latest checkpoints. Re-running with the same workdir resumes from the latest
checkpoint (params, optimizer, step, RNG and data position), bit-for-bit.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from vstar_jax.default_config import ConfigError
from vstar_jax.data import batching
from vstar_jax.data import types
from vstar_jax.eval import validate
from vstar_jax.model import decoder
from vstar_jax.model import layout
from vstar_jax.sid import trie as trie_lib
from vstar_jax.train import metrics_log
from vstar_jax.train import run_loop
from vstar_jax.train import state as state_lib

STAGE = 'sft'
BEST_METRIC = run_loop.BEST_METRIC


def validate_config(s: ml_collections.ConfigDict) -> None:
  """Rejects impossible config.sft settings, naming the flag."""
  if s.epochs < 1 or s.batch_size < 1:
    raise ConfigError('sft.epochs' if s.epochs < 1 else 'sft.batch_size', 'must be >= 1')
  if not 0 <= s.ema_decay < 1:
    raise ConfigError('sft.ema_decay', f'must be in [0, 1) (0: off), got {s.ema_decay}')
  if not 0 <= s.history_dropout < 1:
    raise ConfigError('sft.history_dropout', f'must be in [0, 1), got {s.history_dropout}')
  if s.valid_beams < 10:
    raise ConfigError('sft.valid_beams',
                      f'must be >= 10 (validation selects by NDCG@10), got {s.valid_beams}')
  for split in s.train_splits:
    if split not in ('train', 'valid', 'holdout'):
      raise ConfigError('sft.train_splits', f'{split!r} is not train, valid or holdout')


def decoder_config(config: ml_collections.ConfigDict, dataset: types.Dataset) -> decoder.DecoderConfig:
  """DecoderConfig from config.model and the dataset's SID shape (and item-feature keys)."""
  m = config.model
  keys, dim = (), 0
  if m.item_text_features:
    if dataset.item_features is None:
      raise ValueError('--config.model.item_text_features=True but the dataset carries no item '
                       'features (load it with pipeline.load_dataset)')
    keys, dim = layout.item_feature_table(dataset.item_codes, dataset.num_codes,
                                           dataset.item_features)[0], dataset.item_features.shape[1]
  return decoder.DecoderConfig(
      num_levels=dataset.num_levels, num_codes=dataset.num_codes, max_history=dataset.max_history,
      num_layers=m.num_layers, d_model=m.d_model, num_heads=m.num_heads, d_ff=m.d_ff,
      dropout=m.dropout, tie_embeddings=m.tie_embeddings, dtype=m.dtype,
      item_hash_buckets=m.item_hash_buckets, item_feature_keys=keys, item_feature_dim=dim)


def sft_loss(params, cfg: decoder.DecoderConfig, history, target, rng, label_smoothing: float):
  """Mean label-smoothed NLL of the target codes.

  Args:
    history: [B, T, L] int32; target: [B, L] int32.

  Returns:
    loss [] and metrics {'nll', 'acc_L1'.. per level}.
  """
  log_probs, _, _ = decoder.forward_train(params, cfg, history, target, rng=rng, train=True)
  onehot = jax.nn.one_hot(target, cfg.num_codes)
  smoothed = (1.0 - label_smoothing) * onehot + label_smoothing / cfg.num_codes
  loss = -(smoothed * log_probs).sum(-1).mean()
  nll = -(onehot * log_probs).sum(-1).mean()
  correct = (jnp.argmax(log_probs, -1) == target).mean(0)
  out = {'loss': loss, 'nll': nll}
  out.update({f'acc_L{l + 1}': correct[l] for l in range(cfg.num_levels)})
  return loss, out


EMA_KEY = 'ema_params'


def update_ema(ema, params, step, decay: float):
  """EMA of the weights with the TF-style warm-up: decay_t = min(decay, (1 + t) / (10 + t)).

  The warm-up keeps the average from being dominated by the random init early on.
  `step` is the number of updates already applied to `params` (>= 1).
  """
  rate = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema, params)


def eval_params(state: state_lib.TrainState):
  """The weights that are validated, kept and exported: the EMA if one is kept, else the raw ones."""
  return state.extra.get(EMA_KEY, state.params)


def drop_history_items(history, rate: float, key: jax.Array):
  """Masks each history item but the most recent one to padding with probability `rate`.

  An augmentation against memorising whole histories on small train splits: the
  model must predict from partial histories. Masked items become PAD keys that
  attention ignores; the other items keep their recency positions.

  Args:
    history: [B, T, L] int32 codes, -1 at padding; most recent item at T-1.
  """
  if rate <= 0:
    return history
  drop = jax.random.bernoulli(key, rate, history.shape[:2])
  drop = drop.at[:, -1].set(False)
  return jnp.where(drop[..., None], types.PAD, history)


def make_train_step(cfg: decoder.DecoderConfig, optimizer, label_smoothing: float,
                    ema_decay: float = 0.0, history_dropout: float = 0.0):
  """Jitted (state, history [B,T,L], target [B,L]) -> (state, metrics); the state is donated.

  With ema_decay > 0 the state's extra[EMA_KEY] holds an EMA of the weights, updated each step;
  history_dropout masks history items (drop_history_items).
  """

  @functools.partial(jax.jit, donate_argnums=0)
  def train_step(state: state_lib.TrainState, history, target):
    state, key = state_lib.split_rng(state)
    if history_dropout > 0:
      key, drop_key = jax.random.split(key)
      history = drop_history_items(history, history_dropout, drop_key)
    grads, metrics = jax.grad(sft_loss, has_aux=True)(state.params, cfg, history, target, key,
                                                      label_smoothing)
    metrics['grad_norm'] = jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads)))
    state = state_lib.apply_gradients(state, grads, optimizer)
    if ema_decay > 0:
      ema = update_ema(state.extra[EMA_KEY], state.params, state.step, ema_decay)
      state = state.replace(extra={**state.extra, EMA_KEY: ema})
    return state, metrics

  return train_step


def initial_state(cfg: decoder.DecoderConfig, optimizer, init_key: jax.Array, state_key: jax.Array,
                  ema_decay: float, dataset: types.Dataset | None = None,
                  init_params=None) -> state_lib.TrainState:
  """Step-0 state; with ema_decay > 0 it also carries the weight EMA (initialised to the weights).

  With `dataset`, the frozen item-feature table (cfg.item_feature_dim > 0) is filled from
  its item_features. Without it this is the restore template for SFT checkpoints (its
  structure must match what was saved). `init_params` (continued SFT) replace the fresh init.
  """
  features = None
  if dataset is not None and cfg.item_feature_dim:
    features = layout.item_feature_table(dataset.item_codes, dataset.num_codes,
                                          dataset.item_features)[1]
  params = decoder.init_params(cfg, init_key, features)
  if init_params is not None:
    params = jax.tree.map(jnp.array, init_params)
  # A copy, not an alias: the train step donates the state, and one buffer cannot be donated twice.
  extra = {EMA_KEY: jax.tree.map(jnp.copy, params)} if ema_decay > 0 else None
  return state_lib.TrainState.create(params, optimizer, state_key, extra=extra)


@dataclasses.dataclass(frozen=True)
class Schedule:
  """How many rows, batches and steps one SFT run takes (a function of the config and data)."""
  num_rows: int
  batch_size: int
  steps_per_epoch: int
  total_steps: int


def schedule(s: ml_collections.ConfigDict, num_rows: int) -> Schedule:
  """The SFT schedule of `num_rows` training rows under config.sft."""
  batch_size = min(s.batch_size, num_rows)
  steps_per_epoch = num_rows // batch_size
  return Schedule(num_rows, batch_size, steps_per_epoch, steps_per_epoch * s.epochs)


def make_optimizer(s: ml_collections.ConfigDict, plan: Schedule):
  """Clipped AdamW (warmup + cosine over the whole run) of config.sft."""
  return state_lib.make_optimizer(s.lr, min(s.warmup_steps, plan.total_steps - 1),
                                  plan.total_steps, s.weight_decay, s.clip_norm, s.b1, s.b2)


def state_template(config: ml_collections.ConfigDict, dataset: types.Dataset):
  """The abstract (shape-only) SFT TrainState a checkpoint of this config restores onto."""
  cfg = decoder_config(config, dataset)
  plan = schedule(config.sft, len(batching.UserRows.from_dataset(dataset, config.sft.train_splits)))
  keys = jax.random.split(jax.random.key(config.seed))
  return jax.eval_shape(lambda: initial_state(cfg, make_optimizer(config.sft, plan), keys[0],
                                              keys[1], config.sft.ema_decay))


@dataclasses.dataclass
class SftResult:
  params: dict
  cfg: decoder.DecoderConfig
  best_valid: dict
  steps: int
  best_step: int | None = None  # the kept step (None: stopped early, nothing kept)


def train(config: ml_collections.ConfigDict, dataset: types.Dataset, workdir: pathlib.Path,
          stop_at_step: int | None = None, init_params=None) -> SftResult:
  """Trains (or resumes training of) the decoder; returns the best-by-valid params.

  Args:
    config: the full config (model, sft, eval, seed).
    dataset: the dataset with the SIDs to train on.
    workdir: run directory (checkpoints under workdir/checkpoints/sft).
    stop_at_step: stop once this many steps are done, as a preemption would
      (tests use it to check that a resumed run matches an uninterrupted one).
    init_params: start from these params (continued SFT; sft.init_workdir) instead of a fresh
      init; the optimizer (and the EMA, from these params) starts afresh.
  """
  s = config.sft
  cfg = decoder_config(config, dataset)
  trie = trie_lib.build_trie(dataset.item_codes, dataset.num_codes)
  history, target = batching.training_rows(dataset, s.train_splits)
  plan = schedule(s, history.shape[0])
  optimizer = make_optimizer(s, plan)
  init_key, state_key = jax.random.split(jax.random.key(config.seed))
  run = run_loop.StageRun(workdir, STAGE)
  state = initial_state(cfg, optimizer, init_key, state_key, s.ema_decay, dataset, init_params)
  state, _ = run.resume(state)
  valid_rows = batching.validation_rows(len(dataset.splits[s.valid_split]), s.valid_max_rows)
  train_step = make_train_step(cfg, optimizer, s.label_smoothing, s.ema_decay, s.history_dropout)
  progress = metrics_log.Progress('sft', plan.total_steps, start=int(state.step))
  logging.info('sft: %d rows, batch %d, %d steps/epoch, %d epochs, %d params', plan.num_rows,
               plan.batch_size, plan.steps_per_epoch, s.epochs,
               sum(x.size for x in jax.tree.leaves(state.params)))
  step = int(state.step)
  while int(state.data_epoch) < s.epochs:
    epoch = int(state.data_epoch)
    order = batching.epoch_order(plan.num_rows, config.seed, epoch)
    for index in range(int(state.data_index), plan.steps_per_epoch):
      rows = order[index * plan.batch_size:(index + 1) * plan.batch_size]
      state, metrics = train_step(state, history[rows], target[rows])
      state = state.replace(data_index=jnp.int32(index + 1))
      step += 1
      if step % s.log_every_steps == 0 or index + 1 == plan.steps_per_epoch:
        metrics = jax.device_get(metrics)
        run.check_finite(step, metrics)
        run.write(step, epoch=epoch, **metrics)
        progress.update(step, f'loss {metrics["loss"]:.4f}')
      if stop_at_step is not None and step >= stop_at_step:
        run.save(step, state)
        run.stop()
        return SftResult(eval_params(state), cfg, {}, step)
      if (s.checkpoint_every_steps and step % s.checkpoint_every_steps == 0
          and index + 1 < plan.steps_per_epoch):
        run.save(step, state)
    state = state.replace(data_epoch=jnp.int32(epoch + 1), data_index=jnp.int32(0))
    valid = validate.validation_metrics(eval_params(state), cfg, trie, dataset, s.valid_split,
                                        valid_rows, s.valid_beams, config.eval.batch_size)
    run.write(step, epoch=epoch + 1, **valid)
    logging.info('sft epoch %d/%d: valid HR@10 %.4f NDCG@10 %.4f', epoch + 1, s.epochs,
                 valid['valid_HR@10'], valid[BEST_METRIC])
    run.save(step, state, valid)
  done = run.finish(state, step, keep_best=s.keep_best)
  return SftResult(eval_params(done.state), cfg, done.best_valid, step, done.best_step)
