"""The V-STAR RL stage: generate (VED or beam) -> score -> Sibling-GRPO update, resumable.

Host side of rl.step's jitted iteration: deterministic batches of rollout users (a
permutation per epoch from seed and epoch; the cursor lives in the checkpointed state and
advances here), value-head pretraining once before the first iteration, periodic
validation by constrained beam search (valid HR/NDCG, stage 'rl' in metrics.jsonl), Orbax
checkpoints (latest + best by valid NDCG@10) under <workdir>/checkpoints/rl and
auto-resume, bit-for-bit. Step 0 is validated and saved first: the SFT policy (with its
pretrained V) is the baseline every later step must beat to be kept.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Mapping, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from vstar_jax import parallel
from vstar_jax.data import batching
from vstar_jax.data import types
from vstar_jax.eval import validate
from vstar_jax.model import backbone
from vstar_jax.rl import rewards as rewards_lib
from vstar_jax.rl import rollouts as rollouts_lib
from vstar_jax.rl import settings as settings_lib
from vstar_jax.rl import step as step_lib
from vstar_jax.rl import value_pretrain
from vstar_jax.sid import trie as trie_lib
from vstar_jax.train import checkpoint as checkpoint_lib
from vstar_jax.train import metrics_log
from vstar_jax.train import run_loop
from vstar_jax.train import state as state_lib

STAGE = 'rl'
VALUE_STAGE = 'rl_value'
BEST_METRIC = run_loop.BEST_METRIC


@dataclasses.dataclass
class RlResult:
  """params: the kept (best-by-valid) policy; final_params: the policy after the last step."""
  params: dict
  best_valid: dict
  steps: int
  best_step: int = -1
  final_params: Optional[dict] = None


def train(config: ml_collections.ConfigDict, dataset: types.Dataset, workdir: pathlib.Path,
          sft_params, cfg, stop_at_step: Optional[int] = None,
          item_emb: Optional[np.ndarray] = None,
          rewards: Mapping[str, rewards_lib.RewardFn] = rewards_lib.REWARDS,
          rollouts: Mapping[str, rollouts_lib.RolloutFn] = rollouts_lib.ROLLOUTS) -> RlResult:
  """Runs (or resumes) V-STAR RL from the SFT policy; returns the best-by-valid params.

  Args:
    config: the full config (rl, eval.batch_size, seed).
    dataset: the dataset (rollout users, and the valid split for selection).
    workdir: run directory (checkpoints/rl, metrics.jsonl stages 'rl' and 'rl_value').
    sft_params: the SFT policy: RL's start and its frozen KL reference.
    cfg: the model's static config (model.backbone.model_config).
    stop_at_step: stop (after checkpointing) once this many iterations are done, as a
      preemption would; a re-run resumes.
    item_emb: [I, D] item vectors: the prefix reward's miss penalty (rl.use_item_embeddings)
      or the simulator's `preference` reward reads them.
    rewards: the registry rl.reward names one of (the simulator benchmarks pass
      {**rewards.REWARDS, **simulator_reward.REWARDS}).
    rollouts: the registry rl.rollout names one of (the simulator benchmarks add
      rl.simulator_oracle.ROLLOUTS).

  Raises:
    run_loop.TrainingDiverged: the loss became NaN/Inf (the last good checkpoint is kept).
  """
  r = config.rl
  settings_lib.validate_config(config, rewards, rollouts)
  if r.use_item_embeddings and item_emb is None:
    raise ValueError('--config.rl.use_item_embeddings needs item embeddings (train(item_emb=...))')
  mesh = parallel.make_mesh()
  if r.batch_users % mesh.shape[parallel.DATA_AXIS]:
    raise ValueError(f'--config.rl.batch_users={r.batch_users} is not divisible by the '
                     f'{mesh.shape[parallel.DATA_AXIS]} devices')
  users = backbone.user_rows(cfg, dataset, r.train_splits)
  if len(users) < r.batch_users:
    raise ValueError(f'--config.rl.batch_users={r.batch_users} exceeds the {len(users)} '
                     f'rollout rows')
  steps_per_epoch = len(users) // r.batch_users
  total = settings_lib.num_steps(r, len(users))
  settings = settings_lib.RlSettings.from_config(config, total, rewards, rollouts)
  programs = step_lib.make_programs(cfg, settings, mesh)
  host_trie = trie_lib.build_trie(dataset.item_codes, dataset.num_codes)
  trie = parallel.replicate(host_trie, mesh)
  if item_emb is not None:
    item_emb = parallel.replicate(np.asarray(item_emb, np.float32), mesh)
  run = run_loop.StageRun(workdir, STAGE)
  state, resumed = run.resume(parallel.replicate(
      step_lib.init_state(sft_params, settings, config.seed), mesh))
  valid_rows = batching.validation_rows(len(dataset.splits[r.valid_split]), r.valid_max_rows)

  def validate_at(step, params):
    valid = validate.validation_metrics(params, cfg, host_trie, dataset,
                                        r.valid_split, valid_rows, r.valid_beams,
                                        config.eval.batch_size)
    run.write(step, **valid)
    logging.info('rl step %d: valid HR@10 %.4f NDCG@10 %.4f', step, valid['valid_HR@10'],
                 valid[BEST_METRIC])
    return valid

  if not int(state.value_pretrained):
    if run.is_writer:
      run.log.truncate_after(VALUE_STAGE, 0)
    if r.value_pretrain_steps:
      state = _pretrain_value_head(state, programs, users, r, config.seed, steps_per_epoch, trie,
                                   item_emb, mesh, run)
    state = parallel.replicate(state.replace(value_pretrained=np.ones((), np.int32)), mesh)
  if not resumed:
    run.save(0, state, validate_at(0, state.params))

  step = int(state.step)
  progress = metrics_log.Progress(STAGE, total, start=step, unit='iterations')
  logging.info('rl: %d rollout rows, %d users/iteration on %d devices, rollout %s, G=%d, %d steps',
               len(users), r.batch_users, mesh.shape[parallel.DATA_AXIS], r.rollout,
               r.group_size, total)
  while step < total:
    epoch, index = int(state.data_epoch), int(state.data_index)
    rows = batching.batch_rows(len(users), r.batch_users, config.seed, epoch, index)
    start = time.perf_counter()
    state, metrics = programs.iteration(state, users.batch(rows, mesh), trie, item_emb)
    metrics = jax.device_get(metrics)
    wall = time.perf_counter() - start
    epoch, index = batching.next_position(epoch, index, steps_per_epoch)
    state = state.replace(data_epoch=parallel.replicate(np.int32(epoch), mesh),
                          data_index=parallel.replicate(np.int32(index), mesh))
    step += 1
    run.check_finite(step, metrics, ('loss', 'grad_norm'))
    if step % r.log_every == 0 or step == total:
      run.write(step, wall_s=wall, users_per_s=r.batch_users / wall, **metrics)
      progress.update(step, f'loss {metrics["loss"]:.4f} hit {metrics["rollout_hit"]:.3f}')
    if step % r.valid_every == 0 or step == total:
      run.save(step, state, validate_at(step, state.params))
    elif (r.checkpoint_every and step % r.checkpoint_every == 0) or step == stop_at_step:
      run.save(step, state)
    if stop_at_step is not None and step >= stop_at_step:
      run.stop()
      return RlResult(parallel.to_host(state.params), {}, step)
  done = run.finish(state, step)
  return RlResult(parallel.to_host(done.state.params), done.best_valid, step, done.best_step,
                  parallel.to_host(state.params))


def _pretrain_value_head(state, programs, users: batching.UserRows, r, seed: int,
                         steps_per_epoch: int, trie, item_emb, mesh, run: run_loop.StageRun):
  """Value-head pretraining on rollouts of the (unchanged) SFT policy over epoch-0 batches."""
  state, key = state_lib.split_rng(state)
  batches = (users.batch(batching.batch_rows(len(users), r.batch_users, seed, 0,
                                             i % steps_per_epoch), mesh)
             for i in range(r.value_pretrain_steps))
  progress = metrics_log.Progress('rl value pretraining', r.value_pretrain_steps)

  def log_fn(i, metrics):
    if (i % r.log_every == 0 or i == r.value_pretrain_steps) and run.is_writer:
      run.log.write(VALUE_STAGE, i, **metrics)
    progress.update(i, f'value loss {metrics["value_loss"]:.4f}')

  params, losses = value_pretrain.pretrain(programs.value, state.params, batches, trie, item_emb,
                                           key, mesh, log_fn)
  logging.info('rl: value pretraining %d steps, loss %.4f -> %.4f', len(losses), losses[0],
               losses[-1])
  return state.replace(params=params)


def state_template(config: ml_collections.ConfigDict, params_template) -> step_lib.RlState:
  """The abstract (shape-only) RlState an RL checkpoint of this config restores onto."""
  settings = settings_lib.RlSettings.from_config(config)
  return jax.eval_shape(lambda p: step_lib.init_state(p, settings, config.seed), params_template)


def restore_best(config: ml_collections.ConfigDict, workdir: pathlib.Path, params_template):
  """(params, step) of the best (else latest) RL checkpoint in workdir/checkpoints/rl, or None."""
  directory = pathlib.Path(workdir) / 'checkpoints' / STAGE
  if not directory.exists():
    return None
  ckpt = checkpoint_lib.Checkpointer(directory, best_metric=BEST_METRIC, read_only=True)
  template = state_template(config, params_template)
  try:
    restored = ckpt.restore_best(template) or ckpt.restore_latest(template)
  finally:
    ckpt.close()
  return None if restored is None else (restored[0].params, restored[1]['step'])
