"""Tests for vstar_jax.sid.disambiguate: collision-free, deterministic SIDs."""

import numpy as np
import pytest

from vstar_jax.sid import disambiguate
from vstar_jax.sid import trie


def _colliding(num_items=200, num_levels=3, num_codes=8, seed=0):
  """Codes with many collisions (few codes per level) and random last-level distances."""
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, 3, (num_items, num_levels))
  codes[:, -1] = rng.integers(0, num_codes, num_items)
  return codes, rng.random((num_items, num_codes))


def _assert_distinct(codes):
  assert trie.collision_groups(codes) == []


@pytest.mark.parametrize('method', disambiguate.METHODS)
def test_collision_free_and_deterministic(method):
  codes, dists = _colliding(num_items=60, num_codes=32)
  assert trie.collision_groups(codes)
  out = disambiguate.disambiguate(codes, dists, method)
  _assert_distinct(out)
  assert out.dtype == np.int32
  np.testing.assert_array_equal(out, disambiguate.disambiguate(codes.copy(), dists.copy(), method))


def test_reassign_keeps_unique_sids_and_prefixes():
  codes, dists = _colliding(num_items=60, num_codes=32)
  out = disambiguate.reassign_last_level(codes, dists)
  assert out.shape == codes.shape
  np.testing.assert_array_equal(out[:, :-1], codes[:, :-1])
  in_collision = {i for g in trie.collision_groups(codes) for i in g}
  unique = [i for i in range(len(codes)) if i not in in_collision]
  np.testing.assert_array_equal(out[unique], codes[unique])


def test_reassign_keeps_the_nearest_item_and_moves_others_to_nearest_free_codes():
  codes, dists = _colliding(num_items=60, num_codes=32)
  out = disambiguate.reassign_last_level(codes, dists)
  for group in trie.collision_groups(codes):
    shared = codes[group[0], -1]
    stayed = [i for i in group if out[i, -1] == shared]
    assert stayed == [min(group, key=lambda i: (dists[i, shared], i))]
  moved = np.flatnonzero(out[:, -1] != codes[:, -1])
  assert len(moved)
  for i in moved:
    same_prefix = np.all(out[:, :-1] == out[i, :-1], axis=1)
    free = np.setdiff1d(np.arange(dists.shape[1]), out[same_prefix, -1])
    # Greedy matching: no code left free is nearer to a moved item than the one it got.
    assert np.all(dists[i, out[i, -1]] <= dists[i, free])


def test_reassign_brute_force_two_items():
  codes = np.array([[0, 1, 2], [0, 1, 2], [0, 1, 0]])
  dists = np.array([[0.5, 0.1, 0.2, 0.9], [0.4, 0.3, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0]])
  # Item 1 is nearer code 2 (0.1 < 0.2) and keeps it; item 0 takes its nearest free code, 1.
  np.testing.assert_array_equal(disambiguate.reassign_last_level(codes, dists),
                                [[0, 1, 1], [0, 1, 2], [0, 1, 0]])


def test_ties_are_broken_by_item_id():
  codes = np.zeros((3, 2), int)
  out = disambiguate.reassign_last_level(codes, np.zeros((3, 4)))
  np.testing.assert_array_equal(out, [[0, 0], [0, 1], [0, 2]])
  out = disambiguate.append_level(codes, np.zeros((3, 4)))
  np.testing.assert_array_equal(out[:, -1], [0, 1, 2])


def test_extra_level_numbers_groups_by_distance():
  codes = np.array([[1, 2], [3, 4], [1, 2], [1, 2]])
  dists = np.zeros((4, 5))
  dists[[0, 2, 3], 2] = [0.3, 0.1, 0.2]
  out = disambiguate.append_level(codes, dists)
  np.testing.assert_array_equal(out, [[1, 2, 2], [3, 4, 0], [1, 2, 0], [1, 2, 1]])


@pytest.mark.parametrize('method', disambiguate.METHODS)
def test_adversarial_all_items_identical(method):
  num_codes = 64
  codes = np.tile([[5, 7, 9]], (num_codes, 1))
  dists = np.tile(np.linspace(1.0, 2.0, num_codes), (num_codes, 1))
  out = disambiguate.disambiguate(codes, dists, method)
  _assert_distinct(out)
  np.testing.assert_array_equal(out[:, :2], codes[:, :2])
  np.testing.assert_array_equal(np.sort(out[:, -1]), np.arange(num_codes))


@pytest.mark.parametrize('method', disambiguate.METHODS)
def test_overflow_beyond_codebook_raises(method):
  codes = np.zeros((9, 3), int)
  with pytest.raises(ValueError, match='8'):
    disambiguate.disambiguate(codes, np.zeros((9, 8)), method)


def test_unknown_method_raises():
  with pytest.raises(ValueError, match='reassign'):
    disambiguate.disambiguate(np.zeros((2, 3), int), np.zeros((2, 4)), 'drop')


def test_single_level_codes():
  codes = np.array([[3], [3], [1]])
  dists = np.array([[0, 0, 0, 0.5], [0, 0.9, 0, 0.1], [0] * 4])
  out = disambiguate.reassign_last_level(codes, dists)
  np.testing.assert_array_equal(out, [[0], [3], [1]])  # item 1 is nearer code 3.
