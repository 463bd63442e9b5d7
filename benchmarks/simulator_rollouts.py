"""What each rollout method hands RL in the known-reward simulator, at the SFT start.

V-STAR's premise (paper Sec. 4.2) is that value-guided search finds high-reward candidates
that likelihood-ranked beams prune, so its groups carry more to learn from. This measures
it where the reward is known: per seed, the SFT model of benchmarks/simulator.py, its value
heads fitted as the RL stage's pretraining does (rl.value_pretrain, on the true reward),
then one group of G = 16 per valid user from each rollout method at its forward budget:
the group's mean / best / spread of true reward, how often it holds the user's true best
item, the share of planted gems in it, and the within-user Spearman correlation with the true reward
over the group's candidates of V of the whole SID (`value_spearman`: read at the suffix position
after the last code, which VED never forwards) and of Q(y_<L, y_L) (`q_spearman`: read from the
parent's forward, what VED's value leaf ranking and its selection of depth-(L-1) children use).

  python benchmarks/simulator_rollouts.py --seeds=0,1,2 \\
      --rollouts=beam,sample,ved:ucb:value:2,ved:lookahead:logprob:2
A rollout is `beam[:<width>]`, `sample` or `<ved>:<selection>:<leaf_ranking>:<multiplier>[:<beta>]`
(decode.selection.RULES, decode.ved.LEAF_RANKINGS), <ved> one of `ved` (V and Q from the fitted
heads), `ved_oracle` / `ved_oracle_mean` (V and Q the max / mean true reward of the items under
each prefix: rl.simulator_oracle). A beam of width W > G forwards as a W-beam does and hands
RL its top G. --seeds and --paired_against are benchmarks/simulator.py's flags; here
--paired_against names entries of --rollouts that every other rollout is compared with, user
by user, pooled over the seeds (paired bootstrap and sign test of the per-user group mean,
group best and holds-the-best-item; per-user scores in <workdir>/seed<k>_rollouts_per_user.npz).
last stdout line: {"rows": [{"rollout": .., "seed": 0, "forwards": .., "group_mean_reward": ..,
"group_max_reward": .., "group_std_reward": .., "best_in_group": .., "gem_share": ..,
"value_spearman": .., "q_spearman": ..}, ..], "paired": [{"run": .., "against": .., "metric": ..,
"users": .., "delta": .., "wins": .., "losses": .., "p_bootstrap": .., "p_sign": ..}, ..]}
"""

from __future__ import annotations

import functools
import json
import pathlib
import tempfile

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import simulator as simulator_benchmark  # pylint: disable=g-import-not-at-top
import trained_run  # pylint: disable=g-import-not-at-top
from vstar_jax.data import simulator
from vstar_jax.eval import metrics as metrics_lib
from vstar_jax.model import policy
from vstar_jax.rl import rewards
from vstar_jax.rl import settings as settings_lib
from vstar_jax.rl import simulator_oracle
from vstar_jax.rl import value_pretrain
from vstar_jax.sid import trie as trie_lib
from vstar_jax.train import sft

_ROLLOUTS = flags.DEFINE_list('rollouts', ['beam', 'sample', 'ved:ucb:value:2',
                                           'ved:lookahead:logprob:2'], 'Rollout methods.')
_HEAD_STEPS = flags.DEFINE_integer('head_steps', 0, 'Value-head fitting steps (0: the '
                                   "benchmark's rl.value_pretrain_steps).")
_SPLIT = flags.DEFINE_string('split', 'valid', 'Whose groups are measured (one row per user).')
_COVERAGE = flags.DEFINE_enum('value_coverage', 'rollouts', list(value_pretrain.COVERAGES),
                              'What the value heads are fitted on (config.rl.value_coverage).')


def rollout_config(config: ml_collections.ConfigDict, spec: str) -> ml_collections.ConfigDict:
  """config with rl.rollout (and config.ved) set from a --rollouts entry."""
  config = ml_collections.ConfigDict(config.to_dict())
  name, *ved = spec.split(':')
  searches = ('ved', *simulator_oracle.ROLLOUTS)
  if (name not in simulator_benchmark.ROLLOUTS
      or (name == 'beam' and (len(ved) > 1 or not all(v.isdigit() for v in ved)))
      or (name == 'sample' and ved) or (name in searches and len(ved) not in (3, 4))):
    raise ValueError(f'--rollouts: {spec!r} is not beam[:<width>], sample or '
                     '<ved>:<selection>:<leaf_ranking>:<multiplier>[:<beta>]')
  config.rl.rollout = name
  if name == 'beam' and ved:
    config.rl.group_size = int(ved[0])
  elif ved:
    config.ved.selection, config.ved.leaf_ranking = ved[0], ved[1]
    config.ved.multiplier = float(ved[2])
    if len(ved) == 4:
      config.ved.beta = float(ved[3])
  return config


def measure(params, cfg, trie, dataset, world, config, spec: str,
            seed: int) -> tuple[dict, dict]:
  """One group of G per user of the split from rollout `spec`: its simulator.group_quality and
  V's correlation with the true reward, and its per-user scores {metric: [N]}."""
  settings = settings_lib.RlSettings.from_config(rollout_config(config, spec),
                                                 rewards=simulator_benchmark.REWARDS,
                                                 rollouts=simulator_benchmark.ROLLOUTS)
  rollout = jax.jit(functools.partial(settings.rollout, cfg=cfg, settings=settings))
  split = dataset.splits[_SPLIT.value]
  history = jnp.asarray(dataset.history_codes(_SPLIT.value))                 # [N, T, L]
  inputs = rewards.RewardInputs(target=jnp.asarray(dataset.item_codes[split.target_item]),
                                target_item=jnp.asarray(split.target_item), trie=trie,
                                item_emb=jnp.asarray(world.item_vectors),
                                user_features=jnp.asarray(split.user_features, jnp.float32))
  ro = rollout(params, jax.device_put(trie), history, jnp.arange(history.shape[0]),
               jax.random.key(seed), inputs=inputs)
  group = config.rl.group_size                 # a wider beam hands RL its top G
  ro = ro.replace(candidates=ro.candidates[:, :group], valid=ro.valid[:, :group],
                  rank_score=ro.rank_score[:, :group])
  forwards = float(np.mean(ro.forwards))
  if settings.rollout is simulator_benchmark.ROLLOUTS['beam']:   # live forwards of a W-beam
    depth = np.asarray(trie.depth)
    forwards = trained_run.beam_forwards(settings.group_size, [int(np.sum(depth == d))
                                                               for d in range(trie.num_levels)])
  items = np.asarray(rewards.candidate_items(trie, ro.candidates))           # [N, G]
  users = simulator.user_index(split)
  _, values, q = policy.candidate_log_probs(
      params, policy.Candidates(history=history, cand=ro.candidates, valid=ro.valid), cfg=cfg)
  reward = world.list_rewards(users, items)
  leaf_value = np.where(items >= 0, np.asarray(values)[..., -1], np.nan)     # [N, G]
  leaf_q = np.where(items >= 0, np.asarray(q)[..., -1], np.nan)              # [N, G]
  keep = (items >= 0).all(1)   # users whose group is full (Spearman over the same G items)
  row = {'rollout': spec, 'seed': seed, 'value_coverage': config.rl.value_coverage,
         'forwards': forwards,
         **simulator.group_quality(world, users, items),
         'value_spearman': metrics_lib.within_user_spearman(leaf_value[keep], reward[keep]),
         'q_spearman': metrics_lib.within_user_spearman(leaf_q[keep], reward[keep])}
  return row, simulator.group_user_scores(world, users, items)


def run_seed(seed: int, specs, root: pathlib.Path) -> tuple[list[dict], dict]:
  """The SFT model and fitted value heads of world `seed`, one row per rollout method and each
  method's per-user scores {spec: {metric: [N]}}."""
  config = simulator_benchmark.experiment_config()
  config.seed = seed
  config.rl.value_coverage = _COVERAGE.value
  dataset, world = simulator.make_dataset(simulator.SimulatorConfig(), seed)
  trie = trie_lib.build_trie(dataset.item_codes, dataset.num_codes)
  base = sft.train(config, dataset, root / f'seed{seed}_sft')
  params, _ = trained_run.fit_heads(config, dataset, base.params, base.cfg,
                                    _HEAD_STEPS.value or config.rl.value_pretrain_steps, seed,
                                    item_emb=world.item_vectors,
                                    rewards=simulator_benchmark.REWARDS)
  rows, per_user = [], {}
  for spec in specs:
    row, per_user[spec] = measure(params, base.cfg, trie, dataset, world, config, spec, seed)
    rows.append(row)
    logging.info('%s', row)
  np.savez(root / f'seed{seed}_rollouts_per_user.npz',
           **{f'{spec}/{metric}': v for spec, m in per_user.items() for metric, v in m.items()})
  return rows, per_user


def main(argv):
  del argv
  root = pathlib.Path(flags.FLAGS.workdir or tempfile.mkdtemp(prefix='vstar_sim_rollouts_'))
  for spec in _ROLLOUTS.value:   # fail on a bad spec before any training
    try:
      settings_lib.RlSettings.from_config(
          rollout_config(simulator_benchmark.experiment_config(), spec),
          rewards=simulator_benchmark.REWARDS, rollouts=simulator_benchmark.ROLLOUTS)
    except (ValueError, settings_lib.ConfigError) as e:
      raise app.UsageError(str(e)) from None
  paired = flags.FLAGS.paired_against if flags.FLAGS['paired_against'].present else []
  unknown = [spec for spec in paired if spec not in _ROLLOUTS.value]
  if unknown:
    raise app.UsageError(f'--paired_against: {unknown} not among --rollouts')
  rows, per_seed = [], []
  for seed in (int(s) for s in flags.FLAGS.seeds):
    seed_rows, per_user = run_seed(seed, _ROLLOUTS.value, root)
    rows += seed_rows
    per_seed.append(per_user)
  print(json.dumps({'rows': rows,
                    'paired': simulator_benchmark.paired_tests(per_seed, paired)}))


if __name__ == '__main__':
  app.run(main)
