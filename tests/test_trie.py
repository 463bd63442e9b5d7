"""Trie tables agree with a brute-force set of prefixes, inside and outside jit."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax.sid import trie as trie_lib


def _random_codes(seed=0, num_items=50, num_levels=3, num_codes=5):
  rng = np.random.default_rng(seed)
  return rng.integers(num_codes, size=(num_items, num_levels)).astype(np.int32)


@pytest.mark.parametrize('num_levels', [3, 4])
def test_valid_codes_match_brute_force_prefix_sets(num_levels):
  codes = _random_codes(num_levels=num_levels)
  trie = trie_lib.build_trie(codes, 5)
  prefixes = {tuple(r[:l]) for r in codes.tolist() for l in range(num_levels + 1)}
  for node in range(trie.num_nodes):
    p = tuple(int(c) for c in trie.prefix[node, :trie.depth[node]])
    assert p in prefixes
    expected = [(p + (k,)) in prefixes for k in range(5)]
    np.testing.assert_array_equal(np.asarray(trie_lib.valid_codes(trie, jnp.int32(node))), expected)
  assert trie.num_nodes == len(prefixes)


def test_child_codes_list_each_nodes_valid_codes_ascending():
  codes = _random_codes(seed=3, num_items=12, num_codes=9)
  trie = trie_lib.build_trie(codes, 9)
  fanout = (trie.children >= 0).sum(axis=1)
  assert trie.child_codes.shape == (trie.num_nodes, fanout.max()) and fanout.max() < 9
  for node in range(trie.num_nodes):
    listed = trie.child_codes[node][trie.child_codes[node] >= 0].tolist()
    assert listed == np.flatnonzero(trie.children[node] >= 0).tolist()
    assert (trie.child_codes[node][len(listed):] == trie_lib.NO_NODE).all()


@pytest.mark.parametrize('jit', [False, True])
def test_lookup_and_validity_every_sid(jit):
  codes = _random_codes(seed=1)
  trie = trie_lib.build_trie(codes, 5)
  every = np.array(list(itertools.product(range(5), repeat=3)), np.int32)
  fn = jax.jit(trie_lib.is_valid_sid) if jit else trie_lib.is_valid_sid
  valid = fn(trie, every)
  truth = [tuple(r) in {tuple(c) for c in codes.tolist()} for r in every.tolist()]
  np.testing.assert_array_equal(np.asarray(valid), truth)
  nodes = np.asarray(trie_lib.lookup(trie, jnp.asarray(codes)))
  for item, node in enumerate(nodes):
    assert item in trie.leaf_items[node]
    np.testing.assert_array_equal(trie.prefix[node], codes[item])


def test_step_from_invalid_node_stays_invalid():
  trie = trie_lib.build_trie(np.array([[0, 1, 2]]), 4)
  assert int(trie_lib.step(trie, jnp.int32(-1), jnp.int32(0))) == -1
  assert int(trie_lib.step(trie, jnp.int32(0), jnp.int32(3))) == -1
  assert not np.asarray(trie_lib.valid_codes(trie, jnp.int32(-1))).any()
  assert int(trie_lib.step(trie, jnp.int32(0), jnp.int32(-1))) == -1


def test_collision_groups_and_leaf_items():
  codes = np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0], [1, 1, 1], [1, 1, 1], [2, 0, 0]])
  assert trie_lib.collision_groups(codes) == [[0, 2], [1, 3, 4]]
  trie = trie_lib.build_trie(codes, 3)
  assert trie.leaf_items.shape[1] == 3
  node = int(trie_lib.lookup(trie, jnp.array([1, 1, 1])))
  np.testing.assert_array_equal(trie.leaf_items[node], [1, 3, 4])


def test_trie_is_a_pytree_and_jits_once():
  trie = trie_lib.build_trie(_random_codes(), 5)
  traces = []

  @jax.jit
  def count_valid(t, node):
    traces.append(1)
    return trie_lib.valid_codes(t, node).sum()

  for node in range(4):
    count_valid(trie, jnp.int32(node))
  assert len(traces) == 1


def test_rejects_out_of_range_codes():
  with pytest.raises(ValueError, match=r'\[0, 4\)'):
    trie_lib.build_trie(np.array([[0, 4, 1]]), 4)
