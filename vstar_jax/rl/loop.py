"""The V-STAR RL loop: generate (VED or beam) -> score -> Sibling-GRPO update (design Sec. 1, 6).

One RL iteration is one jitted program, run per device under `jax.shard_map` over
the 'data' mesh axis (users sharded, params replicated):
  1. rollout: G candidates per user from the current policy, by VED (Sec. 1.1) or
     by trie-constrained beam search with G beams (the MiniOneRec baseline);
  2. score: rule / ranking / prefix reward, group (GRPO) and sibling advantages
     (or their alpha-blend), old log-probs and TD value targets under the
     rollout policy;
  3. update: `updates_per_rollout` PPO-clipped steps of update.rl_loss through
     update.local_update (grads psum-ed with global-count means, check_vma=False).
The same code runs on 1 CPU device, N simulated devices, GPUs and multi-host
meshes; tests/test_loop.py checks 4 simulated devices against 1.

Rank of a candidate for the `ranking` reward: its position among the group's valid
candidates by the rollout's own ranking score -- the beam score (sum of code
log-probs) for beam search; VED's leaf-ranking score (V by default, cumulative
log-prob with leaf_ranking='logprob') for VED. Both rollouts return candidates in
that order.

Randomness: VED's draws for a user come from fold_in(iteration key, the user's
position in the global batch), so they do not depend on how users are sharded.

Host side: deterministic batches of train users (a permutation per epoch from
seed and epoch; the position lives in the checkpointed state), periodic
validation by constrained beam search (valid HR/NDCG, stage 'rl' in
metrics.jsonl), Orbax checkpoints (latest + best by valid_NDCG@10) under
<workdir>/checkpoints/rl and auto-resume, bit-for-bit.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import pathlib
import time
from typing import Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec as P

from vstar_jax.data import types
from vstar_jax.decode import beam
from vstar_jax.decode import ved as ved_lib
from vstar_jax.model import decoder
from vstar_jax.rl import advantages
from vstar_jax.rl import rewards
from vstar_jax.rl import update
from vstar_jax.rl import value_pretrain
from vstar_jax.sid import trie as trie_lib
from vstar_jax.train import checkpoint as checkpoint_lib
from vstar_jax.train import metrics_log
from vstar_jax.train import sft
from vstar_jax.train import state as state_lib

STAGE = 'rl'
VALUE_STAGE = 'rl_value'
BEST_METRIC = 'valid_NDCG@10'
ROLLOUTS = ('ved', 'beam')
REWARDS = ('ranking', 'rule', 'prefix')


def default_rl_config() -> ml_collections.ConfigDict:
  """config.rl: every knob of the RL stage, with the reason for its default."""
  c = ml_collections.ConfigDict()
  c.distributed = False        # jax.distributed.initialize() first (multi-host launches)
  c.train_splits = ('train',)  # users the rollouts are drawn from (as sft.train_splits)
  # Workdir whose SFT checkpoint (and learned SIDs) RL starts from; '' = this run's workdir.
  # Lets a sweep share one SFT model across every RL seed and knob instead of retraining it.
  c.init_workdir = ''
  c.valid_split = 'valid'
  # Rollout.
  c.rollout = 'ved'            # 'ved' (V-STAR) | 'beam' (G beams: MiniOneRec's rollouts)
  c.group_size = 16            # G candidates per user (MiniOneRec / V-STAR group size)
  c.ved_width = 8              # w, stage-1 beam width (design 1.1)
  c.ved_multiplier = 2.0       # m: budget floor(m (1 + (L-1) w)) = 34 forwards ~ beam-16's 33
  c.ved_lam = 0.1              # lambda in G = V + lambda H (design 1.1)
  c.ved_beta = 1.0             # UCB exploration weight (design 1.1)
  c.leaf_ranking = 'value'     # 'value' | 'logprob' (design 1.1 default: V)
  # Reward and advantages.
  c.reward = 'ranking'         # 'ranking' | 'rule' | 'prefix' (design 1.3 default: ranking)
  c.w_sib = 1.0                # sibling loss weight (0: plain GRPO)
  c.alpha = -1.0               # -1: off; in [0, 1]: per-token alpha*group + (1-alpha)*sibling
  c.prefix_weights = rewards.PREFIX_WEIGHTS  # (0.3, 0.5, 1.0), design 1.2
  c.gamma = rewards.GAMMA                    # 0.99, design 1.2
  c.use_item_embeddings = False  # prefix miss penalty -w(1 - cos); needs train(item_emb=...)
  # Loss and optimizer.
  c.kl_beta = 1e-3             # design 1.2
  c.w_value = 0.5              # as update.LossConfig
  c.clip_eps = 0.2             # PPO clip
  c.lr = 1e-4                  # synthetic check (30 it.): 1e-5 no effect, 3e-4 best, 1e-2 diverges
  c.warmup_steps = 10
  c.weight_decay = 0.0         # RL fine-tuning: no pull towards 0 besides the KL to the reference
  c.clip_norm = 1.0
  # Schedule.
  c.batch_users = 64           # users per iteration (global; divisible by the device count)
  c.steps = 300                # iterations
  c.updates_per_rollout = 1    # PPO epochs per rollout (1: on-policy, ratio 1, as MiniOneRec)
  c.log_every = 1
  c.valid_every = 50
  c.valid_max_rows = 2000
  c.valid_beams = 20
  c.checkpoint_every = 25
  # Value-head pretraining on SFT rollouts (SFT never trains V, which VED ranks by).
  c.value_pretrain_steps = 100
  c.value_pretrain_lr = 1e-3   # synthetic check: 3e-3 oscillates, 3e-4 slower
  return c


def validate_config(r: ml_collections.ConfigDict) -> None:
  """Rejects impossible config.rl settings, naming the flag."""
  def bad(flag, msg):
    raise ValueError(f'--config.rl.{flag}: {msg}')
  if r.rollout not in ROLLOUTS:
    bad('rollout', f'{r.rollout!r} is not one of {ROLLOUTS}')
  if r.reward not in REWARDS:
    bad('reward', f'{r.reward!r} is not one of {REWARDS}')
  if r.leaf_ranking not in ('value', 'logprob'):
    bad('leaf_ranking', f'{r.leaf_ranking!r} is not value or logprob')
  for split in r.train_splits:
    if split not in ('train', 'valid'):
      bad('train_splits', f'{split!r} is not train or valid')
  if r.group_size < 2:
    bad('group_size', f'must be >= 2 (advantages are relative within a group), got {r.group_size}')
  if not (r.alpha == -1 or 0 <= r.alpha <= 1):
    bad('alpha', f'must be -1 (off) or in [0, 1], got {r.alpha}')
  for flag in ('batch_users', 'steps', 'updates_per_rollout', 'log_every', 'valid_every'):
    if r[flag] < 1:
      bad(flag, f'must be >= 1, got {r[flag]}')
  if r.valid_beams < 10:
    bad('valid_beams', f'must be >= 10 (validation selects by NDCG@10), got {r.valid_beams}')
  if r.ved_multiplier < 1:
    bad('ved_multiplier', f'must be >= 1: the budget m*(1+(L-1)*w) may not be below the stage-1 '
        f'base budget, got {r.ved_multiplier}')
  if r.ved_width < 1:
    bad('ved_width', f'must be >= 1, got {r.ved_width}')
  if r.value_pretrain_steps < 0:
    bad('value_pretrain_steps', f'must be >= 0, got {r.value_pretrain_steps}')


@dataclasses.dataclass(frozen=True)
class RlSettings:
  """The static part of config.rl that the jitted programs depend on (hashable)."""
  rollout: str
  group_size: int
  ved: ved_lib.VedConfig
  reward: str
  w_sib: float
  alpha: float
  loss: update.LossConfig
  targets: value_pretrain.ValueTargetConfig
  updates_per_rollout: int
  lr: float
  warmup_steps: int
  weight_decay: float
  clip_norm: float
  total_updates: int
  value_lr: float

  @classmethod
  def from_config(cls, r: ml_collections.ConfigDict) -> RlSettings:
    total = r.steps * r.updates_per_rollout
    return cls(
        rollout=r.rollout, group_size=r.group_size,
        ved=ved_lib.VedConfig(width=r.ved_width, multiplier=r.ved_multiplier, lam=r.ved_lam,
                              beta=r.ved_beta, group_size=r.group_size,
                              leaf_ranking=r.leaf_ranking),
        reward=r.reward, w_sib=r.w_sib, alpha=r.alpha,
        loss=update.LossConfig(clip_eps=r.clip_eps, w_sib=r.w_sib, kl_beta=r.kl_beta,
                               w_value=r.w_value),
        targets=value_pretrain.ValueTargetConfig(weights=tuple(r.prefix_weights), gamma=r.gamma,
                                                 use_item_embeddings=r.use_item_embeddings),
        updates_per_rollout=r.updates_per_rollout, lr=r.lr,
        warmup_steps=min(r.warmup_steps, total - 1), weight_decay=r.weight_decay,
        clip_norm=r.clip_norm, total_updates=total, value_lr=r.value_pretrain_lr)

  def optimizer(self):
    """Clipped AdamW with warmup + cosine decay over all PPO updates."""
    return state_lib.make_optimizer(self.lr, self.warmup_steps, self.total_updates,
                                    self.weight_decay, self.clip_norm)


def candidate_log_probs(params, batch: dict, *, cfg: decoder.DecoderConfig):
  """Policy fn of update.rl_loss: log-probs and values along each user's G candidates.

  The prompt is prefilled once per user and shared by its G candidates; each
  candidate's suffix [SEP, c_0 .. c_{L-1}] is then run by decoder.prefix_forward at
  depths 0..L (the L+1 calls run the same suffix pass, which XLA computes once). This
  equals teacher-forced forward_train on the candidates up to float rounding
  (tests/test_loop.py) at a fraction of the cost: the prompt is not re-encoded G times.

  Args:
    params: decoder params.
    batch: history [B, T, L], cand [B, G, L] (-1 rows where invalid), valid [B, G].
    cfg: the DecoderConfig.

  Returns:
    token log-probs [B, G, L] and values [B, G, L+1] (V of each candidate's prefixes
    of length 0..L); 0 for invalid candidates.
  """
  cand, valid = batch['cand'], batch['valid']
  codes = jnp.maximum(cand, 0)
  prompt = decoder.prefill(params, cfg, batch['history'])
  token_logp, values = [], []
  for depth in range(cfg.num_levels + 1):
    log_probs, value = decoder.prefix_forward(params, cfg, prompt, codes,
                                              jnp.full(codes.shape[:2], depth, jnp.int32))
    if depth < cfg.num_levels:
      token_logp.append(jnp.take_along_axis(log_probs, codes[..., depth, None], axis=-1)[..., 0])
    values.append(value)
  keep = valid[..., None]
  return (jnp.where(keep, jnp.stack(token_logp, axis=-1), 0.0),
          jnp.where(keep, jnp.stack(values, axis=-1), 0.0))


def user_keys(key: jax.Array, user_index: jnp.ndarray) -> jax.Array:
  """Per-user keys [B] from the users' positions in the global batch (sharding-invariant)."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, user_index)


def rollout(params, trie: trie_lib.Trie, history: jnp.ndarray, user_index: jnp.ndarray,
            key: jax.Array, *, cfg: decoder.DecoderConfig, settings: RlSettings) -> dict:
  """G candidates per user from the current policy.

  Args:
    params: decoder params; trie: the catalogue trie;
    history: [B, T, L] int32; user_index: [B] int32 position in the global batch;
    key: the iteration's key.

  Returns:
    dict: cand [B, G, L] int32 (-1 rows where invalid), valid [B, G] bool,
    rank_score [B, G] float32 (beam score or VED leaf score, -inf where invalid),
    forwards [B] int32 backbone forwards (VED's count; beam: 1 + (L-1)*G).
  """
  num_users, num_levels = history.shape[0], cfg.num_levels
  if settings.rollout == 'beam':
    cand, score = beam.beam_search(params, cfg, trie, history, settings.group_size)
    forwards = jnp.full((num_users,), 1 + (num_levels - 1) * settings.group_size, jnp.int32)
    return {'cand': cand, 'valid': score > -jnp.inf, 'rank_score': score, 'forwards': forwards}

  def one_user(user_history, user_key):
    prompt = decoder.prefill(params, cfg, user_history[None])
    out = ved_lib.ved(lambda p, d: decoder.prefix_forward(params, cfg, prompt, p, d), trie,
                      user_key, settings.ved, 1)
    return out.candidates[0], out.valid[0], out.scores[0], out.num_forwards[0]

  cand, valid, score, forwards = jax.vmap(one_user)(history, user_keys(key, user_index))
  return {'cand': cand, 'valid': valid, 'rank_score': score, 'forwards': forwards}


def scalar_reward(ro: dict, batch: dict, trie: trie_lib.Trie, item_emb,
                  settings: RlSettings) -> jnp.ndarray:
  """The configured reward of each candidate: [B, G] float32 (0 where invalid)."""
  cand, valid, target = ro['cand'], ro['valid'], batch['target']
  if settings.reward == 'rule':
    return rewards.rule_reward(cand, valid, target)
  if settings.reward == 'ranking':
    return rewards.ranking_reward(cand, valid, target, ro['rank_score'])
  _, total = value_pretrain.dense_level_rewards(cand, valid, target, batch['target_item'], trie,
                                                item_emb, settings.targets)
  return total


def score_rollout(ro: dict, batch: dict, old_values: jnp.ndarray, trie: trie_lib.Trie, item_emb,
                  settings: RlSettings) -> dict:
  """Rewards -> advantages and value targets: the rl_loss batch fields of a rollout.

  Returns:
    reward [B, G]; group_adv [B, G] (or [B, G, L] for the alpha-blend); sibling_adv
    [B, G, L] (zeros for plain GRPO and for the blend, whose sibling part is in
    group_adv); value_targets [B, G, L+1] (TD targets of value_pretrain, bootstrapped
    on the rollout policy's values).
  """
  cand, valid = ro['cand'], ro['valid']
  reward = scalar_reward(ro, batch, trie, item_emb, settings)
  group_adv = advantages.group_advantages(reward, valid)
  sibling_adv = jnp.zeros(cand.shape, jnp.float32)
  if settings.alpha >= 0:
    group_adv = advantages.blend(group_adv, advantages.sibling_advantages(cand, reward, valid),
                                 settings.alpha)
  elif settings.w_sib:
    sibling_adv = advantages.sibling_advantages(cand, reward, valid)
  targets = value_pretrain.dense_value_targets(cand, valid, batch['target'], batch['target_item'],
                                               old_values, trie, item_emb, settings.targets)
  return {'reward': reward, 'group_adv': group_adv, 'sibling_adv': sibling_adv,
          'value_targets': targets}


def rollout_metrics(ro: dict, reward: jnp.ndarray, target: jnp.ndarray,
                    axis_name: Optional[str]) -> dict:
  """Global rollout statistics (shard sums over global counts, psum-ed when sharded)."""
  cand, valid = ro['cand'], ro['valid']
  users = jnp.ones(valid.shape[:1], bool)
  count = jnp.maximum(jnp.sum(valid, -1), 1)
  mean = jnp.sum(reward * valid, -1) / count
  group_std = jnp.sqrt(jnp.sum(valid * (reward - mean[:, None]) ** 2, -1) / count)
  hit = jnp.any(rewards.prefix_match(cand, target)[..., -1] & valid, -1)
  index = jnp.arange(cand.shape[1])
  same_l1 = cand[:, :, None, 0] == cand[:, None, :, 0]
  first_l1 = valid & ~jnp.any(same_l1 & valid[:, None, :] & (index[None, :] < index[:, None]), -1)
  out = {
      'reward_mean': update.global_mean(reward, valid, axis_name),
      'reward_group_std': update.global_mean(group_std, users, axis_name),
      'rollout_hit': update.global_mean(hit, users, axis_name),
      'distinct_l1': update.global_mean(jnp.sum(first_l1, -1), users, axis_name),
      'num_valid': update.global_mean(jnp.sum(valid, -1), users, axis_name),
      'forwards_per_user': update.global_mean(ro['forwards'], users, axis_name),
  }
  return out if axis_name is None else lax.psum(out, axis_name)


def _iteration_shard(state: state_lib.TrainState, batch: dict, trie: trie_lib.Trie, item_emb, *,
                     cfg: decoder.DecoderConfig, settings: RlSettings, steps_per_epoch: int):
  """Per-device body of one RL iteration: rollout, scoring, updates_per_rollout PPO updates."""
  axis = update.DATA_AXIS
  policy_fn = functools.partial(candidate_log_probs, cfg=cfg)
  state, key = state_lib.split_rng(state)
  ro = rollout(state.params, trie, batch['history'], batch['user_index'], key, cfg=cfg,
               settings=settings)
  fwd = {'history': batch['history'], 'cand': ro['cand'], 'valid': ro['valid']}
  old_logp, old_values = policy_fn(state.params, fwd)
  scored = score_rollout(ro, batch, old_values, trie, item_emb, settings)
  loss_batch = dict(fwd, old_logp=old_logp, group_adv=scored['group_adv'],
                    sibling_adv=scored['sibling_adv'], value_targets=scored['value_targets'])
  rl_state = update.RLState(step=state.step, params=state.params,
                            ref_params=state.extra['ref_params'], opt_state=state.opt_state)

  def ppo_update(s, _):
    return update.local_update(s, loss_batch, policy_fn, settings.optimizer(), settings.loss, axis)

  rl_state, metrics = lax.scan(ppo_update, rl_state, None, length=settings.updates_per_rollout)
  metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
  metrics.update(rollout_metrics(ro, scored['reward'], batch['target'], axis))
  index = state.data_index + 1
  wrap = index >= steps_per_epoch
  state = state.replace(step=state.step + 1, params=rl_state.params, opt_state=rl_state.opt_state,
                        data_epoch=state.data_epoch + wrap.astype(jnp.int32),
                        data_index=jnp.where(wrap, 0, index).astype(jnp.int32))
  return state, metrics


@dataclasses.dataclass(frozen=True)
class Programs:
  """The jitted, sharded programs of one (decoder, settings, mesh) combination.

  iteration(state, batch, trie, item_emb) -> (state, metrics); the state is donated.
  value: the value-head pretraining step (value_pretrain.ValueTrainer) over the same rollouts.
  """
  iteration: Callable
  value: value_pretrain.ValueTrainer


@functools.lru_cache(maxsize=8)
def make_programs(cfg: decoder.DecoderConfig, settings: RlSettings, mesh: Mesh,
                  steps_per_epoch: int) -> Programs:
  """Builds (once per static configuration: re-runs reuse the compiled programs) the RL programs."""
  body = functools.partial(_iteration_shard, cfg=cfg, settings=settings,
                           steps_per_epoch=steps_per_epoch)
  iteration = jax.shard_map(body, mesh=mesh, in_specs=(P(), P(update.DATA_AXIS), P(), P()),
                            out_specs=(P(), P()), check_vma=False)
  rollout_fn = functools.partial(rollout, cfg=cfg, settings=settings)
  value = value_pretrain.make_value_step(functools.partial(candidate_log_probs, cfg=cfg),
                                         rollout_fn, settings.targets, settings.value_lr,
                                         settings.clip_norm, mesh)
  return Programs(iteration=jax.jit(iteration, donate_argnums=0), value=value)


def initialize_distributed(r: ml_collections.ConfigDict) -> None:
  """jax.distributed.initialize() when config.rl.distributed (multi-host); a no-op otherwise or if done."""
  if r.distributed and not jax.distributed.is_initialized():
    jax.distributed.initialize()


def init_state(sft_params, settings: RlSettings, seed: int) -> state_lib.TrainState:
  """RL state at step 0: the policy and a frozen reference copy of the SFT params.

  extra['ref_params'] is the KL reference; extra['value_pretrained'] ([] int32) is
  1 once value-head pretraining is done, so a resumed run does not repeat it.
  """
  params = jax.tree.map(jnp.array, sft_params)
  extra = {'ref_params': jax.tree.map(jnp.array, sft_params),
           'value_pretrained': jnp.zeros((), jnp.int32)}
  return state_lib.TrainState.create(params, settings.optimizer(),
                                     jax.random.key(seed), extra=extra)


@dataclasses.dataclass
class UserRows:
  """The users RL draws batches from: history [N, T, L], target [N, L], target_item [N]."""
  history: np.ndarray
  target: np.ndarray
  target_item: np.ndarray

  @classmethod
  def from_dataset(cls, dataset: types.Dataset, splits) -> UserRows:
    history, target = sft.training_rows(dataset, splits)
    items = np.concatenate([dataset.splits[s].target_item for s in splits]).astype(np.int32)
    return cls(history, target, items)

  def batch(self, rows: np.ndarray, mesh: Mesh) -> dict:
    """This process's share of the global batch `rows`, assembled into sharded global arrays."""
    per_process = len(rows) // jax.process_count()
    local = slice(jax.process_index() * per_process, (jax.process_index() + 1) * per_process)
    rows_here = rows[local]
    host = {'history': self.history[rows_here], 'target': self.target[rows_here],
            'target_item': self.target_item[rows_here],
            'user_index': np.arange(len(rows), dtype=np.int32)[local]}
    return update.shard_batch(host, mesh)


def batch_rows(num_rows: int, batch_users: int, seed: int, epoch: int, index: int) -> np.ndarray:
  """Global row ids of batch `index` of `epoch` (a deterministic permutation per epoch)."""
  order = sft.epoch_order(num_rows, seed, epoch)
  return order[index * batch_users:(index + 1) * batch_users]


@dataclasses.dataclass
class RlResult:
  """params: the kept (best-by-valid) policy; final_params: the policy after the last step."""
  params: dict
  best_valid: dict
  steps: int
  best_step: int = -1
  final_params: Optional[dict] = None


def train(config: ml_collections.ConfigDict, dataset: types.Dataset, workdir: pathlib.Path,
          sft_params, cfg: decoder.DecoderConfig, stop_at_step: Optional[int] = None,
          item_emb: Optional[np.ndarray] = None) -> RlResult:
  """Runs (or resumes) V-STAR RL from the SFT policy; returns the best-by-valid params.

  Args:
    config: the full config (rl, eval.batch_size, seed).
    dataset: the dataset (train users for rollouts, the valid split for selection).
    workdir: run directory; checkpoints in workdir/checkpoints/rl, metrics in
      workdir/metrics.jsonl (stage 'rl').
    sft_params: the SFT policy: RL's start and its frozen KL reference.
    cfg: the decoder's DecoderConfig.
    stop_at_step: stop (after checkpointing) once this many iterations are done, as a
      preemption would; a re-run resumes.
    item_emb: [I, D] item embeddings for the prefix reward's miss penalty
      (required with rl.use_item_embeddings).

  Raises:
    sft.TrainingDiverged: the loss became NaN/Inf (the last good checkpoint is kept).
  """
  r = config.rl
  initialize_distributed(r)
  validate_config(r)
  if r.use_item_embeddings and item_emb is None:
    raise ValueError('--config.rl.use_item_embeddings needs item embeddings: pass train(item_emb=...)')
  item_emb = jnp.asarray(item_emb, jnp.float32) if r.use_item_embeddings else None
  mesh = update.make_mesh()
  num_devices = mesh.shape[update.DATA_AXIS]
  if r.batch_users % num_devices:
    raise ValueError(f'--config.rl.batch_users={r.batch_users} is not divisible by the '
                     f'{num_devices} devices')
  settings = RlSettings.from_config(r)
  users = UserRows.from_dataset(dataset, r.train_splits)
  num_rows = users.history.shape[0]
  if num_rows < r.batch_users:
    raise ValueError(f'--config.rl.batch_users={r.batch_users} exceeds the {num_rows} train rows')
  steps_per_epoch = num_rows // r.batch_users
  programs = make_programs(cfg, settings, mesh, steps_per_epoch)
  host_trie = trie_lib.build_trie(dataset.item_codes, dataset.num_codes)
  trie = update.replicate(host_trie, mesh)
  if item_emb is not None:
    item_emb = update.replicate(item_emb, mesh)
  state = update.replicate(init_state(sft_params, settings, config.seed), mesh)
  ckpt = checkpoint_lib.Checkpointer(pathlib.Path(workdir) / 'checkpoints' / STAGE, max_to_keep=2,
                                     keep_best=True, best_metric=BEST_METRIC)
  log = metrics_log.MetricsLog(workdir)
  writer = log.write if jax.process_index() == 0 else (lambda *a, **k: None)
  restored = ckpt.restore_latest(state)
  if restored is not None:
    state = restored[0]
    logging.info('rl: resumed from step %d (epoch %d, batch %d)', int(state.step),
                 int(state.data_epoch), int(state.data_index))
  if jax.process_index() == 0:
    log.truncate_after(STAGE, int(state.step))
  valid_rows = sft.validation_rows(len(dataset.splits[r.valid_split]), r.valid_max_rows)

  def validate(step, params):
    _, valid = sft.beam_eval(jax.device_get(params), cfg, host_trie, dataset, r.valid_split,
                             valid_rows, r.valid_beams, config.eval.batch_size)
    valid = {f'valid_{k}': v for k, v in valid.items()}
    writer(STAGE, step, **valid)
    logging.info('rl step %d: valid HR@10 %.4f NDCG@10 %.4f', step, valid['valid_HR@10'],
                 valid[BEST_METRIC])
    return valid

  if not int(state.extra['value_pretrained']):
    if jax.process_index() == 0:
      log.truncate_after(VALUE_STAGE, 0)
    if r.value_pretrain_steps:
      state = _pretrain_value_head(state, programs, users, r, config.seed, steps_per_epoch, trie,
                                   item_emb, mesh, writer)
    state = state.replace(extra=dict(state.extra, value_pretrained=jnp.ones((), jnp.int32)))
    state = update.replicate(state, mesh)  # every leaf on the mesh again: no recompilation
  if restored is None:  # step 0: the SFT policy (with its pretrained V), the baseline to beat
    ckpt.save(0, state, metrics=validate(0, state.params), meta={'stage': STAGE})

  step = int(state.step)
  progress = metrics_log.Progress(STAGE, r.steps, start=step, unit='iterations')
  logging.info('rl: %d train rows, %d users/iteration on %d devices, rollout %s, G=%d, %d steps',
               num_rows, r.batch_users, num_devices, r.rollout, r.group_size, r.steps)
  while step < r.steps:
    rows = batch_rows(num_rows, r.batch_users, config.seed, int(state.data_epoch),
                      int(state.data_index))
    start = time.perf_counter()
    state, metrics = programs.iteration(state, users.batch(rows, mesh), trie, item_emb)
    metrics = jax.device_get(metrics)
    wall = time.perf_counter() - start
    step += 1
    if not (math.isfinite(metrics['loss']) and math.isfinite(metrics['grad_norm'])):
      ckpt.close()
      raise sft.TrainingDiverged(
          f'rl: loss {metrics["loss"]} / grad norm {metrics["grad_norm"]} at step {step}; stopped. '
          f'The last good checkpoint (step {ckpt.latest_step()}) is kept in {ckpt.directory}')
    if step % r.log_every == 0 or step == r.steps:
      writer(STAGE, step, wall_s=wall, users_per_s=r.batch_users / wall, **metrics)
      progress.update(step, f'loss {metrics["loss"]:.4f} hit {metrics["rollout_hit"]:.3f}')
    if step % r.valid_every == 0 or step == r.steps:
      ckpt.save(step, state, metrics=validate(step, state.params), meta={'stage': STAGE})
    elif (r.checkpoint_every and step % r.checkpoint_every == 0) or step == stop_at_step:
      ckpt.save(step, state, meta={'stage': STAGE})
    if stop_at_step is not None and step >= stop_at_step:
      ckpt.close()
      return RlResult(jax.device_get(state.params), {}, step)
  ckpt.wait()
  best = ckpt.restore_best(state)
  best_step = ckpt.best_step() if best is not None else step
  params = (best[0] if best is not None else state).params
  ckpt.close()
  best_valid = next((x for x in log.read(STAGE) if x['step'] == best_step and BEST_METRIC in x), {})
  logging.info('rl: done; using step %d (valid NDCG@10 %s)', best_step, best_valid.get(BEST_METRIC))
  return RlResult(jax.device_get(params), best_valid, step, best_step,
                  jax.device_get(state.params))


def _pretrain_value_head(state, programs: Programs, users: UserRows, r, seed: int,
                         steps_per_epoch: int, trie, item_emb, mesh: Mesh, writer):
  """Value-head pretraining on rollouts of the (unchanged) SFT policy over epoch-0 batches."""
  state, key = state_lib.split_rng(state)
  num_rows = users.history.shape[0]
  batches = (users.batch(batch_rows(num_rows, r.batch_users, seed, 0, i % steps_per_epoch), mesh)
             for i in range(r.value_pretrain_steps))
  progress = metrics_log.Progress('rl value pretraining', r.value_pretrain_steps)

  def log_fn(i, metrics):
    if i % r.log_every == 0 or i == r.value_pretrain_steps:
      writer(VALUE_STAGE, i, **metrics)
    progress.update(i, f'value loss {metrics["value_loss"]:.4f}')

  params, losses = value_pretrain.pretrain(programs.value, state.params, batches, trie, item_emb,
                                           key, mesh, log_fn)
  logging.info('rl: value pretraining %d steps, loss %.4f -> %.4f', len(losses), losses[0],
               losses[-1])
  return state.replace(params=params)


def restore_best_params(workdir: pathlib.Path, params_template):
  """Params of the best (else latest) RL checkpoint in workdir/checkpoints/rl, or None.

  The RL state carries extra['ref_params'] and extra['value_pretrained'], so restoring
  needs this layout (a plain sft TrainState template does not match).
  """
  directory = pathlib.Path(workdir) / 'checkpoints' / STAGE
  if not directory.exists():
    return None
  template = state_lib.TrainState.create(
      params_template, state_lib.make_optimizer(1e-3, 0, 2), jax.random.key(0),
      extra={'ref_params': params_template, 'value_pretrained': jnp.zeros((), jnp.int32)})
  ckpt = checkpoint_lib.Checkpointer(directory, best_metric=BEST_METRIC)
  restored = ckpt.restore_best(template) or ckpt.restore_latest(template)
  ckpt.close()
  return None if restored is None else restored[0].params
