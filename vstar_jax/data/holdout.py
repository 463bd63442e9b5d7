"""The RL holdout: rows the SFT policy never fits, for RL rollouts (docs/method.md, "RL holdout").

For a seeded fraction of the users with train rows, the user's LAST train row (its most
recent transition: rows are in per-user time order in MiniOneRec's files and in the rebuilt
train subset, which has no timestamps) moves from `train` into a new `holdout` split. SFT
trains on what is left of `train`; RL draws its rollouts from `holdout`, whose targets the
SFT policy has never been fitted on, as it has not on valid and test. Valid stays for
selection only; test is untouched.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from vstar_jax.data import types

SPLIT = 'holdout'


def holdout_rows(user_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
  """Row indices [R] (sorted) of the last row of a seeded `fraction` of the distinct users."""
  last = {}
  for row, user in enumerate(user_ids.tolist()):
    last[user] = row
  users = sorted(last)
  chosen = np.random.default_rng(seed).permutation(len(users))[:round(fraction * len(users))]
  return np.sort(np.array([last[users[i]] for i in chosen], np.int64))


def split_holdout(dataset: types.Dataset, fraction: float, seed: int = 0) -> types.Dataset:
  """`dataset` with the holdout rows of its train split moved into split 'holdout'."""
  if not 0 < fraction <= 1:
    raise ValueError(f'holdout fraction must be in (0, 1], got {fraction}')
  train = dataset.splits['train']
  rows = holdout_rows(train.user_ids, fraction, seed)
  keep = np.setdiff1d(np.arange(len(train)), rows)
  splits = dict(dataset.splits, train=train.subset(keep), **{SPLIT: _renamed(train.subset(rows))})
  sids = dict(dataset.target_sids, train=dataset.target_sids['train'][keep],
              **{SPLIT: dataset.target_sids['train'][rows]})
  return dataclasses.replace(dataset, splits=splits, target_sids=sids)


def _renamed(split: types.Split) -> types.Split:
  return dataclasses.replace(split, name=SPLIT)
