"""V-STAR's mechanism on a known-reward simulator (vstar_jax.data.simulator), seed by seed.

Per seed: a simulated world and its logged data; SFT on the logs; then, from that same SFT
model, RL with the true preference as reward by GRPO with beam rollouts (`grpo_beam`),
Sibling-GRPO with beam rollouts (`sibling_beam`), GRPO with VED rollouts (`grpo_ved`) and
V-STAR (VED + Sibling-GRPO, `vstar`); `--variants=...,grpo_sample` adds GRPO with sampled
rollouts (`grpo_sample`). Each policy (RL: its last step; valid exact-match
selection means nothing here) is scored on the test users by its beam-decoded top-10: mean
true reward, and hit rate of each user's true best item.

  python benchmarks/simulator.py --seeds=0,1,2
last stdout line: {"rows": [{"run": "sft"|"grpo_beam"|..., "seed": 0, "true_reward": ..,
"best_hit@10": ..}, ..], "mean": {...}, "paired": [...]}

"paired" holds, for each run against each `--paired_against` run, the per-user paired test of
both metrics pooled over the seeds (the same simulated user of the same world in both runs;
paired bootstrap and sign test, vstar_jax.eval.significance.compare).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import tempfile
import time

from absl import app, flags, logging
import ml_collections
import numpy as np

from vstar_jax import default_config
from vstar_jax.data import simulator
from vstar_jax.decode import search
from vstar_jax.eval import significance
from vstar_jax.rl import loop
from vstar_jax.rl import rewards
from vstar_jax.sid import trie as trie_lib
from vstar_jax.train import sft

# name -> (rl.rollout, rl.w_sib, rl.value_coverage)
VARIANTS = {'grpo_beam': ('beam', 0.0, 'rollouts'), 'sibling_beam': ('beam', 1.0, 'rollouts'),
            'grpo_ved': ('ved', 0.0, 'rollouts'), 'vstar': ('ved', 1.0, 'rollouts')}
# Beyond the paper's four (opt-in by --variants): GRPO on rollouts sampled from the policy, and
# V-STAR / GRPO-VED whose value heads are pretrained on every catalogue item's true reward
# instead of the SFT policy's rollouts (docs/method.md, "Value coverage").
EXTRA_VARIANTS = {'grpo_sample': ('sample', 0.0, 'rollouts'),
                  'vstar_catalogue': ('ved', 1.0, 'catalogue'),
                  'grpo_ved_catalogue': ('ved', 0.0, 'catalogue')}
ALL_VARIANTS = {**VARIANTS, **EXTRA_VARIANTS}


def experiment_config(rl_steps: int = 60) -> ml_collections.ConfigDict:
  """A small decoder, SFT on the logs, RL on the true preference (reward 'preference')."""
  c = default_config.base_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 2, 64, 4, 256
  c.model.item_hash_buckets = 512
  c.sft.epochs, c.sft.batch_size, c.sft.warmup_steps = 8, 64, 20
  c.sft.valid_beams, c.sft.valid_max_rows, c.eval.batch_size = 10, 200, 64
  r = c.rl
  r.reward, r.value_targets = 'preference', 'reward'
  r.group_size, r.batch_users, r.steps = 16, 32, rl_steps
  r.lr, r.warmup_steps, r.kl_beta = 3e-4, 5, 1e-3
  r.valid_every, r.valid_max_rows, r.valid_beams, r.checkpoint_every = rl_steps, 100, 10, 0
  r.value_pretrain_steps = 40
  r.ved.multiplier, r.ved.selection, r.ved.leaf_ranking = 2.0, 'ucb', 'value'
  return c


def top_items(params, cfg, trie, dataset, k: int = 10) -> np.ndarray:
  """[N, k] items of each test row's beam-decoded top-k (-1 where none; simulated SIDs are
  distinct)."""
  codes, _ = search.beam_search_split(params, cfg, trie, dataset.history_codes('test'), k, 64)
  return np.asarray(rewards.candidate_items(trie, codes))


def run_seed(seed: int, sim: simulator.SimulatorConfig, config: ml_collections.ConfigDict,
             variants, root: pathlib.Path) -> tuple[list[dict], dict]:
  """SFT, then each RL variant from the same SFT model, on world `seed`: one row per policy,
  and each policy's per-user scores {run: {metric: [N]}} for the paired tests."""
  dataset, world = simulator.make_dataset(sim, seed)
  trie = trie_lib.build_trie(dataset.item_codes, dataset.num_codes)
  users = simulator.user_index(dataset.splits['test'])
  config = ml_collections.ConfigDict(config.to_dict())
  config.seed = seed
  rows, per_user = [], {}

  def score(name: str, params, start: float) -> None:
    per_user[name] = simulator.user_scores(world, users, top_items(params, base.cfg, trie, dataset))
    rows.append({'run': name, 'seed': seed, 'wall_s': time.time() - start,
                 **{k: float(v.mean()) for k, v in per_user[name].items()}})
    logging.info('%s', rows[-1])

  start = time.time()
  base = sft.train(config, dataset, root / f'seed{seed}_sft')
  score('sft', base.params, start)
  for name in variants:
    config.rl.rollout, config.rl.w_sib, config.rl.value_coverage = ALL_VARIANTS[name]
    start = time.time()
    result = loop.train(config, dataset, root / f'seed{seed}_{name}', base.params, base.cfg,
                        item_emb=world.item_vectors)
    score(name, result.final_params, start)
  np.savez(root / f'seed{seed}_per_user.npz',
           **{f'{name}/{metric}': v for name, m in per_user.items() for metric, v in m.items()})
  return rows, per_user


def summarize(rows: list[dict]) -> dict:
  """Mean over seeds of each run's metrics."""
  out = {}
  for run in dict.fromkeys(r['run'] for r in rows):
    mine = [r for r in rows if r['run'] == run]
    out[run] = {k: float(np.mean([r[k] for r in mine])) for k in ('true_reward', 'best_hit@10')}
  return out


def paired_tests(per_seed: list[dict], against: list[str]) -> list[dict]:
  """Each run vs each reference run (each pair once): per-user deltas of both metrics, pooled
  over the seeds."""
  runs = list(per_seed[0])
  out, done = [], set()
  for ref in (r for r in against if r in runs):
    for run in (r for r in runs if r != ref and frozenset((r, ref)) not in done):
      done.add(frozenset((run, ref)))
      for metric in per_seed[0][run]:
        pooled = [np.concatenate([seed[name][metric] for seed in per_seed]) for name in (ref, run)]
        test = significance.compare(*pooled)
        if not np.isfinite(test['relative']):
          test['relative'] = None
        out.append({'run': run, 'against': ref, 'metric': metric, 'users': len(pooled[0]),
                    **test})
  return out


_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'World / model seeds.')
_VARIANTS = flags.DEFINE_list('variants', list(VARIANTS), 'RL runs from each SFT model: '
                              f'{list(ALL_VARIANTS)}.')
_STEPS = flags.DEFINE_integer('rl_steps', 60, 'RL iterations per run.')
_VALUE_STEPS = flags.DEFINE_integer('value_pretrain_steps', 40, 'Value-head pretraining steps '
                                    'before each RL run (config.rl.value_pretrain_steps).')
_PAIRED = flags.DEFINE_list('paired_against', ['sft', 'grpo_beam'], 'Runs every other run is '
                            'compared with, user by user (those not run are skipped).')
_WORKDIR = flags.DEFINE_string('workdir', '', 'Where the runs go (default: a temporary folder).')


def main(argv):
  del argv
  unknown = set(_VARIANTS.value) - set(ALL_VARIANTS)
  if unknown:
    raise app.UsageError(f'--variants: unknown {sorted(unknown)}; choose from '
                         f'{list(ALL_VARIANTS)}')
  unknown = set(_PAIRED.value) - {'sft', *ALL_VARIANTS}
  if unknown:
    raise app.UsageError(f'--paired_against: unknown {sorted(unknown)}; choose from '
                         f"{['sft', *ALL_VARIANTS]}")
  root = pathlib.Path(_WORKDIR.value or tempfile.mkdtemp(prefix='vstar_sim_'))
  config = experiment_config(_STEPS.value)
  config.rl.value_pretrain_steps = _VALUE_STEPS.value
  rows, per_seed = [], []
  for seed in (int(s) for s in _SEEDS.value):
    seed_rows, per_user = run_seed(seed, simulator.SimulatorConfig(), config, _VARIANTS.value,
                                   root)
    rows += seed_rows
    per_seed.append(per_user)
  print(json.dumps({'rows': rows, 'mean': summarize(rows),
                    'paired': paired_tests(per_seed, _PAIRED.value),
                    'simulator': dataclasses.asdict(simulator.SimulatorConfig())}))


if __name__ == '__main__':
  app.run(main)
