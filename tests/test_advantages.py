"""Tests for vstar_jax.rl.advantages: hand-built trees and a brute-force reference."""

import jax
import numpy as np
import pytest

from vstar_jax.rl import advantages
from vstar_jax.rl import rewards

EPS = advantages.EPS
WRAPS = pytest.mark.parametrize('wrap', [lambda f: f, jax.jit], ids=['eager', 'jit'])


def _z(score, population):
  """Node advantage of each score in `population` (mean / population std of the set)."""
  population = np.asarray(population, np.float64)
  return (score - population.mean()) / (population.std() + EPS)


@WRAPS
def test_group_advantages_unbiased_std_over_valid(wrap):
  r = np.array([[1.0, 0.0, 0.0, 0.0, 7.0]], np.float32)
  valid = np.array([[True, True, True, True, False]])
  got = np.asarray(wrap(advantages.group_advantages)(r, valid))
  ref = r[0, :4]
  want = (ref - ref.mean()) / (ref.std(ddof=1) + EPS)
  np.testing.assert_allclose(got[0, :4], want, rtol=1e-5)
  assert got[0, 4] == 0.0
  np.testing.assert_allclose(got[0, 0], 0.75 / (0.5 + EPS), rtol=1e-5)


@WRAPS
def test_group_advantages_degenerate_groups_are_exactly_zero(wrap):
  r = np.array([[0.1, 0.1, 0.1, 3.0], [2.0, 5.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
  valid = np.array([[True, True, True, False], [True, False, False, False], [True] * 4])
  got = np.asarray(wrap(advantages.group_advantages)(r, valid))
  np.testing.assert_array_equal(got, np.zeros_like(got))


# A hand-built tree (L = 3). Root children {0, 1, 2}; parent (0) has 2 children, parent
# (1) has 3, parent (2) has 1; at depth 2 only parent (0, 0) has two children. The last
# candidate is padding with a huge reward that must change nothing.
TREE = np.array([[[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 1, 0], [1, 2, 0],
                  [2, 0, 0], [0, 1, 5]]], np.int32)
TREE_R = np.array([[1.0, 0.0, 0.0, 0.5, 0.0, 1.0, 0.0, 100.0]], np.float32)
TREE_VALID = np.array([[True] * 7 + [False]])


def _tree_expected():
  want = np.zeros((8, 3))
  # Depth 0, S(root) = {0, 1, 2} with node scores mean(1, 0, 0), mean(.5, 0, 1), mean(0).
  root = [1.0 / 3.0, 0.5, 0.0]
  want[0:3, 0] = _z(root[0], root)
  want[3:6, 0] = _z(root[1], root)
  want[6, 0] = _z(root[2], root)
  # Depth 1, S((0,)) = {0, 1}: scores mean(1, 0) = .5 and 0.
  s0 = [0.5, 0.0]
  want[0:2, 1] = _z(0.5, s0)
  want[2, 1] = _z(0.0, s0)
  # S((1,)) = {0, 1, 2}: scores .5, 0, 1 (three children, each one candidate).
  s1 = [0.5, 0.0, 1.0]
  want[3:6, 1] = [_z(s, s1) for s in s1]
  # S((2,)) has one child: 0. Depth 2, only S((0, 0)) = {0, 1} counts: scores 1 and 0.
  want[0:2, 2] = [_z(1.0, [1.0, 0.0]), _z(0.0, [1.0, 0.0])]
  return want


@WRAPS
def test_sibling_advantages_hand_built_tree(wrap):
  got = np.asarray(wrap(advantages.sibling_advantages)(TREE, TREE_R, TREE_VALID))
  np.testing.assert_allclose(got[0], _tree_expected(), rtol=1e-5, atol=1e-6)
  # Spot checks: a two-node set gives +-sigma/(sigma+eps); one-child sets give 0.
  np.testing.assert_allclose(got[0, 0, 2], 0.5 / (0.5 + EPS), rtol=1e-6)
  assert got[0, 6, 1] == 0.0 and got[0, 2, 2] == 0.0 and np.all(got[0, 7] == 0.0)


def test_sibling_advantages_equal_node_scores_are_exactly_zero():
  cand = np.array([[[0, 0, 0], [0, 1, 0], [1, 0, 0], [1, 0, 1]]], np.int32)
  r = np.array([[0.5, 0.5, 0.5, 0.5]], np.float32)
  got = jax.jit(advantages.sibling_advantages)(cand, r, np.ones((1, 4), bool))
  np.testing.assert_array_equal(got, np.zeros((1, 4, 3)))


def _sibling_reference(cand, r, valid, eps=EPS):
  """Brute force with Python dicts: node -> candidates, parent -> distinct child codes."""
  b_size, g_size, levels = cand.shape
  out = np.zeros((b_size, g_size, levels))
  for b in range(b_size):
    live = [g for g in range(g_size) if valid[b, g]]
    for level in range(levels):
      members = {}
      for g in live:
        node = tuple(int(c) for c in cand[b, g, :level + 1])
        members.setdefault(node, []).append(float(r[b, g]))
      score = {node: np.mean(rs) for node, rs in members.items()}
      children = {}
      for node in score:
        children.setdefault(node[:-1], []).append(score[node])
      for g in live:
        node = tuple(int(c) for c in cand[b, g, :level + 1])
        siblings = np.asarray(children[node[:-1]])
        if len(siblings) >= 2 and siblings.max() > siblings.min():
          out[b, g, level] = (score[node] - siblings.mean()) / (siblings.std() + eps)
  return out


@pytest.mark.parametrize('seed', range(4))
def test_sibling_advantages_match_brute_force(seed):
  rng = np.random.default_rng(seed)
  cand = rng.integers(0, 3, size=(6, 12, 3)).astype(np.int32)
  valid = rng.random((6, 12)) < 0.8
  if seed % 2:
    r = rng.choice([0.0, 0.5, 1.0], size=(6, 12)).astype(np.float32)
  else:
    r = rng.normal(size=(6, 12)).astype(np.float32)
  got = np.asarray(jax.jit(advantages.sibling_advantages)(cand, r, valid))
  want = _sibling_reference(cand, r, valid)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  assert np.count_nonzero(want) > 20  # the comparison exercises real sibling sets


def test_no_hit_group_gives_zero_advantages():
  target = np.array([[3, 3, 3]], np.int32)
  score = np.linspace(1.0, 0.0, 7, dtype=np.float32)[None]
  cand, valid = TREE[:, :7], TREE_VALID[:, :7]
  r = jax.jit(rewards.ranking_reward)(cand, valid, target, score)
  np.testing.assert_array_equal(r, np.zeros((1, 7)))
  np.testing.assert_array_equal(jax.jit(advantages.group_advantages)(r, valid), np.zeros((1, 7)))
  np.testing.assert_array_equal(jax.jit(advantages.sibling_advantages)(cand, r, valid),
                                np.zeros((1, 7, 3)))


def test_blend():
  g = np.array([[1.0, -2.0]], np.float32)
  s = np.array([[[0.0, 1.0, 2.0], [4.0, 0.0, -4.0]]], np.float32)
  got = advantages.blend(g, s, 0.25)
  want = 0.25 * g[..., None] + 0.75 * s
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(advantages.blend(g, s, 1.0), np.repeat(g[..., None], 3, -1))
