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
from typing import Any
import functools
import pathlib

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vstar_jax import parallel
from vstar_jax.default_config import ConfigError
from vstar_jax.data import batching
from vstar_jax.data import types
from vstar_jax.eval import validate
from vstar_jax.model import backbone
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
  if s.valid_split not in ('train', 'valid', 'holdout'):
    raise ConfigError('sft.valid_split', f'{s.valid_split!r} is not train, valid or holdout '
                      '(the kept epoch is chosen on it: never on test)')
  if s.valid_beams < 10:
    raise ConfigError('sft.valid_beams',
                      f'must be >= 10 (validation selects by NDCG@10), got {s.valid_beams}')
  for split in s.train_splits:
    if split not in ('train', 'valid', 'holdout'):
      raise ConfigError('sft.train_splits', f'{split!r} is not train, valid or holdout')


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


def make_train_step(cfg, optimizer, label_smoothing: float,
                    ema_decay: float = 0.0, history_dropout: float = 0.0, mesh=None):
  """Jitted (state, history [B,T,L], target [B,L]) -> (state, metrics); the state is donated.

  Data-parallel over `mesh` (default: every device): the batch is split over the 'data' axis,
  the state replicated; XLA partitions the step, so it equals the one-device step on the same
  global batch up to float summation order (tests/test_sft.py).
  With ema_decay > 0 the state's extra[EMA_KEY] holds an EMA of the weights, updated each step;
  history_dropout masks history items (drop_history_items).
  """
  mesh = mesh or parallel.make_mesh()
  replicated, sharded = parallel.replicated(mesh), parallel.sharded(mesh)

  @functools.partial(jax.jit, donate_argnums=0, in_shardings=(replicated, sharded, sharded),
                     out_shardings=(replicated, replicated))
  def train_step(state: state_lib.TrainState, history, target):
    state, key = state_lib.split_rng(state)
    if history_dropout > 0:
      key, drop_key = jax.random.split(key)
      history = drop_history_items(history, history_dropout, drop_key)
    grads, metrics = jax.grad(backbone.sft_loss, has_aux=True)(state.params, cfg, history, target,
                                                               key, label_smoothing)
    metrics['grad_norm'] = jnp.sqrt(sum(jnp.sum(g ** 2) for g in jax.tree.leaves(grads)))
    state = state_lib.apply_gradients(state, grads, optimizer)
    if ema_decay > 0:
      ema = update_ema(state.extra[EMA_KEY], state.params, state.step, ema_decay)
      state = state.replace(extra={**state.extra, EMA_KEY: ema})
    return state, metrics

  return train_step


def initial_state(cfg, optimizer, init_key: jax.Array, state_key: jax.Array,
                  ema_decay: float, dataset: types.Dataset | None = None,
                  init_params=None) -> state_lib.TrainState:
  """Step-0 state; with ema_decay > 0 it also carries the weight EMA (initialised to the weights).

  With `dataset`, the frozen item-feature table (cfg.item_feature_dim > 0) is filled from
  its item_features. Without it this is the restore template for SFT checkpoints (its
  structure must match what was saved). `init_params` (continued SFT) replace the fresh init.
  """
  if init_params is not None:
    params = jax.tree.map(jnp.array, init_params)
  else:
    params = backbone.init_params(cfg, init_key, dataset)
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


def schedule(s: ml_collections.ConfigDict, num_rows: int, num_devices: int = 1) -> Schedule:
  """The SFT schedule of `num_rows` training rows under config.sft on `num_devices` devices.

  sft.batch_size is the global batch (the same model on any number of devices); each device
  takes batch_size / num_devices rows of it.
  """
  if s.batch_size % num_devices:
    raise ConfigError('sft.batch_size', f'{s.batch_size} is not divisible by the {num_devices} '
                      'devices (it is the global batch, split over every device)')
  batch_size = min(s.batch_size, num_rows - num_rows % num_devices)
  if batch_size < 1:
    raise ValueError(f'sft: {num_rows} training rows cannot fill a batch on {num_devices} devices')
  steps_per_epoch = num_rows // batch_size
  return Schedule(num_rows, batch_size, steps_per_epoch, steps_per_epoch * s.epochs)


def make_optimizer(s: ml_collections.ConfigDict, plan: Schedule):
  """Clipped AdamW (warmup + cosine over the whole run) of config.sft."""
  return state_lib.make_optimizer(s.lr, min(s.warmup_steps, plan.total_steps - 1),
                                  plan.total_steps, s.weight_decay, s.clip_norm, s.b1, s.b2)


def state_template(config: ml_collections.ConfigDict, dataset: types.Dataset):
  """The abstract (shape-only) SFT TrainState a checkpoint of this config restores onto."""
  cfg = backbone.model_config(config, dataset)
  plan = schedule(config.sft, len(batching.UserRows.from_dataset(dataset, config.sft.train_splits)))
  keys = jax.random.split(jax.random.key(config.seed))
  return jax.eval_shape(lambda: initial_state(cfg, make_optimizer(config.sft, plan), keys[0],
                                              keys[1], config.sft.ema_decay))


@dataclasses.dataclass
class SftResult:
  params: dict
  cfg: Any  # the backbone's static config (model.backbone.model_config)
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
  cfg = backbone.model_config(config, dataset)
  trie = trie_lib.build_trie(dataset.item_codes, dataset.num_codes)
  history, target = backbone.training_rows(cfg, dataset, s.train_splits, s.tasks)
  mesh = parallel.make_mesh()
  plan = schedule(s, history.shape[0], mesh.size)
  optimizer = make_optimizer(s, plan)
  init_key, state_key = jax.random.split(jax.random.key(config.seed))
  run = run_loop.StageRun(workdir, STAGE)
  state = parallel.replicate(initial_state(cfg, optimizer, init_key, state_key, s.ema_decay,
                                           dataset, init_params), mesh)
  state, _ = run.resume(state)
  valid_rows = batching.validation_rows(len(dataset.splits[s.valid_split]), s.valid_max_rows)
  train_step = make_train_step(cfg, optimizer, s.label_smoothing, s.ema_decay, s.history_dropout,
                               mesh)
  progress = metrics_log.Progress('sft', plan.total_steps, start=int(state.step))
  logging.info('sft: %d rows, batch %d on %d devices, %d steps/epoch, %d epochs, %d params',
               plan.num_rows, plan.batch_size, mesh.size, plan.steps_per_epoch, s.epochs,
               sum(x.size for x in jax.tree.leaves(state.params)))
  position = lambda epoch, index: {'data_epoch': parallel.replicate(np.int32(epoch), mesh),
                                   'data_index': parallel.replicate(np.int32(index), mesh)}
  mine = parallel.process_rows(plan.batch_size)
  step = int(state.step)
  while int(state.data_epoch) < s.epochs:
    epoch = int(state.data_epoch)
    order = batching.epoch_order(plan.num_rows, config.seed, epoch)
    for index in range(int(state.data_index), plan.steps_per_epoch):
      rows = order[index * plan.batch_size:(index + 1) * plan.batch_size][mine]
      batch = parallel.shard_batch((history[rows], target[rows]), mesh)
      state, metrics = train_step(state, *batch)
      state = state.replace(**position(epoch, index + 1))
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
    state = state.replace(**position(epoch + 1, 0))
    valid = validate.validation_metrics(eval_params(state), cfg, trie, dataset, s.valid_split,
                                        valid_rows, s.valid_beams, config.eval.batch_size)
    run.write(step, epoch=epoch + 1, **valid)
    logging.info('sft epoch %d/%d: valid HR@10 %.4f NDCG@10 %.4f', epoch + 1, s.epochs,
                 valid['valid_HR@10'], valid[BEST_METRIC])
    run.save(step, state, valid)
  done = run.finish(state, step, keep_best=s.keep_best)
  return SftResult(eval_params(done.state), cfg, done.best_valid, step, done.best_step)
