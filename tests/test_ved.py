"""VED: budget honoured, candidates valid and distinct, stage 1 = beam search, and the
whole search equal to a plain-Python reference of design §1.1 on toy policies."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax.decode import ved as ved_lib
from vstar_jax.sid import trie as trie_lib

NUM_LEVELS = 3
BATCH = 3
# Test-only: XLA's backend optimizations double the compile time of these small programs.
_FAST_COMPILE = {'xla_backend_optimization_level': 0}

SMALL = (60, 8)  # (items, K): the root's 8 codes are all taken by the stage-1 beam of width 8
WIDE = (300, 16)
SMALL_CFG = ved_lib.VedConfig(width=8, multiplier=4)
WIDE_CFG = ved_lib.VedConfig(width=4, multiplier=4, lam=0.5, beta=0.3)
GREEDY_CFG = ved_lib.VedConfig(width=3, multiplier=2, lam=0.0, beta=0.0)


class _Problem:
  """Distinct random SIDs, their trie and per-user toy policy tables."""

  def __init__(self, num_items, num_codes, seed=0):
    rng = np.random.default_rng(seed)
    flat = rng.choice(num_codes**NUM_LEVELS, size=num_items, replace=False)
    self.item_codes = np.stack([flat // num_codes**(NUM_LEVELS - 1 - l) % num_codes
                                for l in range(NUM_LEVELS)], axis=1).astype(np.int32)
    self.num_codes = num_codes
    self.trie = trie_lib.build_trie(self.item_codes, num_codes)
    self.prefixes = {tuple(r[:l]) for r in self.item_codes.tolist() for l in range(NUM_LEVELS + 1)}
    self.tables = _toy_tables(num_codes, seed + 1)

  def valid_next(self, prefix):
    return [k for k in range(self.num_codes) if prefix + (k,) in self.prefixes]

  def policy(self, user, prefix):
    """The toy policy on one prefix tuple, in float64: (log-probs [K], value)."""
    logits, values = (np.asarray(t, np.float64) for t in self.tables)
    row = sum((c + 1) * (self.num_codes + 1)**l for l, c in enumerate(prefix))
    log_probs = logits[user, row] - np.log(np.sum(np.exp(logits[user, row])))
    return log_probs, values[user, row]

  def entropy(self, user, prefix):
    valid = self.valid_next(prefix)
    if not valid:
      return 0.0
    log_probs = self.policy(user, prefix)[0][valid]
    log_q = log_probs - np.log(np.sum(np.exp(log_probs)))
    return float(-np.sum(np.exp(log_q) * log_q))


def _toy_tables(num_codes, seed):
  """Per-user logits and values indexed by an injective code of the prefix."""
  rng = np.random.default_rng(seed)
  size = (num_codes + 1)**NUM_LEVELS
  logits = 2.0 * rng.normal(size=(BATCH, size, num_codes))
  return jnp.asarray(logits, jnp.float32), jnp.asarray(rng.uniform(size=(BATCH, size)), jnp.float32)


def _toy_expand(tables, prefix, depth):
  """expand_fn over toy tables: prefix [B, W, L], depth [B, W] -> ([B, W, K], [B, W])."""
  logits, values = tables
  num_codes = logits.shape[-1]
  codes = jnp.where(jnp.arange(NUM_LEVELS) < depth[..., None], prefix, -1)
  row = jnp.sum((codes + 1) * (num_codes + 1)**jnp.arange(NUM_LEVELS), axis=-1)
  users = jnp.arange(prefix.shape[0])[:, None]
  return jax.nn.log_softmax(logits[users, row], axis=-1), values[users, row]


@functools.lru_cache(maxsize=None)
def _problem(num_items, num_codes):
  return _Problem(num_items, num_codes)


@functools.lru_cache(maxsize=None)
def _compiled(cfg):
  def run(tables, trie, key):
    return ved_lib.ved(functools.partial(_toy_expand, tables), trie, key, cfg, BATCH)
  return jax.jit(run, compiler_options=_FAST_COMPILE)


@functools.lru_cache(maxsize=None)
def _run(cfg, shape=SMALL, key=0):
  problem = _problem(*shape)
  return jax.device_get(_compiled(cfg)(problem.tables, problem.trie, jax.random.PRNGKey(key)))


def _leaves(tree, user):
  """Set of depth-L SIDs in one user's tree."""
  is_leaf = tree.exists[user] & (tree.depth[user] == NUM_LEVELS)
  return {tuple(p) for p in tree.prefix[user][is_leaf].tolist()}


@pytest.mark.parametrize('multiplier', [1, 2, 4])
def test_forwards_never_exceed_budget_and_each_evaluates_one_node(multiplier):
  cfg = ved_lib.VedConfig(width=8, multiplier=multiplier)
  out = _run(cfg)
  total = ved_lib.budget(cfg, NUM_LEVELS)
  assert total == multiplier * 17 and ved_lib.base_budget(NUM_LEVELS, 8) == 17
  assert (out.num_forwards <= total).all()
  np.testing.assert_array_equal(out.num_forwards, out.tree.evaluated.sum(axis=1))
  if multiplier == 1:
    np.testing.assert_array_equal(out.num_forwards, 17)


def test_whole_budget_spent_when_trie_is_wide():
  out = _run(WIDE_CFG, WIDE)
  np.testing.assert_array_equal(out.num_forwards, ved_lib.budget(WIDE_CFG, NUM_LEVELS))
  assert (out.tree.evaluated.sum(axis=1) == out.num_forwards).all()


@pytest.mark.parametrize('cfg,shape', [
    (ved_lib.VedConfig(width=8, multiplier=1, group_size=16), SMALL),  # 8 leaves: half the group
    (SMALL_CFG, SMALL),
    (WIDE_CFG, WIDE),
])
def test_candidates_are_top_leaves_by_value_distinct_valid_and_never_padded(cfg, shape):
  out, problem = _run(cfg, shape), _problem(*shape)
  chex.assert_shape(out.candidates, (BATCH, cfg.group_size, NUM_LEVELS))
  tree = out.tree
  for user in range(BATCH):
    valid = out.valid[user]
    leaves = np.flatnonzero(tree.exists[user] & (tree.depth[user] == NUM_LEVELS))
    ranked = sorted(leaves, key=lambda n: (-tree.value[user, n], -tree.cum_log_prob[user, n]))
    top = ranked[:cfg.group_size]
    assert valid.sum() == len(top) and valid[:len(top)].all()
    np.testing.assert_array_equal(out.candidates[user, :len(top)], tree.prefix[user, top])
    np.testing.assert_array_equal(out.scores[user, :len(top)], tree.value[user, top])
    sids = [tuple(c) for c in out.candidates[user][valid].tolist()]
    assert len(set(sids)) == len(sids)
    assert set(sids) <= {tuple(r) for r in problem.item_codes.tolist()}
    assert (out.candidates[user][~valid] == -1).all()
    assert np.isneginf(out.scores[user][~valid]).all()
  is_item = np.asarray(trie_lib.is_valid_sid(problem.trie, jnp.asarray(out.candidates)))
  assert is_item[out.valid].all()
  assert out.valid[:, 8:].any() == (cfg.multiplier > 1)


def _beam_reference(problem, user, width):
  """Brute-force constrained beam search on the toy policy: [(sid, score)] best first."""
  beams = [((), 0.0)]
  for _ in range(NUM_LEVELS):
    candidates = []
    for prefix, score in beams:
      log_probs, _ = problem.policy(user, prefix)
      candidates += [(prefix + (k,), score + log_probs[k]) for k in problem.valid_next(prefix)]
    beams = sorted(candidates, key=lambda c: -c[1])[:width]
  return beams


def test_stage1_equals_constrained_beam_search():
  cfg = ved_lib.VedConfig(width=3, multiplier=1, lam=0.0, beta=0.0, group_size=3,
                          leaf_ranking='logprob')
  out, problem = _run(cfg), _problem(*SMALL)
  by_value = _run(ved_lib.VedConfig(width=8, multiplier=1))
  for user in range(BATCH):
    beams = _beam_reference(problem, user, 3)
    np.testing.assert_array_equal(out.candidates[user], [b[0] for b in beams])
    np.testing.assert_allclose(out.scores[user], [b[1] for b in beams], rtol=1e-5)
    assert _leaves(by_value.tree, user) == {b[0] for b in _beam_reference(problem, user, 8)}
  np.testing.assert_array_equal(out.num_forwards, 1 + (NUM_LEVELS - 1) * 3)


def test_fixed_key_gives_identical_output():
  problem = _problem(*WIDE)
  first, again, other = (_compiled(WIDE_CFG)(problem.tables, problem.trie, jax.random.PRNGKey(k))
                         for k in (3, 3, 4))
  chex.assert_trees_all_equal(first, again)
  assert not np.array_equal(first.tree.prefix, other.tree.prefix), 'the key drives sampling'


def test_jit_cache_does_not_grow():
  cfg = ved_lib.VedConfig(width=2, multiplier=2)
  problem = _problem(*SMALL)
  traces = []

  @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
  def run(tables, trie, key):
    traces.append(1)
    return ved_lib.ved(functools.partial(_toy_expand, tables), trie, key, cfg, BATCH)

  for seed in range(3):
    run(_toy_tables(8, seed), problem.trie, jax.random.PRNGKey(seed))
  assert len(traces) == 1
  assert run._cache_size() == 1  # pylint: disable=protected-access


def test_more_budget_keeps_every_leaf():
  """A larger budget replays the smaller run (same key) and goes on: leaves only grow."""
  runs = [_run(ved_lib.VedConfig(width=8, multiplier=m)) for m in (1, 2, 4)]
  for small, large in zip(runs, runs[1:]):
    assert (small.valid.sum(axis=1) <= large.valid.sum(axis=1)).all()
    for user in range(BATCH):
      assert _leaves(small.tree, user) <= _leaves(large.tree, user)
  assert all(len(_leaves(runs[-1].tree, u)) > len(_leaves(runs[0].tree, u)) for u in range(BATCH))


@pytest.mark.parametrize('cfg,shape', [(SMALL_CFG, SMALL), (WIDE_CFG, WIDE)])
def test_tree_fields_are_consistent(cfg, shape):
  out, problem = _run(cfg, shape), _problem(*shape)
  tree = out.tree
  for user in range(BATCH):
    n = int(tree.num_nodes[user])
    assert tree.exists[user, :n].all() and not tree.exists[user, n:].any()
    sizes = np.ones(n, np.int64)
    for node in range(n - 1, 0, -1):
      sizes[tree.parent[user, node]] += sizes[node]
    np.testing.assert_array_equal(tree.visits[user, :n], sizes)
    for node in range(n):
      depth = int(tree.depth[user, node])
      prefix = tuple(tree.prefix[user, node, :depth].tolist())
      assert prefix in problem.prefixes and (tree.prefix[user, node, depth:] == -1).all()
      np.testing.assert_array_equal(problem.trie.prefix[tree.trie_node[user, node]],
                                    tree.prefix[user, node])
      kids = tree.children_index[user, node]
      for code in np.flatnonzero(kids >= 0):
        assert tree.parent[user, kids[code]] == node and tree.code[user, kids[code]] == code
      log_probs, value = problem.policy(user, prefix)
      if node:
        parent = tree.parent[user, node]
        assert parent < node
        np.testing.assert_allclose(tree.cum_log_prob[user, node],
                                   tree.cum_log_prob[user, parent] + tree.log_prob[user, node],
                                   rtol=1e-5)
        np.testing.assert_allclose(tree.log_prob[user, node],
                                   problem.policy(user, prefix[:-1])[0][prefix[-1]], rtol=1e-5)
      if tree.evaluated[user, node]:
        entropy = problem.entropy(user, prefix)
        np.testing.assert_allclose(tree.value[user, node], value, rtol=1e-6)
        np.testing.assert_allclose(tree.entropy[user, node], entropy, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(tree.priority[user, node], value + cfg.lam * entropy, rtol=1e-4)
        valid = np.isin(np.arange(problem.num_codes), problem.valid_next(prefix))
        np.testing.assert_allclose(tree.children_log_probs[user, node][valid], log_probs[valid],
                                   rtol=1e-5)
        assert np.isneginf(tree.children_log_probs[user, node][~valid]).all()
      else:  # a stage-1 leaf: no forward of its own, the parent's value
        assert depth == NUM_LEVELS and node < 1 + NUM_LEVELS * cfg.width
        assert tree.value[user, node] == tree.value[user, tree.parent[user, node]]


class _RefNode:
  """A node of the plain-Python reference search."""

  def __init__(self, prefix, parent, log_probs=None):
    self.prefix, self.parent, self.log_probs = prefix, parent, log_probs
    self.cum = 0.0 if parent is None else parent.cum + parent.log_probs[prefix[-1]]
    self.children = {}
    self.value = self.priority = 0.0


def _reference_ved(problem, user, cfg, key):
  """Design §1.1 written sequentially with Python objects (float64), for one user."""
  total = ved_lib.budget(cfg, NUM_LEVELS)
  nodes, forwards = [], 0

  def new_node(parent, code):
    node = _RefNode(() if parent is None else parent.prefix + (code,), parent)
    if parent is not None:
      parent.children[code] = node
    nodes.append(node)
    return node

  def evaluate(node):
    nonlocal forwards
    forwards += 1
    node.log_probs, node.value = problem.policy(user, node.prefix)
    node.priority = node.value + cfg.lam * problem.entropy(user, node.prefix)

  def size(node):
    return 1 + sum(size(c) for c in node.children.values())

  root = new_node(None, None)
  evaluate(root)
  beam = [root]
  for depth in range(1, NUM_LEVELS + 1):
    scored = [(p.cum + p.log_probs[k], p, k) for p in beam for k in problem.valid_next(p.prefix)]
    beam = [new_node(p, k) for _, p, k in sorted(scored, key=lambda c: -c[0])[:cfg.width]]
    for node in beam:
      if depth < NUM_LEVELS:
        evaluate(node)
      else:
        node.value = node.priority = node.parent.value

  user_key = jax.random.split(key, BATCH)[user]
  for step in range(total):
    if forwards >= total:
      break
    by_depth = {}
    for node in nodes:
      by_depth.setdefault(len(node.prefix), []).append(node.priority)
    free = {id(n): [k for k in problem.valid_next(n.prefix) if k not in n.children]
            for n in nodes if n.log_probs is not None and len(n.prefix) < NUM_LEVELS}
    mean = {d: np.mean(g) for d, g in by_depth.items()}
    widenable = {id(n) for n in nodes if free.get(id(n)) and n.priority >= mean[len(n.prefix)]
                 - 1e-6 * (1 + abs(mean[len(n.prefix)]))}
    reachable = set()
    for node in reversed(nodes):  # children come after their parents
      if id(node) in widenable or any(id(c) in reachable for c in node.children.values()):
        reachable.add(id(node))
    if id(root) not in reachable:
      break
    bonus = cfg.beta * np.sqrt(np.log(size(root) + 1))
    node = root
    while True:
      ucb = {c: c.priority + bonus / np.sqrt(size(c) + 1)
             for c in node.children.values() if id(c) in reachable}
      best = max(ucb, key=ucb.get, default=None)
      u_new = node.priority + bonus / np.sqrt(len(node.children) + 1)
      if id(node) in widenable and (best is None or u_new >= ucb[best]):
        break
      node = best
    gumbel = np.asarray(jax.random.gumbel(jax.random.fold_in(user_key, step), (problem.num_codes,)))
    codes = free[id(node)]
    evaluate(new_node(node, codes[int(np.argmax([node.log_probs[k] + gumbel[k] for k in codes]))]))
  return nodes, forwards, size


@pytest.mark.parametrize('cfg,shape', [(SMALL_CFG, SMALL), (WIDE_CFG, WIDE), (GREEDY_CFG, WIDE)])
def test_search_matches_python_reference(cfg, shape):
  out, problem = _run(cfg, shape), _problem(*shape)
  tree = out.tree
  for user in range(BATCH):
    nodes, forwards, size = _reference_ved(problem, user, cfg, jax.random.PRNGKey(0))
    assert out.num_forwards[user] == forwards
    assert tree.num_nodes[user] == len(nodes)
    for slot, node in enumerate(nodes):
      assert tuple(tree.prefix[user, slot, :len(node.prefix)].tolist()) == node.prefix
      assert tree.visits[user, slot] == size(node)
      np.testing.assert_allclose(tree.priority[user, slot], node.priority, rtol=1e-4, atol=1e-6)


def test_unbudgeted_stage1_counts_every_frontier_forward():
  cfg = ved_lib.VedConfig(width=2, multiplier=1, unbudgeted_stage1=True, group_size=64)
  out, problem = _run(cfg), _problem(*SMALL)
  for user in range(BATCH):
    level, forwards = [()], 0
    for _ in range(NUM_LEVELS):
      forwards += len(level)
      children = []
      for prefix in level:
        log_probs, _ = problem.policy(user, prefix)
        ranked = sorted(problem.valid_next(prefix), key=lambda k: -log_probs[k])
        children += [prefix + (k,) for k in ranked[:cfg.width]]
      level = children
    assert out.num_forwards[user] == forwards
    assert forwards > ved_lib.budget(cfg, NUM_LEVELS)  # 1 + 2 + 4 > 1 + 2 * 2: reported, not hidden
    assert {tuple(c) for c in out.candidates[user][out.valid[user]].tolist()} == set(level)


def test_config_validation():
  with pytest.raises(ValueError, match='leaf_ranking'):
    ved_lib.VedConfig(leaf_ranking='reward')
  with pytest.raises(ValueError, match='multiplier'):
    ved_lib.VedConfig(multiplier=0.5)
