"""VED vs beam search at equal forward budgets on a trained model (design §8 contract).

For each budget multiplier m, VED (width w, budget floor(m(1+(L-1)w)) forwards)
and beam search with the largest width the same forwards buy (W = (budget-1)/(L-1))
each produce up to W candidates per valid user. Reported per m: hit rate (target in
the candidate set), distinct level-1 / level-1..2 prefixes per set (diversity),
mean within-group std of the ranking reward (the GRPO signal), wall time per user.

The model is W's best RL checkpoint when there is one (its value head is trained),
else W's SFT checkpoint with the value head first fitted on SFT beam rollouts of
train users (--value_steps; design §1.2 targets), since SFT never trains V.

  python benchmarks/ved_budget.py --dataset=industrial --workdir=W
prints one JSON object on its last line and writes W/plots/ved_budget.png.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from vstar_jax import default_config  # pylint: disable=g-import-not-at-top
from vstar_jax import parallel
from vstar_jax import pipeline
from vstar_jax.data import batching
from vstar_jax.decode import search
from vstar_jax.decode import ved as ved_lib
from vstar_jax.model import policy
from vstar_jax.rl import loop
from vstar_jax.rl import rewards
from vstar_jax.rl import rollouts
from vstar_jax.rl import settings as settings_lib
from vstar_jax.rl import value_pretrain
from vstar_jax.sid import trie as trie_lib

_DATASET = flags.DEFINE_string('dataset', 'industrial', 'industrial | office | synthetic')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory holding checkpoints/sft (or rl).')
_DATA_DIR = flags.DEFINE_string('data_dir', '', 'Data folder (default $VSTAR_DATA_DIR).')
_MULTIPLIERS = flags.DEFINE_list('multipliers', ['1', '2', '4', '8'], 'Budget multipliers m.')
_WIDTH = flags.DEFINE_integer('width', 8, 'VED stage-1 beam width w.')
_SPLIT = flags.DEFINE_string('split', 'valid', 'Users to decode.')
_MAX_USERS = flags.DEFINE_integer('max_users', 1000, 'First N users of the split (0 = all).')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Users per jitted call.')
_VALUE_STEPS = flags.DEFINE_integer('value_steps', 100, 'Value-head fitting steps without an RL checkpoint.')
_SID_SOURCE = flags.DEFINE_string('sid_source', 'given', 'given | learned (as the run in --workdir).')


def fit_value_head(params, cfg, trie, dataset, steps: int, seed: int = 0):
  """Fits params['value_head'] on beam-16 rollouts of the frozen policy (train users)."""
  r = default_config.base_config().rl
  r.rollout, r.group_size = 'beam', 16
  settings = settings_lib.RlSettings.from_config(r)
  mesh = parallel.make_mesh()
  trainer = value_pretrain.make_value_step(
      functools.partial(policy.candidate_log_probs, cfg=cfg),
      functools.partial(rollouts.beam_rollout, cfg=cfg, settings=settings), settings.targets,
      r.value_pretrain_lr, r.clip_norm, mesh)
  users = batching.UserRows.from_dataset(dataset, ('train',))
  num_rows = users.history.shape[0]
  batches = (users.batch(batching.batch_rows(num_rows, r.batch_users, seed, 0, i % (num_rows // r.batch_users)), mesh)
             for i in range(steps))
  params = parallel.replicate(params, mesh)
  params, losses = value_pretrain.pretrain(trainer, params, batches, trie, None, jax.random.key(seed), mesh)
  logging.info('value head: loss %.4f -> %.4f over %d steps', losses[0], losses[-1], len(losses))
  return jax.device_get(params), losses


def group_stats(cand, valid, score, target):
  """Per-user hit, distinct L1 / L12 prefixes and ranking-reward std of candidate sets."""
  cand, valid, target = np.asarray(cand), np.asarray(valid), np.asarray(target)
  hit = ((cand == target[:, None]).all(-1) & valid).any(-1)
  l1 = [len({tuple(c[:1]) for c, v in zip(cs, vs) if v}) for cs, vs in zip(cand, valid)]
  l12 = [len({tuple(c[:2]) for c, v in zip(cs, vs) if v}) for cs, vs in zip(cand, valid)]
  reward = np.asarray(rewards.ranking_reward(jnp.asarray(cand), jnp.asarray(valid),
                                             jnp.asarray(target), jnp.asarray(score)))
  count = np.maximum(valid.sum(-1), 1)
  mean = (reward * valid).sum(-1) / count
  std = np.sqrt((valid * (reward - mean[:, None]) ** 2).sum(-1) / count)
  return {'hit': float(hit.mean()), 'l1': float(np.mean(l1)), 'l12': float(np.mean(l12)),
          'reward_std': float(std.mean()), 'size': float(valid.sum(-1).mean())}


def run_batched(fn, history, batch_size):
  """Applies fn to fixed-size batches (last padded); returns concatenated numpy outputs and s/user."""
  n = history.shape[0]
  pad = (-n) % batch_size
  padded = np.concatenate([history, np.repeat(history[-1:], pad, axis=0)])
  jax.block_until_ready(fn(padded[:batch_size], 0))  # compile
  start = time.perf_counter()
  outs = [jax.device_get(fn(padded[i:i + batch_size], i)) for i in range(0, len(padded), batch_size)]
  wall = time.perf_counter() - start
  return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *outs), wall / len(padded)


def main(argv):
  del argv
  workdir = pathlib.Path(_WORKDIR.value)
  config = default_config.base_config()
  config.dataset, config.data_dir, config.sid.source = _DATASET.value, _DATA_DIR.value, _SID_SOURCE.value
  dataset = pipeline.load_dataset(config, workdir)
  restored = pipeline.restore_params(config, workdir, dataset, 'sft')
  if restored is None:
    raise SystemExit(f'no SFT checkpoint in {workdir}/checkpoints/sft: train one first')
  params, cfg = restored
  trie = trie_lib.build_trie(dataset.item_codes, dataset.num_codes)
  rl_params = loop.restore_best_params(config, workdir, params)
  value_source, value_losses = 'rl_checkpoint', []
  if rl_params is not None:
    params = rl_params
  else:
    params, value_losses = fit_value_head(params, cfg, trie, dataset, _VALUE_STEPS.value)
    value_source = f'fitted_{_VALUE_STEPS.value}_steps'
  split = dataset.splits[_SPLIT.value]
  rows = np.arange(min(_MAX_USERS.value or len(split), len(split)))
  history = dataset.history_codes(_SPLIT.value)[rows]
  target = dataset.target_codes(_SPLIT.value)[rows]
  num_levels = dataset.num_levels
  out_rows = []
  for m in (float(x) for x in _MULTIPLIERS.value):
    base = ved_lib.base_budget(num_levels, _WIDTH.value)
    budget = int(np.floor(m * base))
    width = (budget - 1) // (num_levels - 1)
    vcfg = ved_lib.VedConfig(width=_WIDTH.value, multiplier=m, group_size=width)
    settings = dataclasses.replace(settings_lib.RlSettings.from_config(config.rl), rollout='ved',
                                   group_size=width, ved=vcfg)
    ved_fn = jax.jit(lambda h, i, s=settings: rollouts.ved_rollout(
        params, trie, h, jnp.arange(h.shape[0]) + i, jax.random.key(0), cfg=cfg, settings=s))
    beam_fn = jax.jit(lambda h, i, w=width: search.beam_search(params, cfg, trie, h, w))
    ved_out, ved_s = run_batched(ved_fn, history, _BATCH.value)
    (beam_codes, beam_scores), beam_s = run_batched(beam_fn, history, _BATCH.value)
    v = group_stats(ved_out['cand'], ved_out['valid'], ved_out['rank_score'], target)
    b = group_stats(beam_codes, beam_scores > -np.inf, beam_scores, target)
    row = {'m': m, 'budget': budget, 'beam_width': width,
           'forwards_max': int(np.max(ved_out['forwards'])),
           'forwards_mean': float(np.mean(ved_out['forwards'])),
           'ved_hit': v['hit'], 'beam_hit': b['hit'],
           'ved_l1_distinct': v['l1'], 'beam_l1_distinct': b['l1'],
           'ved_l12_distinct': v['l12'], 'beam_l12_distinct': b['l12'],
           'ved_reward_std': v['reward_std'], 'beam_reward_std': b['reward_std'],
           'ved_candidates': v['size'], 'beam_candidates': b['size'],
           'ved_ms_per_user': 1e3 * ved_s, 'beam_ms_per_user': 1e3 * beam_s}
    logging.info('%s', row)
    out_rows.append(row)
  plots = workdir / 'plots'
  plots.mkdir(parents=True, exist_ok=True)
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
  budgets = [r['budget'] for r in out_rows]
  for ax, key, title in zip(axes, ('hit', 'l1_distinct', 'reward_std'),
                            ('hit rate (target in set)', 'distinct level-1 prefixes', 'reward std in group')):
    ax.plot(budgets, [r[f'ved_{key}'] for r in out_rows], marker='o', label='VED')
    ax.plot(budgets, [r[f'beam_{key}'] for r in out_rows], marker='s', label='beam (same forwards)')
    ax.set_xlabel('forwards per user')
    ax.set_title(title)
    ax.grid(alpha=0.3)
  axes[0].legend()
  fig.suptitle(f'VED vs beam, {dataset.name} {_SPLIT.value} ({len(rows)} users)')
  fig.tight_layout()
  fig.savefig(plots / 'ved_budget.png', dpi=100)
  print(json.dumps({'rows': out_rows, 'dataset': dataset.name, 'split': _SPLIT.value,
                    'n_users': int(len(rows)), 'width': _WIDTH.value, 'value_head': value_source,
                    'value_loss_first_last': value_losses[:1] + value_losses[-1:],
                    'device': str(jax.devices()[0].platform)}))


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main)
