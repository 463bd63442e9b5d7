"""Does the value carry signal? The paper's Figure 3, measured on valid users of a trained run.

For every user, the beam-50 candidates are scored by the policy (cumulative log-prob), by
V of the whole SID, by V of its depth-2 prefix, by Q of its last code (read from the
depth-2 prefix's forward) and by the leaf ranking the run's VED uses. Reported: the
within-user Spearman correlation of each score with the exact hit and with the dense prefix
reward (users whose candidates' rewards differ; ties ranked by their mean), per depth d the
correlation of log-prob / V / Q of the depth-d prefixes with the depth-d prefix match, and
HR@10 / NDCG@10 of beam-50 re-ranked by each score. `--mix` adds Q weights for the
log-prob + mix * Q ranker (chosen here on valid).

  python benchmarks/value_signal.py --dataset=industrial --workdir=W
last stdout line: {"logprob_spearman": .., "value_spearman": .., "ranker": "..",
"ranker_spearman": .., "rows": [..]} (the first two: within-user mean rho with exact hit).
"""

from __future__ import annotations

import json
import pathlib

from absl import app, flags, logging
import jax
import jax.numpy as jnp
import numpy as np

import trained_run  # pylint: disable=g-import-not-at-top
from vstar_jax.decode import search
from vstar_jax.eval import metrics as metrics_lib
from vstar_jax.model import policy
from vstar_jax.rl import rewards

_DATASET = flags.DEFINE_string('dataset', '', 'Checked against the dataset W was trained on.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'A run directory the CLI trained.')
_DATA_DIR = flags.DEFINE_string('data_dir', '', 'Data folder (default: recorded, else $VSTAR_DATA_DIR).')
_SPLIT = flags.DEFINE_string('split', 'valid', 'Users to score (choose on valid, never test).')
_MAX_USERS = flags.DEFINE_integer('max_users', 1000, 'Evenly spaced users of the split.')
_BEAMS = flags.DEFINE_integer('beams', 50, 'Candidates per user (beam width).')
_BATCH = flags.DEFINE_integer('batch_size', 16, 'Users per jitted call.')
_HEAD_STEPS = flags.DEFINE_integer('value_steps', 100, 'Value-head fitting steps without an RL '
                                   'checkpoint.')
_MIX = flags.DEFINE_list('mix', ['0.3', '1', '3', '10'], 'Q weights of the log-prob + mix*Q ranker.')


def rerank_metrics(score: np.ndarray, hit: np.ndarray) -> dict:
  """HR@10 / NDCG@10 of the candidates sorted by score [N, W] (hit [N, W]: exact match)."""
  order = np.argsort(-score, axis=1, kind='stable')
  ranked = np.take_along_axis(hit, order, axis=1)
  ranks = np.where(ranked.any(1), ranked.argmax(1), metrics_lib.NO_HIT)
  out = metrics_lib.hr_ndcg(ranks, score.shape[1], topk=(10,))
  return {'HR@10': out['HR@10'], 'NDCG@10': out['NDCG@10']}


def score_candidates(run, history, cand, valid):
  """Per candidate [N, W]: log-probs per level [.., L], V at depths 0..L, Q of each code [.., L]."""
  fn = jax.jit(lambda p, b: policy.candidate_log_probs(p, b, cfg=run.cfg))
  outs = []
  for i in range(0, len(history), _BATCH.value):
    rows = slice(i, i + _BATCH.value)
    batch = policy.Candidates(history=history[rows], cand=cand[rows], valid=valid[rows])
    outs.append(jax.device_get(fn(run.params, batch)))
  return [np.concatenate(x) for x in zip(*outs)]


def main(argv):
  del argv
  run = trained_run.load(pathlib.Path(_WORKDIR.value), _DATA_DIR.value, _DATASET.value,
                         _HEAD_STEPS.value)
  dataset = run.dataset
  rows = trained_run.eval_users(dataset, _SPLIT.value, _MAX_USERS.value)
  history = dataset.history_codes(_SPLIT.value)[rows]
  target = dataset.target_codes(_SPLIT.value)[rows]
  cand, beam_score = search.beam_search_split(run.params, run.cfg, run.trie, history,
                                              _BEAMS.value, _BATCH.value)
  valid = beam_score > -np.inf
  token_logp, values, q = score_candidates(run, history, cand, valid)
  num_levels = dataset.num_levels
  match = np.asarray(rewards.prefix_match(jnp.asarray(cand), jnp.asarray(target)))   # [N, W, L]
  hit = match[..., -1] & valid
  dense = np.asarray(rewards.prefix_reward(jnp.asarray(cand), jnp.asarray(valid),
                                           jnp.asarray(target))[1])
  logprob = np.cumsum(token_logp, -1)
  scores = {'logprob': logprob[..., -1], 'value_leaf': values[..., num_levels],
            'value_prefix': values[..., num_levels - 1], 'q_leaf': q[..., -1]}
  for w in (float(x) for x in _MIX.value):
    scores[f'mix_{w:g}'] = logprob[..., -1] + w * q[..., -1]
  ranker = run.config.ved.leaf_ranking
  ranker_key = {'logprob': 'logprob', 'value': 'q_leaf',
                'mix': f'mix_{float(run.config.ved.mix):g}'}[ranker]
  if ranker_key not in scores:
    scores[ranker_key] = logprob[..., -1] + run.config.ved.mix * q[..., -1]
  out_rows = []
  for name, score in scores.items():
    score = np.where(valid, score, -np.inf)
    row = {'score': name,
           'spearman_hit': metrics_lib.within_user_spearman(score, hit.astype(float)),
           'spearman_dense': metrics_lib.within_user_spearman(score, dense),
           **rerank_metrics(score, hit)}
    out_rows.append(row)
    logging.info('%s', row)
  per_depth = []
  for depth in range(1, num_levels + 1):
    reward = match[..., depth - 1].astype(float)
    per_depth.append({
        'depth': depth,
        'logprob': metrics_lib.within_user_spearman(logprob[..., depth - 1], reward),
        'value': metrics_lib.within_user_spearman(values[..., depth], reward),
        'q': metrics_lib.within_user_spearman(q[..., depth - 1], reward)})
    logging.info('%s', per_depth[-1])
  by_name = {r['score']: r for r in out_rows}
  print(json.dumps({'logprob_spearman': by_name['logprob']['spearman_hit'],
                    'value_spearman': by_name['value_leaf']['spearman_hit'],
                    'q_spearman': by_name['q_leaf']['spearman_hit'],
                    'ranker': ranker_key, 'ranker_spearman': by_name[ranker_key]['spearman_hit'],
                    'rows': out_rows, 'per_depth': per_depth, 'dataset': dataset.name,
                    'split': _SPLIT.value, 'n_users': int(len(rows)), 'value_heads': run.heads}))


if __name__ == '__main__':
  flags.mark_flag_as_required('workdir')
  app.run(main)
