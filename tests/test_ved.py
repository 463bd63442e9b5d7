"""VED: budget honoured and counted in the kernel, no depth-L forward, stage 1 = beam search,
candidates distinct and valid, and the whole search equal to a plain-Python reference of
docs/method.md ("VED") on toy policies, for every selection rule and for k = 1 and k = w."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vstar_jax.decode import beam
from vstar_jax.decode import selection
from vstar_jax.decode import ved as ved_lib
from vstar_jax.model import expansion
from vstar_jax.sid import trie as trie_lib

L = 3
BATCH = 3
_FAST_COMPILE = {'xla_backend_optimization_level': 0}   # test-only: halves compile time

SMALL = (60, 8)    # (items, K)
WIDE = (300, 16)


class Problem:
  """Distinct random SIDs, their trie and per-user toy policy / value / Q tables."""

  def __init__(self, num_items, num_codes, seed=0):
    rng = np.random.default_rng(seed)
    flat = rng.choice(num_codes ** L, size=num_items, replace=False)
    self.item_codes = np.stack([flat // num_codes ** (L - 1 - l) % num_codes for l in range(L)],
                               axis=1).astype(np.int32)
    self.num_codes = num_codes
    self.trie = trie_lib.build_trie(self.item_codes, num_codes)
    self.prefixes = {tuple(r[:l]) for r in self.item_codes.tolist() for l in range(L + 1)}
    size = (num_codes + 1) ** L
    self.logits = 2.0 * rng.normal(size=(BATCH, size, num_codes)).astype(np.float32)
    self.values = rng.uniform(size=(BATCH, size)).astype(np.float32)
    self.q = rng.uniform(size=(BATCH, size, num_codes)).astype(np.float32)

  def row(self, prefix):
    return sum((c + 1) * (self.num_codes + 1) ** l for l, c in enumerate(prefix))

  def valid_next(self, prefix):
    return [k for k in range(self.num_codes) if prefix + (k,) in self.prefixes]

  def policy(self, user, prefix):
    """float64 (log-probs [K], V, Q [K]) of one prefix tuple."""
    logits = self.logits[user, self.row(prefix)].astype(np.float64)
    log_probs = logits - np.log(np.sum(np.exp(logits)))
    return log_probs, float(self.values[user, self.row(prefix)]), self.q[user, self.row(prefix)]


@functools.lru_cache(maxsize=None)
def problem(num_items, num_codes):
  return Problem(num_items, num_codes)


def toy_fns(tables, batch):
  """(root_fn, expand_fn) over the toy tables; a node's embedding is its own code (-1: root),
  so a child's prefix is rebuilt from the path states, as the decoder rebuilds its KV cache."""
  logits, values, q = tables
  num_codes = logits.shape[-1]

  def outputs(prefix, code):
    row = jnp.sum((prefix + 1) * (num_codes + 1) ** jnp.arange(L), axis=-1)
    users = jnp.arange(batch)[:, None]
    return expansion.Expansion(log_probs=jax.nn.log_softmax(logits[users, row], axis=-1),
                               value=values[users, row], child_values=q[users, row],
                               embedding=code)

  def root_fn():
    return outputs(jnp.full((batch, 1, L), -1, jnp.int32), jnp.full((batch, 1), -1, jnp.int32))

  def expand_fn(path_codes, code, parent_depth):
    assert path_codes.shape == code.shape + (L,)
    levels = jnp.arange(L)
    shifted = jnp.concatenate([path_codes[..., 1:], jnp.full(code.shape + (1,), -1)], -1)
    prefix = jnp.where(levels < parent_depth[..., None], shifted, -1)
    return outputs(jnp.where(levels == parent_depth[..., None], code[..., None], prefix), code)

  return root_fn, expand_fn


@functools.lru_cache(maxsize=None)
def compiled(cfg):
  def run(tables, trie, keys):
    return ved_lib.ved(*toy_fns(tables, BATCH), trie, keys, cfg)
  return jax.jit(run, compiler_options=_FAST_COMPILE)


def keys_of(seed):
  return jax.random.split(jax.random.key(seed), BATCH)


@functools.lru_cache(maxsize=None)
def run(cfg, shape=SMALL, seed=0):
  p = problem(*shape)
  tables = (p.logits, p.values, p.q)
  return jax.device_get(compiled(cfg)(tables, p.trie, keys_of(seed)))


def reference(p: Problem, user: int, cfg: ved_lib.VedConfig, noise):
  """The search of docs/method.md in plain Python (float64): (expanded prefixes in order, candidates).

  noise[step]: [N, K] Gumbel draws of that stage-2 step (the kernel's, for the ucb tie-break).
  """
  nodes, order = {}, []

  def expand(prefix, parent):
    log_probs, value, q = p.policy(user, prefix)
    valid = p.valid_next(prefix)
    lq = log_probs[valid] - np.log(np.sum(np.exp(log_probs[valid])))
    entropy = float(-np.sum(np.exp(lq) * lq))
    cum = 0.0 if parent is None else nodes[parent]['cum'] + nodes[parent]['logp'][prefix[-1]]
    nodes[prefix] = dict(logp=log_probs, value=value, q=q, entropy=entropy, valid=valid,
                         priority=value + cfg.lam * entropy, visits=0, cum=cum, slot=len(order))
    order.append(prefix)
    node = prefix
    while True:
      nodes[node]['visits'] += 1
      if not node:
        break
      node = node[:-1]

  expand((), None)
  frontier = [()]
  for _ in range(1, L):
    pairs = sorted(((nodes[s]['cum'] + nodes[s]['logp'][c], -(i * p.num_codes + c), s, c)
                    for i, s in enumerate(frontier) for c in p.valid_next(s)), reverse=True)
    frontier = []
    for _, _, s, c in pairs[:cfg.width]:
      expand(s + (c,), s)
      frontier.append(s + (c,))
  total = ved_lib.budget(cfg, L)
  step = 0
  while len(order) < total:
    eligible = [(s, c) for s in order if len(s) < L - 1 for c in nodes[s]['valid']
                if s + (c,) not in nodes]
    if not eligible:
      break
    scores = rule_scores(p, nodes, eligible, cfg, noise[step])
    ranked = sorted(eligible, key=lambda sc: (-scores[sc], nodes[sc[0]]['slot'] * p.num_codes
                                              + sc[1]))
    ranked = [sc for sc in ranked if scores[sc] > -np.inf]
    for s, c in ranked[:min(cfg.expansions_per_step, total - len(order))]:
      expand(s + (c,), s)
    step += 1
  leaves = [(s, c) for s in order if len(s) == L - 1 for c in nodes[s]['valid']]

  def leaf_key(sc):
    s, c = sc
    logp, q = nodes[s]['cum'] + nodes[s]['logp'][c], float(nodes[s]['q'][c])
    primary = {'logprob': logp, 'value': q, 'mix': logp + cfg.mix * q}[cfg.leaf_ranking]
    secondary = q if cfg.leaf_ranking == 'logprob' else logp
    return (-primary, -secondary, nodes[s]['slot'] * p.num_codes + c)

  cands = [s + (c,) for s, c in sorted(leaves, key=leaf_key)[:cfg.group_size]]
  return order, cands


def rule_scores(p, nodes, eligible, cfg, noise):
  """Selection scores of the eligible pairs under cfg.selection (decode.selection, in float64)."""
  if cfg.selection == 'best_first':
    return {(s, c): nodes[s]['cum'] + nodes[s]['logp'][c] for s, c in eligible}
  if cfg.selection == 'lookahead':
    drops = [np.mean([max(nodes[t]['logp'][k] for k in nodes[t]['valid'])
                      for t in nodes if len(t) == d] or [0.0]) for d in range(L)]
    return {(s, c): nodes[s]['cum'] + nodes[s]['logp'][c]
            + cfg.lookahead_weight * sum(drops[len(s) + 1:]) for s, c in eligible}
  g = {(s, c): float(nodes[s]['q'][c]) + cfg.lam * nodes[s]['entropy'] for s, c in eligible}
  z = {}
  for depth in range(L):
    at = [sc for sc in eligible if len(sc[0]) == depth]
    if at:
      vals = np.array([g[sc] for sc in at])
      for sc in at:
        z[sc] = (g[sc] - vals.mean()) / (vals.std() + 1e-6)
  root_visits = nodes[()]['visits']
  out = {}
  for s, c in eligible:
    n = nodes[s]
    if cfg.selection == 'puct':
      prior = np.exp(n['logp'][c]) / np.sum(np.exp(n['logp'][n['valid']]))
      out[(s, c)] = z[(s, c)] + cfg.beta * prior * np.sqrt(n['visits'])
      continue
    same = [nodes[t]['priority'] for t in nodes if len(t) == len(s)]
    gated = n['priority'] < np.mean(same) - 1e-6 * (1 + abs(np.mean(same)))
    bonus = cfg.beta * np.sqrt(np.log(root_visits + 1.0) / (n['visits'] + 1.0))
    tie = 1e-3 * (n['logp'][c] + noise[n['slot'], n['valid'].index(c)])
    out[(s, c)] = z[(s, c)] + bonus + tie - (selection.GATE_PENALTY if gated else 0.0)
  return out


def kernel_noise(cfg, seed, num_nodes, num_slots, steps=64):
  """The Gumbel draws the ucb rule makes at each stage-2 step, per user: [B, steps, N, F]."""
  keys = keys_of(seed)
  return np.stack([np.stack([np.asarray(jax.random.gumbel(jax.random.fold_in(keys[b], t),
                                                          (num_nodes, num_slots)))
                             for t in range(steps)]) for b in range(BATCH)])


def kernel_order(out, user):
  tree = out.tree
  n = int(tree.num_forwards[user])
  return [tuple(int(c) for c in tree.prefix[user, i][:tree.depth[user, i]]) for i in range(n)]


CONFIGS = [
    ved_lib.VedConfig(width=4, multiplier=4, selection='ucb', per_step=0, group_size=12),
    ved_lib.VedConfig(width=4, multiplier=4, selection='ucb', per_step=1, group_size=12),
    ved_lib.VedConfig(width=3, multiplier=5, selection='puct', beta=2.0, leaf_ranking='value',
                      per_step=0),
    ved_lib.VedConfig(width=4, multiplier=3, selection='best_first', leaf_ranking='mix', mix=3.0,
                      per_step=0),
    ved_lib.VedConfig(width=2, multiplier=6, selection='ucb', lam=0.5, beta=0.3, per_step=3),
    ved_lib.VedConfig(width=3, multiplier=4, selection='lookahead', per_step=0, group_size=10),
    ved_lib.VedConfig(width=3, multiplier=4, selection='lookahead', per_step=1, group_size=10,
                      lookahead_weight=1.0),
]


@pytest.mark.parametrize('cfg', CONFIGS, ids=lambda c: f'{c.selection}-k{c.expansions_per_step}')
@pytest.mark.parametrize('shape', [SMALL, WIDE])
def test_equals_the_plain_python_reference(cfg, shape):
  p = problem(*shape)
  out = run(cfg, shape)
  noise = kernel_noise(cfg, 0, ved_lib.budget(cfg, L), p.trie.child_codes.shape[1])
  for user in range(BATCH):
    order, cands = reference(p, user, cfg, noise[user])
    assert kernel_order(out, user) == order, user
    got = [tuple(int(c) for c in row) for row, ok in zip(out.candidates[user], out.valid[user]) if ok]
    assert got == cands, user


@pytest.mark.parametrize('multiplier', [1, 2, 4, 8])
def test_forwards_are_expanded_nodes_within_budget_and_no_leaf_is_forwarded(multiplier):
  cfg = ved_lib.VedConfig(width=4, multiplier=multiplier, selection='ucb', per_step=0)
  out = run(cfg, WIDE)
  total = ved_lib.budget(cfg, L)
  assert total == int(multiplier * 9)
  np.testing.assert_array_equal(out.num_forwards, out.tree.exists.sum(axis=1))
  assert (out.num_forwards <= total).all()
  np.testing.assert_array_equal(out.num_forwards, total)     # the wide trie never runs dry
  assert out.tree.depth[out.tree.exists].max() == L - 1       # no depth-L node, no leaf forward


def test_small_trie_runs_dry_without_exceeding_it():
  cfg = ved_lib.VedConfig(width=8, multiplier=8, selection='ucb', per_step=0)
  p = problem(*SMALL)
  out = run(cfg, SMALL)
  shallow = len({tuple(r[:l]) for r in p.item_codes.tolist() for l in range(L)})
  np.testing.assert_array_equal(out.num_forwards, shallow)   # every prefix of depth < L, once


def test_m1_without_exploration_is_beam_search_of_width_w():
  cfg = ved_lib.VedConfig(width=4, multiplier=1, lam=0.0, beta=0.0, group_size=4)
  p = problem(*WIDE)
  out = run(cfg, WIDE)
  root_fn, expand_fn = toy_fns((p.logits, p.values, p.q), BATCH)

  def step_fn(prefix, parent, code, level):
    prefix = jnp.take_along_axis(prefix, parent[..., None], axis=1)
    if level:
      prefix = jnp.where(jnp.arange(L) == level - 1, code[..., None], prefix)
    row = jnp.sum((prefix + 1) * (p.num_codes + 1) ** jnp.arange(L), axis=-1)
    return jax.nn.log_softmax(jnp.asarray(p.logits)[jnp.arange(BATCH)[:, None], row], -1), prefix

  codes, scores = jax.jit(lambda: beam.beam_search(step_fn, jnp.full((BATCH, 1, L), -1), p.trie,
                                                   BATCH, 4))()
  np.testing.assert_array_equal(out.candidates, codes)
  np.testing.assert_allclose(out.scores, scores, rtol=1e-6)


def test_candidates_distinct_valid_and_invalid_tail_never_padded():
  cfg = ved_lib.VedConfig(width=2, multiplier=1, group_size=40)
  out = run(cfg, SMALL)
  p = problem(*SMALL)
  catalogue = {tuple(r) for r in p.item_codes.tolist()}
  for user in range(BATCH):
    got = [tuple(r) for r, ok in zip(out.candidates[user].tolist(), out.valid[user]) if ok]
    assert len(got) == len(set(got)) and set(got) <= catalogue
    assert not out.valid[user].all()              # 2 depth-2 nodes have fewer than 40 children
    assert (out.candidates[user][~out.valid[user]] == -1).all()
    assert np.isneginf(out.scores[user][~out.valid[user]]).all()


def test_large_budget_best_first_finds_the_exact_top_leaves():
  cfg = ved_lib.VedConfig(width=2, multiplier=40, selection='best_first', group_size=10)
  p = problem(*SMALL)
  out = run(cfg, SMALL)
  for user in range(BATCH):
    def log_prob(sid):
      return sum(p.policy(user, tuple(sid[:l]))[0][sid[l]] for l in range(L))
    best = sorted(p.item_codes.tolist(), key=log_prob, reverse=True)[:10]
    assert out.candidates[user].tolist() == best


def test_lookahead_scores_are_best_first_plus_the_estimate_still_to_come():
  out = run(CONFIGS[0], WIDE)
  tree = jax.tree.map(jnp.asarray, out.tree)
  eligible = tree.eligible()
  plain = np.asarray(selection.best_first(tree, eligible, None, CONFIGS[0]))
  zero = ved_lib.VedConfig(selection='lookahead', lookahead_weight=0.0)
  np.testing.assert_array_equal(np.asarray(selection.lookahead(tree, eligible, None, zero)), plain)
  one = ved_lib.VedConfig(selection='lookahead', lookahead_weight=1.0)
  scores = np.asarray(selection.lookahead(tree, eligible, None, one))
  for user in range(BATCH):
    nodes = np.flatnonzero(out.tree.exists[user])
    best = out.tree.child_log_prob[user].max(axis=-1)
    drops = [best[nodes][out.tree.depth[user][nodes] == d].mean() for d in range(L)]
    for node in nodes:
      depth = out.tree.depth[user, node]
      finite = np.isfinite(plain[user, node])
      np.testing.assert_allclose(scores[user, node][finite] - plain[user, node][finite],
                                 sum(drops[depth + 1:]), rtol=1e-5, atol=1e-5)


def test_fixed_key_is_deterministic_and_the_jit_cache_does_not_grow():
  cfg = CONFIGS[0]
  p = problem(*SMALL)
  fn = compiled(cfg)
  tables = (p.logits, p.values, p.q)
  first = jax.device_get(fn(tables, p.trie, keys_of(7)))
  size = fn._cache_size()
  again = jax.device_get(fn(tables, p.trie, keys_of(7)))
  other = jax.device_get(fn((p.logits * 1.1, p.values, p.q), p.trie, keys_of(8)))
  assert fn._cache_size() == size
  jax.tree.map(np.testing.assert_array_equal, first, again)
  assert not np.array_equal(first.tree.prefix, other.tree.prefix)


def test_gate_blocks_parents_below_their_depth_mean():
  cfg = ved_lib.VedConfig(width=4, multiplier=4, selection='ucb', per_step=0)
  out = run(cfg, WIDE)
  tree = jax.tree.map(jnp.asarray, out.tree)
  passed = np.asarray(selection.gate(tree))
  for user in range(BATCH):
    for depth in range(L):
      at = np.asarray(out.tree.exists[user] & (out.tree.depth[user] == depth))
      mean = out.tree.priority[user][at].mean()
      np.testing.assert_array_equal(passed[user][at], out.tree.priority[user][at] >= mean - 1e-5)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match='multiplier must be >= 1') as e:
    ved_lib.VedConfig(multiplier=0.5)
  assert e.value.field == 'multiplier'
  with pytest.raises(ValueError, match='selection must be one of'):
    ved_lib.VedConfig(selection='random')


def test_callbacks_must_return_an_expansion():
  """A model whose root_fn / expand_fn returns a bare tuple fails at the boundary, naming it."""
  p = problem(*SMALL)
  root_fn, expand_fn = toy_fns(tuple(jnp.asarray(t) for t in (p.logits, p.values, p.q)), BATCH)

  def untyped(fn):
    def call(*args):
      out = fn(*args)
      return out.log_probs, out.value, out.child_values, out.embedding
    return call

  cfg = ved_lib.VedConfig(width=2, multiplier=1, group_size=4)
  for fns, name in (((untyped(root_fn), expand_fn), 'root_fn'),
                    ((root_fn, untyped(expand_fn)), 'expand_fn')):
    with pytest.raises(TypeError, match=f'{name} must return .*Expansion, got tuple'):
      jax.eval_shape(lambda k, fns=fns: ved_lib.ved(*fns, p.trie, k, cfg), keys_of(0))
