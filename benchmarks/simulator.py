"""V-STAR's mechanism on a known-reward simulator (vstar_jax.data.simulator), seed by seed.

Per seed: a simulated world and its logged data; SFT on the logs; then, from that same SFT
model, RL with the true preference as reward by GRPO with beam rollouts (`grpo_beam`),
Sibling-GRPO with beam rollouts (`sibling_beam`), GRPO with VED rollouts (`grpo_ved`) and
V-STAR (VED + Sibling-GRPO, `vstar`). Opt-in variants (`--variants=...`; EXTRA_VARIANTS):
  grpo_sample            GRPO with rollouts sampled from the policy;
  vstar_catalogue        V-STAR, value heads pretrained on every catalogue item's true reward
                         (rl.value_coverage='catalogue');
  grpo_ved_catalogue     GRPO with VED rollouts, the same catalogue-fitted heads;
  vstar_oracle           V-STAR whose VED reads the oracle value (rl.simulator_oracle: V(s) and
                         Q(s, c) the best true reward under the prefix), not the heads;
  vstar_heads_only       V-STAR, the value loss training the heads only (rl.value_grad='heads');
  vstar_no_value_loss    V-STAR without the value loss in RL (rl.w_value=0);
  vstar_logprob_leaves   V-STAR, VED's leaves ranked by log-prob (ved.leaf_ranking='logprob').
(V-STAR without the sibling term is `grpo_ved`.) Each policy (RL: its last step; valid
exact-match selection means nothing here) is scored on the test users by its beam-decoded
top-10: mean true reward, and hit rate of each user's true best item; each RL row also carries
its final KL to the SFT policy (`final_kl`: the mean of metrics.jsonl's `kl` over the last
KL_WINDOW iterations).

  python benchmarks/simulator.py --seeds=0,1,2
last stdout line: {"rows": [{"run": "sft"|"grpo_beam"|..., "seed": 0, "true_reward": ..,
"best_hit@10": .., "final_kl": ..}, ..], "mean": {...}, "paired": [...]}

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
from vstar_jax.rl import rollouts
from vstar_jax.rl import simulator_oracle
from vstar_jax.rl import simulator_reward
from vstar_jax.sid import trie as trie_lib
from vstar_jax.train import metrics_log
from vstar_jax.train import sft

# name -> the config overrides of the run ('section.field': value) on experiment_config.
VARIANTS = {'grpo_beam': {'rl.rollout': 'beam', 'rl.w_sib': 0.0},
            'sibling_beam': {'rl.rollout': 'beam', 'rl.w_sib': 1.0},
            'grpo_ved': {'rl.rollout': 'ved', 'rl.w_sib': 0.0},
            'vstar': {'rl.rollout': 'ved', 'rl.w_sib': 1.0}}
_VSTAR = VARIANTS['vstar']
# Beyond the paper's four (opt-in by --variants; docs/results/simulator.md):
EXTRA_VARIANTS = {
    # GRPO on rollouts sampled from the policy.
    'grpo_sample': {'rl.rollout': 'sample', 'rl.w_sib': 0.0},
    # V-STAR / GRPO-VED whose value heads are pretrained on every catalogue item's true reward
    # instead of the SFT policy's rollouts (docs/method.md, "Value coverage").
    'vstar_catalogue': {**_VSTAR, 'rl.value_coverage': 'catalogue'},
    'grpo_ved_catalogue': {'rl.rollout': 'ved', 'rl.w_sib': 0.0, 'rl.value_coverage': 'catalogue'},
    # V-STAR whose VED reads the oracle value (rl.simulator_oracle: V and Q the max true reward
    # of the items under each prefix) instead of the value heads; everything else is V-STAR's.
    'vstar_oracle': {**_VSTAR, 'rl.rollout': 'ved_oracle'},
    # What drives V-STAR's KL (issue 31, item 3): V-STAR with one thing changed. The value
    # loss trains the heads only (its gradient stopped at the backbone); no value loss
    # (w_value = 0: the heads stay as pretrained); no sibling term (= grpo_ved); VED's leaves
    # ranked by log-prob instead of Q.
    'vstar_heads_only': {**_VSTAR, 'rl.value_grad': 'heads'},
    'vstar_no_value_loss': {**_VSTAR, 'rl.w_value': 0.0},
    'vstar_logprob_leaves': {**_VSTAR, 'ved.leaf_ranking': 'logprob'},
}
ALL_VARIANTS = {**VARIANTS, **EXTRA_VARIANTS}
# The user-facing rewards and the simulator's true preference (rl.reward='preference'); the
# user-facing rollouts and VED with the oracle value (rl.rollout='ved_oracle').
REWARDS = {**rewards.REWARDS, **simulator_reward.REWARDS}
ROLLOUTS = {**rollouts.ROLLOUTS, **simulator_oracle.ROLLOUTS}
# Iterations whose mean KL to the SFT policy a row reports as its final KL.
KL_WINDOW = 10


def experiment_config(rl_steps: int = 60) -> ml_collections.ConfigDict:
  """A small decoder, SFT on the logs, RL on the true preference (reward 'preference')."""
  c = default_config.base_config()
  c.model.num_layers, c.model.d_model, c.model.num_heads, c.model.d_ff = 2, 64, 4, 256
  c.model.item_hash_buckets = 512
  c.sft.epochs, c.sft.batch_size, c.sft.warmup_steps = 8, 64, 20
  c.sft.valid_beams, c.sft.valid_max_rows, c.eval.batch_size = 10, 200, 64
  r = c.rl
  r.reward, r.value_target = 'preference', 'rl_reward'
  r.group_size, r.batch_users, r.steps = 16, 32, rl_steps
  r.lr, r.warmup_steps, r.kl_beta = 3e-4, 5, 1e-3
  r.valid_every, r.valid_max_rows, r.valid_beams, r.checkpoint_every = rl_steps, 100, 10, 0
  r.value_pretrain_steps = 40
  c.ved.multiplier, c.ved.selection, c.ved.leaf_ranking = 2.0, 'ucb', 'value'
  return c


def variant_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """A copy of config with variant `name`'s overrides."""
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in ALL_VARIANTS[name].items():
    section, field = key.split('.')
    config[section][field] = value
  return config


def final_kl(workdir: pathlib.Path) -> float:
  """Mean KL to the SFT policy over a run's last KL_WINDOW iterations (metrics.jsonl)."""
  kl = [r['kl'] for r in metrics_log.MetricsLog(workdir).read(loop.STAGE) if 'kl' in r]
  return float(np.mean(kl[-KL_WINDOW:])) if kl else float('nan')


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

  def score(name: str, params, start: float, **extra) -> None:
    per_user[name] = simulator.user_scores(world, users, top_items(params, base.cfg, trie, dataset))
    rows.append({'run': name, 'seed': seed, 'wall_s': time.time() - start,
                 **{k: float(v.mean()) for k, v in per_user[name].items()}, **extra})
    logging.info('%s', rows[-1])

  start = time.time()
  base = sft.train(config, dataset, root / f'seed{seed}_sft')
  score('sft', base.params, start)
  for name in variants:
    start = time.time()
    workdir = root / f'seed{seed}_{name}'
    result = loop.train(variant_config(config, name), dataset, workdir, base.params, base.cfg,
                        item_emb=world.item_vectors, rewards=REWARDS, rollouts=ROLLOUTS)
    score(name, result.final_params, start, final_kl=final_kl(workdir))
  np.savez(root / f'seed{seed}_per_user.npz',
           **{f'{name}/{metric}': v for name, m in per_user.items() for metric, v in m.items()})
  return rows, per_user


def summarize(rows: list[dict]) -> dict:
  """Mean over seeds of each run's metrics."""
  out = {}
  for run in dict.fromkeys(r['run'] for r in rows):
    mine = [r for r in rows if r['run'] == run]
    out[run] = {k: float(np.mean([r[k] for r in mine]))
                for k in ('true_reward', 'best_hit@10', 'final_kl') if k in mine[0]}
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
