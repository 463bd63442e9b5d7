"""VED vs beam search at equal live forwards on a trained model (paper Sec. 4.2; design §8 contract).

For each budget multiplier m, VED gets B = floor(m (1 + (L-1) w)) forwards and beam search
the largest width W whose live forwards, 1 + sum_d min(W, #depth-d prefixes of the
catalogue), fit in B (at m = 8 on Industrial, W = 87: the 48 level-1 codes cap the second
level); both return up to W candidates per user. Reported per m (and per VED variant):
hit rate (target in the set), distinct level-1 / level-1..2 prefixes per set, the mean
within-group std of the ranking reward and the share of groups whose GRPO advantages are
not all zero (the RL signal), forwards of both, and ms/user of both measured in the same
run, beam re-timed beside each VED variant, after compilation.

The model, its config and its value heads come from W (benchmarks/trained_run.py): any
workdir the CLI trained, either dataset.

  python benchmarks/ved_budget.py --dataset=industrial --workdir=W
prints one JSON object on its last line and writes W/plots/ved_budget.png.
"""

from __future__ import annotations

import dataclasses
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

import trained_run  # pylint: disable=g-import-not-at-top
from vstar_jax.decode import search
from vstar_jax.decode import ved as ved_lib
from vstar_jax.rl import advantages
from vstar_jax.rl import rewards
from vstar_jax.rl import rollouts
from vstar_jax.rl import settings as settings_lib

_DATASET = flags.DEFINE_string('dataset', '', 'Checked against the dataset W was trained on.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'A run directory the CLI trained.')
_DATA_DIR = flags.DEFINE_string('data_dir', '', 'Data folder (default: recorded, else $VSTAR_DATA_DIR).')
_MULTIPLIERS = flags.DEFINE_list('multipliers', ['1', '2', '4', '8'], 'Budget multipliers m.')
_VARIANTS = flags.DEFINE_list('variants', [], "VED variants 'selection:leaf_ranking[:per_step]' "
                              "(default: W's config.ved), e.g. ucb:logprob,best_first:logprob,ucb:mix:32.")
_SPLIT = flags.DEFINE_string('split', 'valid', 'Users to decode.')
_MAX_USERS = flags.DEFINE_integer('max_users', 1000, 'Evenly spaced users of the split (0 = all).')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Users per jitted call.')
_HEAD_STEPS = flags.DEFINE_integer('value_steps', 100, 'Value-head fitting steps without an RL '
                                   'checkpoint.')
_OUT = flags.DEFINE_string('out', '', 'Plot path (default W/plots/ved_budget.png).')


def group_stats(cand, valid, score, target) -> dict:
  """Per-user hit, distinct L1 / L12 prefixes, ranking-reward std and non-zero-advantage share."""
  cand, valid, target = np.asarray(cand), np.asarray(valid), np.asarray(target)
  hit = ((cand == target[:, None]).all(-1) & valid).any(-1)
  l1 = [len({tuple(c[:1]) for c, v in zip(cs, vs) if v}) for cs, vs in zip(cand, valid)]
  l12 = [len({tuple(c[:2]) for c, v in zip(cs, vs) if v}) for cs, vs in zip(cand, valid)]
  reward = rewards.ranking_reward(jnp.asarray(cand), jnp.asarray(valid), jnp.asarray(target),
                                  jnp.asarray(score))
  adv = np.asarray(advantages.group_advantages(reward, jnp.asarray(valid)))
  reward = np.asarray(reward)
  count = np.maximum(valid.sum(-1), 1)
  mean = (reward * valid).sum(-1) / count
  std = np.sqrt((valid * (reward - mean[:, None]) ** 2).sum(-1) / count)
  return {'hit': float(hit.mean()), 'l1': float(np.mean(l1)), 'l12': float(np.mean(l12)),
          'reward_std': float(std.mean()), 'nonzero_adv': float((adv != 0).any(-1).mean()),
          'size': float(valid.sum(-1).mean())}


def batched(fn, history: np.ndarray, batch_size: int):
  """fn over fixed-size batches (last padded) -> (outputs, seconds per user); compiled first."""
  n = history.shape[0]
  padded = np.concatenate([history, np.repeat(history[-1:], (-n) % batch_size, axis=0)])
  jax.block_until_ready(fn(padded[:batch_size], 0))
  start = time.perf_counter()
  outs = [jax.device_get(fn(padded[i:i + batch_size], i)) for i in range(0, len(padded), batch_size)]
  wall = time.perf_counter() - start
  return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *outs), wall / len(padded)


def variants(config) -> list[tuple[str, str, int]]:
  """(selection, leaf_ranking, per_step) per --variants entry (per_step 0: the width)."""
  if not _VARIANTS.value:
    return [(config.ved.selection, config.ved.leaf_ranking, config.ved.per_step)]
  parsed = [v.split(':') for v in _VARIANTS.value]
  return [(p[0], p[1], int(p[2]) if len(p) > 2 else config.ved.per_step) for p in parsed]


def main(argv):
  del argv
  workdir = pathlib.Path(_WORKDIR.value)
  run = trained_run.load(workdir, _DATA_DIR.value, _DATASET.value, _HEAD_STEPS.value)
  dataset, params, cfg, trie = run.dataset, run.params, run.cfg, run.trie
  rows = trained_run.eval_users(dataset, _SPLIT.value, _MAX_USERS.value)
  history = dataset.history_codes(_SPLIT.value)[rows]
  target = dataset.target_codes(_SPLIT.value)[rows]
  num_levels = dataset.num_levels
  prefixes = [len({tuple(c[:d]) for c in dataset.item_codes.tolist()}) for d in range(num_levels)]
  base_cfg = settings_lib.ved_config(run.config)
  key = jax.random.key(0)
  out_rows = []
  for m in (float(x) for x in _MULTIPLIERS.value):
    budget = int(m * ved_lib.base_budget(num_levels, base_cfg.width))
    width = trained_run.beam_width_for(budget, prefixes)
    beam_fn = lambda h, i, w=width: search.beam_search(params, cfg, trie, h, w)
    for selection, leaf_ranking, per_step in variants(run.config):
      # Beam is re-timed beside every variant so each ms/user ratio comes from adjacent runs.
      (beam_codes, beam_scores), beam_s = batched(beam_fn, history, _BATCH.value)
      b = group_stats(beam_codes, beam_scores > -np.inf, beam_scores, target)
      vcfg = dataclasses.replace(base_cfg, multiplier=m, group_size=width, selection=selection,
                                 leaf_ranking=leaf_ranking, per_step=per_step)
      ved_fn = lambda h, i, c=vcfg: search.ved_search(
          params, cfg, trie, h, rollouts.user_keys(key, jnp.arange(h.shape[0]) + i), c)
      out, ved_s = batched(ved_fn, history, _BATCH.value)
      v = group_stats(out.candidates, out.valid, out.scores, target)
      row = {'m': m, 'budget': budget, 'selection': selection, 'leaf_ranking': leaf_ranking,
             'per_step': vcfg.expansions_per_step,
             'beam_width': width, 'beam_forwards': trained_run.beam_forwards(width, prefixes),
             'forwards_max': int(np.max(out.num_forwards)),
             'ved_forwards_mean': float(np.mean(out.num_forwards)),
             'ved_hit': v['hit'], 'beam_hit': b['hit'],
             'ved_l1_distinct': v['l1'], 'beam_l1_distinct': b['l1'],
             'ved_l12_distinct': v['l12'], 'beam_l12_distinct': b['l12'],
             'ved_reward_std': v['reward_std'], 'beam_reward_std': b['reward_std'],
             'ved_nonzero_adv': v['nonzero_adv'], 'beam_nonzero_adv': b['nonzero_adv'],
             'ved_candidates': v['size'], 'beam_candidates': b['size'],
             'ved_ms_per_user': 1e3 * ved_s, 'beam_ms_per_user': 1e3 * beam_s}
      logging.info('%s', row)
      out_rows.append(row)
  plot(out_rows, pathlib.Path(_OUT.value) if _OUT.value else workdir / 'plots' / 'ved_budget.png',
       f'VED vs beam, {dataset.name} {_SPLIT.value} ({len(rows)} users)')
  print(json.dumps({'rows': out_rows, 'dataset': dataset.name, 'split': _SPLIT.value,
                    'n_users': int(len(rows)), 'width': base_cfg.width, 'value_heads': run.heads,
                    'value_loss_first_last': run.head_losses[:1] + run.head_losses[-1:],
                    'device': str(jax.devices()[0].platform)}))


def plot(rows: list[dict], path: pathlib.Path, title: str) -> None:
  """Hit rate, level-1 diversity and ms/user against forwards, VED variants and beam."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
  for ax, key, name in zip(axes, ('hit', 'l1_distinct', 'ms_per_user'),
                           ('hit rate (target in set)', 'distinct level-1 prefixes', 'ms / user')):
    def variant(r):
      return r['selection'], r['leaf_ranking'], r['per_step']
    for v in sorted({variant(r) for r in rows}):
      pts = [r for r in rows if variant(r) == v]
      ax.plot([r['budget'] for r in pts], [r[f'ved_{key}'] for r in pts], marker='o',
              label=f'VED {v[0]}/{v[1]}/k={v[2]}')
    first = [r for r in rows if variant(r) == variant(rows[0])]
    ax.plot([r['budget'] for r in first], [r[f'beam_{key}'] for r in first], marker='s',
            color='k', label='beam (same live forwards)')
    ax.set_xlabel('forwards per user')
    ax.set_title(name)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main)
