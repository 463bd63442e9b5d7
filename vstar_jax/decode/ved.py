"""Value-Guided Efficient Decoding (VED, paper Sec. 4.2, Eq. 10-14): a batched, fixed-shape tree search.

One tree per user, stored mctx-style as arrays with a leading batch axis ([B, N] node
fields, [B, N, K] child tables) sized statically by the forward budget; every step is a
masked gather / scatter / top_k, so the whole search is one jitted program whatever the
data, and all users of a shard are searched together (no vmap of one-user trees).

Accounting (Eq. 10; docs/method.md, "VED"): a node is an *expanded* prefix s at depth
d < L. Its one backbone forward yields the policy over all of s's trie-valid next codes
(so the cumulative log-prob of every child), V(s), the child values Q(s, .) of a Q head
and the entropy H(s) of the policy renormalised over the valid codes (Eq. 12). Depth-L
prefixes (whole SIDs) are never forwarded: every valid child of an expanded depth-(L-1)
node is a candidate leaf, scored from its parent's forward, exactly as beam search's last
level. So forwards = expanded nodes, counted inside the kernel, never above the budget
B = floor(m (1 + (L-1) w)).

  * Stage 1 (initialisation): constrained beam search of width w from the root to depth
    L-1: 1 + (L-1) w forwards (fewer where the trie has fewer prefixes).
  * Stages 2-4, while budget remains: the selection rule (decode.selection; the paper's
    gated UCB of Eq. 11, 13-14 by default) scores every eligible (node, code) pair
    [B, N, K] (node expanded, depth <= L-2, code valid, child not yet expanded); the top
    k pairs per user (static k, default w) are expanded in ONE batched [B, k] forward,
    the shape of a beam step; visit counts N are backed up along their paths. Iterations
    ~ (B - base) / k; the last one is masked to the budget left.
  * Output: the candidate leaves ranked by cumulative log-prob, by Q, or by a mix; the
    top G with a validity mask where fewer exist (leaves are distinct trie paths: never
    a duplicate to pad a group).

The model is seen only through `root_fn` and `expand_fn` returning the fields of an
`Expansion` (model.policy.ved_policy builds them for the decoder with per-node suffix KV
caches, so one expansion feeds one token).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import flax.struct
import jax
import jax.numpy as jnp

from vstar_jax.decode import selection
from vstar_jax.sid import trie as trie_lib

NO_NODE = trie_lib.NO_NODE
LEAF_RANKINGS = ('logprob', 'value', 'mix')


@dataclasses.dataclass(frozen=True)
class VedConfig:
  """Static VED settings (hashable: a jit static argument).

  Attributes:
    width: w, the stage-1 beam width.
    multiplier: m >= 1; budget = floor(m * (1 + (L-1)*w)) forwards per user (Eq. 10).
    lam: lambda in the priority G = V + lambda*H (Eq. 11).
    beta: exploration weight of the selection rule (Eq. 13).
    group_size: G, candidates returned per user.
    selection: name of the rule in decode.selection.RULES.
    leaf_ranking: 'logprob' | 'value' (Q of the leaf) | 'mix' (logprob + mix * Q).
    mix: weight of Q in the 'mix' leaf ranking.
    per_step: k, pairs expanded per stage-2 iteration (0: w).
  """
  width: int = 8
  multiplier: float = 1.0
  lam: float = 0.1
  beta: float = 1.0
  group_size: int = 16
  selection: str = 'ucb'
  leaf_ranking: str = 'logprob'
  mix: float = 1.0
  per_step: int = 0

  def __post_init__(self):
    def check(name, ok, message):
      if not ok:
        error = ValueError(f'{name} {message}, got {getattr(self, name)!r}')
        error.field = name
        raise error
    check('width', self.width >= 1, 'must be >= 1')
    check('multiplier', self.multiplier >= 1, 'must be >= 1: the budget m*(1+(L-1)*w) may not '
          'be below the stage-1 base budget')
    check('group_size', self.group_size >= 1, 'must be >= 1')
    check('selection', self.selection in selection.RULES, f'must be one of {tuple(selection.RULES)}')
    check('leaf_ranking', self.leaf_ranking in LEAF_RANKINGS, f'must be one of {LEAF_RANKINGS}')
    check('per_step', self.per_step >= 0, 'must be >= 0 (0: the width)')

  @property
  def expansions_per_step(self) -> int:
    return self.per_step or self.width


def base_budget(num_levels: int, width: int) -> int:
  """Stage-1 cost: the root's forward plus w forwards at each depth 1..L-1."""
  return 1 + (num_levels - 1) * width


def budget(cfg: VedConfig, num_levels: int) -> int:
  """Forwards allowed per user: floor(m * base) (Eq. 10)."""
  return int(cfg.multiplier * base_budget(num_levels, cfg.width))


@flax.struct.dataclass
class Expansion:
  """What one backbone forward of M prefixes per user yields.

  Attributes:
    log_probs: [B, M, K] float32, policy log-probs of the next code (finite on valid codes).
    value: [B, M] float32, V(prefix).
    child_values: [B, M, K] float32, Q(prefix, code): the value of each child.
    embedding: pytree of [B, M, ...] arrays, the model state a child's expansion starts from.
  """
  log_probs: jnp.ndarray
  value: jnp.ndarray
  child_values: jnp.ndarray
  embedding: Any


# root_fn() -> the Expansion fields (log_probs, value, child_values, embedding) with M = 1;
# expand_fn(parent embedding [B, M, ...], code [B, M], parent depth [B, M]) -> those of the
# children parent.code. Plain tuples, so a model needs nothing from this module.
RootFn = Callable[[], tuple]
ExpandFn = Callable[[Any, jnp.ndarray, jnp.ndarray], tuple]


@flax.struct.dataclass
class Tree:
  """Batched VED search trees; node 0 is the root, nodes are numbered in expansion order.

  Attributes:
    exists: [B, N] bool, slot holds an expanded node.
    parent: [B, N] int32, parent node or -1.
    depth: [B, N] int32, prefix length (0 .. L-1).
    code: [B, N] int32, code on the edge from the parent, -1 at the root.
    prefix: [B, N, L] int32, the node's SID prefix, -1 past its depth.
    trie_node: [B, N] int32, the trie node of the prefix.
    cum_log_prob: [B, N] float32, sum of the edge log-probs from the root.
    value: [B, N] float32, V(s).
    entropy: [B, N] float32, H(s) over the trie-valid next codes (Eq. 12).
    priority: [B, N] float32, G(s) = V(s) + lam * H(s) (Eq. 11).
    visits: [B, N] int32, N(s): expanded nodes in s's subtree, s included.
    child_log_prob: [B, N, K] float32, log pi(c | s); -inf on invalid codes and empty slots.
    child_value: [B, N, K] float32, Q(s, c).
    child_index: [B, N, K] int32, the expanded child's slot or -1.
    embedding: the model state of every node ([B, N, ...] leaves).
    num_forwards: [B] int32, forwards spent (= expanded nodes).
  """
  exists: jnp.ndarray
  parent: jnp.ndarray
  depth: jnp.ndarray
  code: jnp.ndarray
  prefix: jnp.ndarray
  trie_node: jnp.ndarray
  cum_log_prob: jnp.ndarray
  value: jnp.ndarray
  entropy: jnp.ndarray
  priority: jnp.ndarray
  visits: jnp.ndarray
  child_log_prob: jnp.ndarray
  child_value: jnp.ndarray
  child_index: jnp.ndarray
  embedding: Any
  num_forwards: jnp.ndarray

  @property
  def num_levels(self) -> int:
    return self.prefix.shape[-1]

  def eligible(self) -> jnp.ndarray:
    """[B, N, K] bool: pairs (s, c) a selection rule may expand (s at depth <= L-2, c valid, new)."""
    shallow = self.exists & (self.depth < self.num_levels - 1)
    return shallow[..., None] & (self.child_log_prob > -jnp.inf) & (self.child_index < 0)

  def leaves(self) -> jnp.ndarray:
    """[B, N, K] bool: the candidate leaves, every valid child of an expanded depth-(L-1) node."""
    deepest = self.exists & (self.depth == self.num_levels - 1)
    return deepest[..., None] & (self.child_log_prob > -jnp.inf)


@flax.struct.dataclass
class VedOutput:
  """VED result per user.

  Attributes:
    candidates: [B, G, L] int32, distinct valid SIDs, best first; -1 rows where invalid.
    valid: [B, G] bool (fewer than G leaves leave the tail invalid).
    scores: [B, G] float32, the leaf-ranking score, -inf where invalid.
    tree: the search Tree.
    num_forwards: [B] int32, forwards spent (counted inside the kernel).
  """
  candidates: jnp.ndarray
  valid: jnp.ndarray
  scores: jnp.ndarray
  tree: Tree
  num_forwards: jnp.ndarray


def restricted_entropy(log_probs: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
  """H(s) of the policy renormalised over the trie-valid codes (Eq. 12): [..., K] -> [...]."""
  masked = jnp.where(valid, log_probs, -jnp.inf)
  log_q = masked - jax.nn.logsumexp(masked, axis=-1, keepdims=True)
  return -jnp.sum(jnp.where(valid, jnp.exp(log_q) * log_q, 0.0), axis=-1)


def _rows(tree: Tree) -> jnp.ndarray:
  """[B, 1] batch index for gathers / scatters on [B, M] node indices."""
  return jnp.arange(tree.exists.shape[0])[:, None]


def _record(tree: Tree, trie: trie_lib.Trie, slots: jnp.ndarray, out: Expansion, lam: float,
            mask: jnp.ndarray) -> Tree:
  """Writes the expansions `out` of the nodes `slots` [B, M] (where `mask`) into the tree."""
  rows, num_nodes = _rows(tree), tree.exists.shape[1]
  slots = jnp.where(mask, slots, num_nodes)  # num_nodes: out of range, dropped by every scatter
  valid = trie_lib.valid_codes(trie, tree.trie_node[rows, jnp.minimum(slots, num_nodes - 1)])
  entropy = restricted_entropy(out.log_probs, valid)

  def put(field, new):
    return field.at[rows, slots].set(new, mode='drop')

  return tree.replace(
      value=put(tree.value, out.value), entropy=put(tree.entropy, entropy),
      priority=put(tree.priority, out.value + lam * entropy),
      child_log_prob=put(tree.child_log_prob, jnp.where(valid, out.log_probs, -jnp.inf)),
      child_value=put(tree.child_value, out.child_values),
      embedding=jax.tree.map(put, tree.embedding, out.embedding),
      num_forwards=tree.num_forwards + jnp.sum(mask, axis=1, dtype=jnp.int32))


def _expand(tree: Tree, trie: trie_lib.Trie, expand_fn: ExpandFn, parents: jnp.ndarray,
            codes: jnp.ndarray, mask: jnp.ndarray, lam: float) -> Tree:
  """Expands the children `codes` of `parents` ([B, M]) where `mask`: one forward each."""
  rows, num_nodes = _rows(tree), tree.exists.shape[1]
  slots = tree.num_forwards[:, None] + jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1
  slots = jnp.where(mask, slots, num_nodes)
  parents = jnp.where(mask, parents, 0)
  depth = tree.depth[rows, parents] + 1
  levels = jnp.arange(tree.num_levels)
  prefix = jnp.where(levels == depth[..., None] - 1, codes[..., None], tree.prefix[rows, parents])

  def put(field, values):
    return field.at[rows, slots].set(values, mode='drop')

  grown = tree.replace(
      exists=put(tree.exists, True), parent=put(tree.parent, parents), depth=put(tree.depth, depth),
      code=put(tree.code, codes), prefix=put(tree.prefix, prefix),
      trie_node=put(tree.trie_node, trie_lib.step(trie, tree.trie_node[rows, parents], codes)),
      cum_log_prob=put(tree.cum_log_prob, tree.cum_log_prob[rows, parents]
                       + tree.child_log_prob[rows, parents, codes]),
      child_index=tree.child_index.at[rows, jnp.where(mask, parents, num_nodes), codes].set(
          slots, mode='drop'))
  parent_embedding = jax.tree.map(lambda x: x[rows, parents], tree.embedding)
  out = Expansion(*expand_fn(parent_embedding, codes, depth - 1))
  return _backup(_record(grown, trie, slots, out, lam, mask), slots)


def _backup(tree: Tree, slots: jnp.ndarray) -> Tree:
  """N += 1 on every node from the root down to each new node `slots` [B, M] (Eq. 13's counts)."""
  rows, num_nodes = _rows(tree), tree.exists.shape[1]
  visits, node = tree.visits, slots
  for _ in range(tree.num_levels):
    visits = visits.at[rows, node].add(1, mode='drop')
    parent = tree.parent[rows, jnp.minimum(node, num_nodes - 1)]
    node = jnp.where((node < num_nodes) & (parent != NO_NODE), parent, num_nodes)
  return tree.replace(visits=visits)


def _top_pairs(scores: jnp.ndarray, mask: jnp.ndarray, k: int):
  """The k best masked (node, code) pairs of scores [B, N, K]: (nodes, codes, real) each [B, k]."""
  batch, num_nodes, num_codes = scores.shape
  flat = jnp.where(mask, scores, -jnp.inf).reshape(batch, -1)
  kept = min(k, flat.shape[1])
  best, index = jax.lax.top_k(flat, kept)
  pad = ((0, 0), (0, k - kept))
  best, index = jnp.pad(best, pad, constant_values=-jnp.inf), jnp.pad(index, pad)
  return index // num_codes, index % num_codes, best > -jnp.inf


def _empty_tree(root: Expansion, trie: trie_lib.Trie, num_nodes: int) -> Tree:
  """A tree holding the expanded root (its forward counted)."""
  batch, num_codes, num_levels = root.log_probs.shape[0], trie.num_codes, trie.num_levels
  bn, bnk = (batch, num_nodes), (batch, num_nodes, num_codes)
  embedding = jax.tree.map(
      lambda x: jnp.zeros((batch, num_nodes) + x.shape[2:], x.dtype), root.embedding)
  tree = Tree(
      exists=jnp.zeros(bn, bool).at[:, 0].set(True), parent=jnp.full(bn, NO_NODE, jnp.int32),
      depth=jnp.zeros(bn, jnp.int32), code=jnp.full(bn, NO_NODE, jnp.int32),
      prefix=jnp.full(bn + (num_levels,), -1, jnp.int32),
      trie_node=jnp.full(bn, NO_NODE, jnp.int32).at[:, 0].set(0),
      cum_log_prob=jnp.zeros(bn, jnp.float32), value=jnp.zeros(bn, jnp.float32),
      entropy=jnp.zeros(bn, jnp.float32), priority=jnp.zeros(bn, jnp.float32),
      visits=jnp.zeros(bn, jnp.int32).at[:, 0].set(1),
      child_log_prob=jnp.full(bnk, -jnp.inf, jnp.float32),
      child_value=jnp.zeros(bnk, jnp.float32), child_index=jnp.full(bnk, NO_NODE, jnp.int32),
      embedding=embedding, num_forwards=jnp.zeros((batch,), jnp.int32))
  return tree


def _stage1(tree: Tree, trie: trie_lib.Trie, expand_fn: ExpandFn, cfg: VedConfig) -> Tree:
  """Stage 1: constrained beam of width w from the root to depth L-1 (one forward per node)."""
  rows = _rows(tree)
  frontier = jnp.zeros((tree.exists.shape[0], 1), jnp.int32)
  alive = jnp.ones(frontier.shape, bool)
  for _ in range(1, tree.num_levels):
    scores = tree.cum_log_prob[rows, frontier][..., None] + tree.child_log_prob[rows, frontier]
    index, codes, real = _top_pairs(scores, alive[..., None] & (scores > -jnp.inf), cfg.width)
    parents = jnp.take_along_axis(frontier, index, axis=1)
    slots = tree.num_forwards[:, None] + jnp.cumsum(real, axis=1, dtype=jnp.int32) - 1
    tree = _expand(tree, trie, expand_fn, parents, codes, real, cfg.lam)
    frontier, alive = jnp.where(real, slots, 0), real
  return tree


def _search(tree: Tree, trie: trie_lib.Trie, expand_fn: ExpandFn, keys: jnp.ndarray,
            cfg: VedConfig, select_fn) -> Tree:
  """Stages 2-4: score eligible pairs, expand the top k per user in one forward, back up."""
  total, k = budget(cfg, trie.num_levels), cfg.expansions_per_step
  max_steps = -(-(total - base_budget(trie.num_levels, cfg.width)) // k)

  def body(carry):
    step, _, tree = carry
    eligible = tree.eligible()
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
    scores = select_fn(tree, eligible, step_keys, cfg)
    parents, codes, real = _top_pairs(scores, eligible, k)
    left = total - tree.num_forwards
    real = real & (jnp.arange(k)[None, :] < left[:, None])
    tree = _expand(tree, trie, expand_fn, parents, codes, real, cfg.lam)
    return step + 1, jnp.any(real), tree

  def cond(carry):
    step, any_real, _ = carry
    return any_real & (step < max_steps)

  init = (jnp.zeros((), jnp.int32), jnp.array(max_steps > 0), tree)
  return jax.lax.while_loop(cond, body, init)[2]


def leaf_scores(tree: Tree, cfg: VedConfig) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(ranking score, tie-break score) [B, N, K] of every candidate leaf, -inf elsewhere."""
  log_prob = tree.cum_log_prob[..., None] + tree.child_log_prob
  if cfg.leaf_ranking == 'logprob':
    primary, secondary = log_prob, tree.child_value
  elif cfg.leaf_ranking == 'value':
    primary, secondary = tree.child_value, log_prob
  else:
    primary, secondary = log_prob + cfg.mix * tree.child_value, log_prob
  leaves = tree.leaves()
  return jnp.where(leaves, primary, -jnp.inf), jnp.where(leaves, secondary, -jnp.inf)


def _rank_leaves(tree: Tree, cfg: VedConfig):
  """Top-G candidate leaves by the leaf ranking (ties by the other score, then by index).

  Returns candidates [B, G, L] (-1 rows where invalid), valid [B, G], scores [B, G].
  """
  primary, secondary = (x.reshape(x.shape[0], -1) for x in leaf_scores(tree, cfg))
  batch, size = primary.shape
  index = jnp.broadcast_to(jnp.arange(size), (batch, size))
  *_, order = jax.lax.sort((-primary, -secondary, index), dimension=1, num_keys=3)
  order = order[:, :cfg.group_size]
  pad = ((0, 0), (0, cfg.group_size - order.shape[1]))
  best = jnp.pad(jnp.take_along_axis(primary, order, axis=1), pad, constant_values=-jnp.inf)
  order = jnp.pad(order, pad)
  valid = best > -jnp.inf
  num_codes, last = tree.child_log_prob.shape[-1], tree.num_levels - 1
  prefix = tree.prefix[_rows(tree), order // num_codes]
  cand = jnp.where(jnp.arange(tree.num_levels) == last, (order % num_codes)[..., None], prefix)
  return jnp.where(valid[..., None], cand, -1), valid, best


def ved(root_fn: RootFn, expand_fn: ExpandFn, trie: trie_lib.Trie, keys: jnp.ndarray,
        cfg: VedConfig, select_fn: Optional[Callable] = None) -> VedOutput:
  """Value-Guided Efficient Decoding for B users under a static forward budget.

  Args:
    root_fn: () -> Expansion of every user's root (the empty prefix), M = 1.
    expand_fn: (parent embedding [B, M, ...], code [B, M], parent depth [B, M]) ->
      Expansion of the M children parent.code per user.
    trie: the SID trie (valid codes per prefix).
    keys: [B] PRNG keys, one per user (the selection rule's randomness).
    cfg: static VedConfig.
    select_fn: a selection rule (decode.selection); default RULES[cfg.selection].

  Returns:
    VedOutput with the top-G leaves, their validity and scores, the tree and the
    forwards spent per user.
  """
  select_fn = select_fn or selection.RULES[cfg.selection]
  trie = jax.tree.map(jnp.asarray, trie)
  root = Expansion(*root_fn())
  num_nodes = budget(cfg, trie.num_levels)
  tree = _empty_tree(root, trie, num_nodes)
  tree = _record(tree, trie, jnp.zeros((root.value.shape[0], 1), jnp.int32), root, cfg.lam,
                 jnp.ones((root.value.shape[0], 1), bool))
  tree = _stage1(tree, trie, expand_fn, cfg)
  tree = _search(tree, trie, expand_fn, keys, cfg, select_fn)
  candidates, valid, scores = _rank_leaves(tree, cfg)
  return VedOutput(candidates=candidates, valid=valid, scores=scores, tree=tree,
                   num_forwards=tree.num_forwards)
