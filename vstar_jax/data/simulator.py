"""A known-reward simulator, where V-STAR's mechanism can be checked without logged-data limits.

A hidden preference model scores every (user, item): true reward r(u, i) = sigmoid(u . v_i),
with item vectors v_i that follow the SID tree (items sharing a prefix are alike). Logged
histories come from a popularity-biased exposure policy, p(next = i) proportional to
pop_i^alpha * exp(gamma * r(u, i)), so the likelihood an SFT model learns is mostly
popularity, not the true reward. In every level-1 branch one level-2 branch holds planted
"gems": items its users like best, exposed rarely (low popularity): high reward in
low-probability branches, the case beam search prunes. The reward of a generated item is
its true preference, and each user's true best item is known.

Splits are leave-one-out per user (test: the last logged item, valid: the one before, train:
the rest); every row carries its user's hidden vector (Split.user_features), which the
`preference` reward (rl.simulator_reward) reads with the item vectors.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vstar_jax.data import sid_strings
from vstar_jax.data import synthetic
from vstar_jax.data import types


@dataclasses.dataclass(frozen=True)
class SimulatorConfig:
  """Sizes and the exposure policy of a simulated world (docs/method.md, "Simulator")."""
  num_items: int = 400
  num_users: int = 500
  num_codes: int = 16
  num_top: int = 8             # level-1 branches in use
  dim: int = 16                # F, preference-space width
  seq_len: int = 12            # logged interactions per user
  max_history: int = 10
  popularity_exponent: float = 1.0   # alpha: exposure follows popularity ...
  preference_weight: float = 2.0     # gamma: ... tilted a little by the true reward
  gem_exposure: float = 0.2          # planted gems' popularity, relative to the median
  gem_boost: float = 4.0             # how much more a branch's users like its gems
  user_scale: float = 2.0            # |u|: how sharp preferences are


@dataclasses.dataclass(frozen=True)
class World:
  """The hidden truth: item_vectors [I, F], user_vectors [U, F], popularity [I], gems [I] bool."""
  item_codes: np.ndarray
  item_vectors: np.ndarray
  user_vectors: np.ndarray
  popularity: np.ndarray
  gems: np.ndarray

  def preference(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """True reward r(u, i) = sigmoid(u . v_i) for users [...] and items [...] (broadcast)."""
    score = np.sum(self.user_vectors[users] * self.item_vectors[items], axis=-1)
    return 1.0 / (1.0 + np.exp(-score))

  def list_rewards(self, users: np.ndarray, items: np.ndarray, empty: float = 0.0) -> np.ndarray:
    """[N, K] true reward of each user's (users [N]) listed items [N, K]; `empty` where -1."""
    items = np.asarray(items)
    return np.where(items >= 0, self.preference(users[:, None], np.maximum(items, 0)), empty)

  def best_items(self) -> np.ndarray:
    """[U] each user's true best item."""
    return np.argmax(self.user_vectors @ self.item_vectors.T, axis=1)


def make_world(cfg: SimulatorConfig, seed: int) -> World:
  """Items (SIDs, vectors, popularity, gems) and users of one seeded world."""
  rng = np.random.default_rng(seed)
  codes = synthetic.random_sids(rng, cfg.num_items, 3, cfg.num_codes, cfg.num_top)
  directions = [rng.normal(size=(cfg.num_codes, cfg.dim)) * 0.6 ** level for level in range(3)]
  vectors = sum(directions[l][codes[:, l]] for l in range(3))
  vectors = vectors + 0.3 * rng.normal(size=vectors.shape)
  popularity = rng.lognormal(0.0, 1.5, size=cfg.num_items)
  gems = np.zeros(cfg.num_items, bool)
  for top in np.unique(codes[:, 0]):
    branches = np.unique(codes[codes[:, 0] == top, 1])
    gem_branch = rng.choice(branches)
    members = (codes[:, 0] == top) & (codes[:, 1] == gem_branch)
    gems |= members
    vectors[members] += cfg.gem_boost * directions[0][top] / np.linalg.norm(directions[0][top])
  popularity[gems] = cfg.gem_exposure * np.median(popularity)
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  anchors = rng.choice(cfg.num_items, cfg.num_users)
  users = directions[0][codes[anchors, 0]] + 0.5 * rng.normal(size=(cfg.num_users, cfg.dim))
  users = cfg.user_scale * users / np.linalg.norm(users, axis=1, keepdims=True)
  return World(codes.astype(np.int32), vectors.astype(np.float32), users.astype(np.float32),
               popularity, gems)


def log_interactions(world: World, cfg: SimulatorConfig, seed: int) -> np.ndarray:
  """[U, seq_len] logged items per user from the popularity-biased exposure policy."""
  rng = np.random.default_rng(seed + 1)
  logits = (cfg.popularity_exponent * np.log(world.popularity)[None, :]
            + cfg.preference_weight * world.preference(np.arange(len(world.user_vectors))[:, None],
                                                       np.arange(len(world.item_codes))[None, :]))
  probs = np.exp(logits - logits.max(axis=1, keepdims=True))
  probs /= probs.sum(axis=1, keepdims=True)
  return np.stack([rng.choice(len(world.item_codes), cfg.seq_len, p=p) for p in probs])


def make_dataset(cfg: SimulatorConfig, seed: int) -> tuple[types.Dataset, World]:
  """The logged dataset (leave-one-out splits, user vectors on every row) and its hidden world."""
  world = make_world(cfg, seed)
  logs = log_interactions(world, cfg, seed)
  rows = {s: [] for s in ('train', 'valid', 'test')}
  for user, seq in enumerate(logs.tolist()):
    for t in range(1, cfg.seq_len):
      split = 'test' if t == cfg.seq_len - 1 else 'valid' if t == cfg.seq_len - 2 else 'train'
      history = seq[max(0, t - cfg.max_history):t]
      rows[split].append((user, [types.PAD] * (cfg.max_history - len(history)) + history,
                          len(history), seq[t]))
  splits = {}
  for name, split_rows in rows.items():
    users, history, length, target = (list(x) for x in zip(*split_rows))
    splits[name] = types.Split(name, np.asarray([f'U{u}' for u in users], dtype=object),
                               np.asarray(history, np.int32), np.asarray(length, np.int32),
                               np.asarray(target, np.int32), world.user_vectors[users])
  sids = np.asarray(sid_strings.format_sids(world.item_codes), dtype=object)
  dataset = types.Dataset(
      name='simulator', item_codes=world.item_codes, num_codes=cfg.num_codes,
      item_titles=np.asarray([f'item {i}' for i in range(cfg.num_items)], dtype=object),
      splits=splits, target_sids={s: sids[v.target_item] for s, v in splits.items()})
  return dataset, world


def user_index(split: types.Split) -> np.ndarray:
  """[N] the simulated user of each row (from its 'U<k>' id)."""
  return np.array([int(u[1:]) for u in split.user_ids])


def user_scores(world: World, users: np.ndarray, items: np.ndarray, k: int = 10) -> dict:
  """Per user [N]: mean true reward of the top-k items [N, >=k] (-1 = no item, reward 0) and
  whether they hold the user's true best item; the rows a paired test compares."""
  items = np.asarray(items)[:, :k]
  best = world.best_items()[users]
  return {'true_reward': world.list_rewards(users, items).mean(axis=1),
          f'best_hit@{k}': (items == best[:, None]).any(axis=1).astype(np.float64)}


def score_lists(world: World, users: np.ndarray, items: np.ndarray, k: int = 10) -> dict:
  """Mean true reward of each user's top-k items [N, >=k] (-1 = no item) and best-item hit@k."""
  return {name: float(per_user.mean())
          for name, per_user in user_scores(world, users, items, k).items()}


def group_user_scores(world: World, users: np.ndarray, items: np.ndarray) -> dict:
  """Per user [N] of a rollout group [N, G] (-1 = empty slot): its mean and best true reward
  (nan for an empty group) and whether it holds the user's true best item; the rows a paired
  test of two rollout methods on the same users compares."""
  items = np.asarray(items)
  reward = world.list_rewards(users, items, empty=np.nan)                  # [N, G]
  has_any = (items >= 0).any(axis=1)
  filled = np.where(has_any[:, None], reward, 0.0)   # an empty group: nan, without a warning
  best = world.best_items()[users]
  return {'group_mean_reward': np.where(has_any, np.nanmean(filled, axis=1), np.nan),
          'group_max_reward': np.where(has_any, np.nanmax(filled, axis=1), np.nan),
          'best_in_group': (items == best[:, None]).any(axis=1).astype(np.float64)}


def group_quality(world: World, users: np.ndarray, items: np.ndarray) -> dict:
  """What a rollout group [N, G] of items (-1 = empty slot) offers RL: mean and best true reward,
  the spread GRPO normalises by, how often it holds the user's true best item, and the share
  of its items that are planted gems (high reward in rarely exposed branches)."""
  items = np.asarray(items)
  valid = items >= 0
  reward = world.list_rewards(users, items, empty=np.nan)
  has_any = valid.any(axis=1)
  per_user = group_user_scores(world, users, items)
  return {'group_mean_reward': float(np.nanmean(reward)),      # over filled slots, not users
          'group_max_reward': float(np.mean(per_user['group_max_reward'][has_any])),
          'group_std_reward': float(np.mean(np.nanstd(reward[has_any], axis=1))),
          'best_in_group': float(np.mean(per_user['best_in_group'])),
          'gem_share': float(np.sum(world.gems[np.maximum(items, 0)] & valid) /
                             max(int(valid.sum()), 1))}
