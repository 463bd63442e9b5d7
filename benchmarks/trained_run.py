"""A trained workdir as the benchmarks see it: its own config, data, kept model and value heads.

The config is the one the run recorded (W/config.json, written by the training stages: model
size, SIDs, data holdout, EMA), so any workdir the CLI trained restores without model flags. The model is W's kept RL
policy when there is one (its V and Q heads trained during RL), else its kept SFT model
with the heads fitted on rollouts of the rows the SFT policy never fit (the 'holdout' split
when the run has one, else config.rl.train_splits) by rl.value_pretrain, as the RL stage
does before iterating.
"""

from __future__ import annotations

import dataclasses
import pathlib

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vstar_jax import parallel
from vstar_jax import pipeline
from vstar_jax import trained
from vstar_jax import workdir as workdir_lib
from vstar_jax.data import batching
from vstar_jax.data import types
from vstar_jax.model import decoder
from vstar_jax.rl import rewards as rewards_lib
from vstar_jax.rl import settings as settings_lib
from vstar_jax.rl import step as step_lib
from vstar_jax.rl import value_pretrain
from vstar_jax.sid import trie as trie_lib


@dataclasses.dataclass
class TrainedRun:
  config: ml_collections.ConfigDict
  dataset: types.Dataset
  params: dict
  cfg: decoder.DecoderConfig
  trie: trie_lib.Trie
  heads: str        # where the value heads come from
  head_losses: list


def recorded_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
  """W's recorded training config on top of today's defaults (vstar_jax.workdir)."""
  config = workdir_lib.training_config(workdir)
  if config is None:
    raise SystemExit(f'{workdir} records no training config: --workdir must be a run the CLI trained')
  return config


def load(workdir: str, data_dir: str = '', dataset_name: str = '', head_steps: int = 100,
         seed: int = 0) -> TrainedRun:
  """The kept model of `workdir` with trained value heads (fitted for `head_steps` if needed)."""
  workdir = pathlib.Path(workdir)
  config = recorded_config(workdir)
  if data_dir:
    config.data_dir = data_dir
  if dataset_name and dataset_name != config.dataset:
    raise SystemExit(f'--dataset={dataset_name} but {workdir} was trained on {config.dataset}')
  dataset = pipeline.load_dataset(config, workdir)
  trie = trie_lib.build_trie(dataset.item_codes, dataset.num_codes)
  restored = trained.restore(config, workdir, dataset, 'sft')
  if restored is None:
    raise SystemExit(f'no SFT checkpoint in {workdir}/checkpoints/sft: train one first')
  params, cfg = restored.params, restored.cfg
  rl = trained.restore(config, workdir, dataset, 'rl')
  if rl is not None:
    return TrainedRun(config, dataset, rl.params, cfg, trie, 'rl_checkpoint', [])
  params, losses = fit_heads(config, dataset, params, cfg, head_steps, seed)
  splits = 'holdout' if 'holdout' in dataset.splits else '+'.join(config.rl.train_splits)
  return TrainedRun(config, dataset, params, cfg, trie, f'fitted_{head_steps}_steps_on_{splits}',
                    losses)


def fit_heads(config, dataset, params, cfg, steps: int, seed: int, item_emb=None,
              rewards=rewards_lib.REWARDS):
  """V and Q fitted on `steps` batches of rollouts of the frozen policy (rl.value_pretrain);
  item_emb [I, D]: what the reward reads, if it reads any (the simulator's item vectors);
  rewards: the registry config.rl.reward names one of (the simulator adds its own)."""
  r = config.rl
  splits = ('holdout',) if 'holdout' in dataset.splits else tuple(r.train_splits)
  settings = settings_lib.RlSettings.from_config(config, rewards=rewards)
  mesh = parallel.make_mesh()
  programs = step_lib.make_programs(cfg, settings, mesh)
  users = batching.UserRows.from_dataset(dataset, splits)
  per_epoch = len(users) // r.batch_users
  batches = (users.batch(batching.batch_rows(len(users), r.batch_users, seed, 0, i % per_epoch),
                         mesh) for i in range(steps))
  trie = parallel.replicate(trie_lib.build_trie(dataset.item_codes, dataset.num_codes), mesh)
  if item_emb is not None:
    item_emb = parallel.replicate(jnp.asarray(item_emb, jnp.float32), mesh)
  leaf_losses = []
  params, losses = value_pretrain.pretrain(
      programs.value, parallel.replicate(params, mesh), batches, trie, item_emb,
      jax.random.key(seed), mesh, lambda i, m: leaf_losses.append(float(m['value_loss_leaf'])))
  logging.info('value heads: loss %.4f -> %.4f (V of the whole SID alone %.4f -> %.4f) over %d '
               'steps on %s', losses[0], losses[-1], leaf_losses[0], leaf_losses[-1],
               len(losses), splits)
  return jax.device_get(params), losses


def eval_users(dataset: types.Dataset, split: str, max_users: int) -> np.ndarray:
  """Evenly spaced rows of `split` (the validation rows' rule: not just the earliest ones)."""
  return batching.validation_rows(len(dataset.splits[split]), max_users)


def beam_forwards(width: int, prefixes_per_depth: list[int]) -> int:
  """Live forwards of constrained beam search of width W: 1 + sum_{d < L} min(W, #depth-d prefixes)."""
  return 1 + sum(min(width, n) for n in prefixes_per_depth[1:])


def beam_width_for(budget: int, prefixes_per_depth: list[int]) -> int:
  """The largest beam width whose live forwards fit in `budget`."""
  width = 1
  while beam_forwards(width + 1, prefixes_per_depth) <= budget and width < 4096:
    width += 1
  return width
