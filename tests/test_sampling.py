"""Constrained sampling (decode.sampling) on the decoder: every draw is a catalogue SID, its
score is its teacher-forced log-prob, draws follow the trie-renormalised policy, and a user's
draws depend on its key only."""

import functools

import jax
import numpy as np

import decoder_fixture
from vstar_jax.decode import search
from vstar_jax.model import decoder
from vstar_jax.sid import trie as trie_lib

CFG = decoder.DecoderConfig(num_levels=3, num_codes=6, max_history=4, num_layers=1, d_model=32,
                            num_heads=4, d_ff=64, dropout=0.0)
ITEMS = np.array([[0, 1, 2], [0, 1, 5], [0, 3, 0], [2, 0, 1], [2, 0, 4], [2, 4, 4], [5, 5, 5]],
                 np.int32)
PARAMS = decoder_fixture.random_params(CFG)
TRIE = trie_lib.build_trie(ITEMS, CFG.num_codes)


def histories(batch, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, CFG.num_codes, (batch, CFG.max_history, CFG.num_levels)).astype(np.int32)


@functools.lru_cache(maxsize=None)
def draws(batch, num_samples, seed=0):
  keys = search.user_keys(jax.random.key(seed), np.arange(batch))
  return jax.device_get(search.sample_search(PARAMS, CFG, TRIE, histories(batch), keys,
                                             num_samples))


def teacher_forced(history, items):
  """Per-level log-probs [I, L, K] of every item for one user's history [T, L]."""
  log_probs, _, _ = jax.jit(decoder.forward_train, static_argnums=1)(
      PARAMS, CFG, np.repeat(history[None], len(items), axis=0), items)
  return np.asarray(log_probs, np.float64)


def test_draws_are_catalogue_sids_scored_by_their_teacher_forced_log_prob():
  codes, score = draws(3, 64)
  catalogue = {tuple(r) for r in ITEMS.tolist()}
  assert {tuple(r) for r in codes.reshape(-1, 3).tolist()} <= catalogue
  for user in range(3):
    lp = teacher_forced(histories(3)[user], codes[user])
    picked = np.take_along_axis(lp, codes[user][..., None], axis=-1)[..., 0].sum(-1)
    np.testing.assert_allclose(score[user], picked, rtol=1e-4, atol=1e-4)


def test_draws_follow_the_trie_renormalised_policy():
  codes, _ = draws(1, 4000)
  lp = teacher_forced(histories(1)[0], ITEMS)
  expected = np.ones(len(ITEMS))
  for i, item in enumerate(ITEMS):
    for level in range(3):
      valid = sorted({r[level] for r in ITEMS.tolist() if r[:level] == item[:level].tolist()})
      p = np.exp(lp[i, level])
      expected[i] *= p[item[level]] / p[valid].sum()
  found = [np.mean((codes[0] == item).all(-1)) for item in ITEMS]
  np.testing.assert_allclose(found, expected, atol=0.03)
  assert abs(sum(expected) - 1) < 1e-9


def test_a_users_draws_depend_on_its_key_not_on_the_batch():
  codes, _ = draws(3, 64)
  keys = search.user_keys(jax.random.key(0), np.arange(3))[1:2]
  alone, _ = search.sample_search(PARAMS, CFG, TRIE, histories(3)[1:2], keys, 64)
  np.testing.assert_array_equal(np.asarray(alone)[0], codes[1])
  other, _ = draws(3, 64, seed=1)
  assert (other != codes).any()
