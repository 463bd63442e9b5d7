"""Value-Guided Efficient Decoding (VED, V-STAR §1.1) as a fixed-shape batched tree search.

One tree per user, stored mctx-style as arrays with a leading batch axis ([B, N]
node fields, [B, N, K] child tables) sized statically by the budget; every step
is a masked gather / scatter / argmax / top_k, so the whole search is one jitted
program whatever the data.

The policy is seen only through `expand_fn(prefix [B, W, L], depth [B, W]) ->
(log_probs [B, W, K], values [B, W])`: one call on W prefixes is W backbone
forwards of the decoder over the user's cached prompt.

Budget accounting (cost = forwards; prompt prefill excluded):
  * A forward of the prefix of a node s at depth d yields V(s) and, if d < L,
    the policy over the level-d codes, hence s's child log-probs and its
    entropy H(s) over the trie-valid codes (renormalized over them). A node is
    `evaluated` once it has had its forward; each forward evaluates exactly one
    node, so `num_forwards == evaluated.sum()`.
  * Stage 1 (beam of width w): the root's forward, then w forwards at each
    depth 1..L-1; the w depth-L leaves are chosen from the depth-(L-1)
    forwards and get none: 1 + (L-1)*w forwards, the base budget (fewer where
    the trie has fewer than w prefixes at a depth). A stage-1 leaf takes its
    parent's value as its estimate (V(h) is the value head's prediction of
    E_{c~pi}[V(h.c)], the best guess before seeing the leaf); such leaves keep
    `evaluated=False`, and ranking by value breaks their ties by log-prob.
  * Stages 2-4: each iteration creates one node and spends exactly one forward
    on it, leaves included (a leaf's forward gives its own V; the log-probs are
    ignored, H=0), so every node made after stage 1 carries its own V, H, G.
  * Budget = floor(m * base). With `unbudgeted_stage1` stage 1 instead expands
    the top-w children of every frontier node (the public reference code's
    w^d growth); its forwards are counted honestly and may exceed the budget,
    in which case no stage-2 iteration runs.

Selection (stages 2-4), per user:
  * A node is expandable if it is evaluated, has depth < L and has trie-valid
    codes without a child yet. Gate: it may be widened only if its priority
    G = V + lam*H is >= the mean G of the existing nodes at its depth (up to
    float rounding). The root is alone at depth 0, so it always passes.
  * Descent from the root by UCB, U(s) = G(s) + beta*sqrt(ln(N_root+1)/(N(s)+1)).
    At each node the arms are its children whose subtree still holds a
    widenable node, and a "new child" arm valued at the node's own G with count
    = its number of children; the descent stops where the new-child arm wins
    (ties go to it) and widens that node. A gated-out node is thus never the
    end of a descent: the search passes through it to the next best place. If
    no widenable node is left (trie exhausted, or on tiny tries every
    expandable node gated out while the root is full), the user stops and
    keeps the rest of its budget; nothing changes after such an iteration, so
    stopping loses nothing.
  * The new code is Gumbel-top-1 from the policy over the node's valid codes
    without a child; the iteration-i draw of user b uses fold_in(key_b, i), so
    a run with a larger budget replays a smaller one and then goes on.
  * Backup: N += 1 on the path from the root to the new node, so N(s) is the
    size of s's subtree (stage-1 nodes counted the same way).

Output: the depth-L leaves ranked by V (ties by cumulative log-prob) or by
cumulative log-prob (ties by V); the top G, with a validity mask where fewer
leaves exist. Tree leaves are distinct trie paths, so candidates are distinct
valid SIDs and no candidate is ever repeated to pad.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp

from vstar_jax.sid import trie as trie_lib

ExpandFn = Callable[[jnp.ndarray, jnp.ndarray], tuple[jnp.ndarray, jnp.ndarray]]

NO_NODE = trie_lib.NO_NODE
_GATE_RTOL = 1e-6
_LEAF_RANKINGS = ('value', 'logprob')


@dataclasses.dataclass(frozen=True)
class VedConfig:
  """Static VED settings (hashable: passed to jit as a static argument).

  Attributes:
    width: w, the stage-1 beam width.
    multiplier: m >= 1; budget = floor(m * (1 + (L-1)*w)) forwards per user.
    lam: lambda in the priority G = V + lambda*H.
    beta: UCB exploration weight.
    group_size: G, candidates returned per user.
    leaf_ranking: 'value' (V) or 'logprob' (policy cumulative log-prob).
    unbudgeted_stage1: expand the top-w children of every frontier node in
      stage 1 (the public reference code), counting its forwards honestly.
  """
  width: int = 8
  multiplier: float = 1.0
  lam: float = 0.1
  beta: float = 1.0
  group_size: int = 16
  leaf_ranking: str = 'value'
  unbudgeted_stage1: bool = False

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
    check('leaf_ranking', self.leaf_ranking in _LEAF_RANKINGS, f'must be one of {_LEAF_RANKINGS}')


def base_budget(num_levels: int, width: int) -> int:
  """Stage-1 cost: root forward plus w forwards at each depth 1..L-1."""
  return 1 + (num_levels - 1) * width


def budget(cfg: VedConfig, num_levels: int) -> int:
  """Forwards allowed per user: floor(m * base)."""
  return int(cfg.multiplier * base_budget(num_levels, cfg.width))


def num_tree_nodes(cfg: VedConfig, num_levels: int) -> int:
  """Static node capacity: budget + the forward-free depth-L leaves of stage 1."""
  free_leaves = cfg.width**num_levels if cfg.unbudgeted_stage1 else cfg.width
  return budget(cfg, num_levels) + free_leaves


@flax.struct.dataclass
class Tree:
  """Batched VED search trees; node 0 is the root, nodes are numbered in creation order.

  Attributes:
    exists: [B, N] bool, slot holds a node.
    evaluated: [B, N] bool, the node has had its own forward (V, H and child
      log-probs known); false for stage-1 leaves.
    parent: [B, N] int32, parent node or -1.
    depth: [B, N] int32, prefix length.
    code: [B, N] int32, code on the edge from the parent, -1 at the root.
    prefix: [B, N, L] int32, the node's SID prefix, -1 past its depth.
    trie_node: [B, N] int32, the trie node of the prefix.
    log_prob: [B, N] float32, policy log-prob of the edge from the parent.
    cum_log_prob: [B, N] float32, sum of edge log-probs from the root.
    value: [B, N] float32, V(s) from the value head (stage-1 leaves: parent's).
    entropy: [B, N] float32, H(s) of the policy over the trie-valid next codes.
    priority: [B, N] float32, G(s) = V(s) + lam*H(s).
    visits: [B, N] int32, N(s), number of nodes in s's subtree.
    children_log_probs: [B, N, K] float32, policy log-probs of the next code,
      -inf on trie-invalid codes and on unevaluated nodes.
    children_index: [B, N, K] int32, child node per code or -1.
    num_nodes: [B] int32, nodes in use (the next free slot).
    num_forwards: [B] int32, forwards spent.
  """
  exists: jnp.ndarray
  evaluated: jnp.ndarray
  parent: jnp.ndarray
  depth: jnp.ndarray
  code: jnp.ndarray
  prefix: jnp.ndarray
  trie_node: jnp.ndarray
  log_prob: jnp.ndarray
  cum_log_prob: jnp.ndarray
  value: jnp.ndarray
  entropy: jnp.ndarray
  priority: jnp.ndarray
  visits: jnp.ndarray
  children_log_probs: jnp.ndarray
  children_index: jnp.ndarray
  num_nodes: jnp.ndarray
  num_forwards: jnp.ndarray


@flax.struct.dataclass
class VedOutput:
  """VED result per user.

  Attributes:
    candidates: [B, G, L] int32, distinct valid SIDs, best first; -1 rows where
      invalid.
    valid: [B, G] bool, fewer than G leaves leave the tail invalid.
    scores: [B, G] float32, the ranking score (V or cumulative log-prob), -inf
      where invalid.
    tree: the search Tree.
    num_forwards: [B] int32, forwards spent (counted inside the kernel).
  """
  candidates: jnp.ndarray
  valid: jnp.ndarray
  scores: jnp.ndarray
  tree: Tree
  num_forwards: jnp.ndarray


def _empty_tree(batch_size: int, num_nodes: int, num_levels: int, num_codes: int) -> Tree:
  """A tree holding only the (not yet evaluated) root."""
  bn, bnk = (batch_size, num_nodes), (batch_size, num_nodes, num_codes)
  return Tree(
      exists=jnp.zeros(bn, bool).at[:, 0].set(True),
      evaluated=jnp.zeros(bn, bool),
      parent=jnp.full(bn, NO_NODE, jnp.int32),
      depth=jnp.zeros(bn, jnp.int32),
      code=jnp.full(bn, NO_NODE, jnp.int32),
      prefix=jnp.full(bn + (num_levels,), -1, jnp.int32),
      trie_node=jnp.full(bn, NO_NODE, jnp.int32).at[:, 0].set(0),
      log_prob=jnp.zeros(bn, jnp.float32),
      cum_log_prob=jnp.zeros(bn, jnp.float32),
      value=jnp.zeros(bn, jnp.float32),
      entropy=jnp.zeros(bn, jnp.float32),
      priority=jnp.zeros(bn, jnp.float32),
      visits=jnp.zeros(bn, jnp.int32).at[:, 0].set(1),
      children_log_probs=jnp.full(bnk, -jnp.inf, jnp.float32),
      children_index=jnp.full(bnk, NO_NODE, jnp.int32),
      num_nodes=jnp.ones((batch_size,), jnp.int32),
      num_forwards=jnp.zeros((batch_size,), jnp.int32))


def _rows(tree: Tree) -> jnp.ndarray:
  """[B, 1] batch index for gathers/scatters on [B, M] node indices."""
  return jnp.arange(tree.exists.shape[0])[:, None]


def _restricted_entropy(log_probs: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
  """H(s) of the policy renormalized over the trie-valid codes: [..., K] -> [...] (0 if none)."""
  masked = jnp.where(valid, log_probs, -jnp.inf)
  log_q = masked - jax.nn.logsumexp(masked, axis=-1, keepdims=True)
  return -jnp.sum(jnp.where(valid, jnp.exp(log_q) * log_q, 0.0), axis=-1)


def _create(tree: Tree, trie: trie_lib.Trie, parents: jnp.ndarray, codes: jnp.ndarray,
            mask: jnp.ndarray) -> tuple[Tree, jnp.ndarray]:
  """Adds the children `codes` of `parents` ([B, M]) where `mask`; returns their slots [B, M].

  Slots are the next free ones, in order; a masked entry gets slot N, "no node",
  which every later gather clamps and every scatter drops.
  """
  rows, num_nodes = _rows(tree), tree.exists.shape[1]
  slots = tree.num_nodes[:, None] + jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1
  slots = jnp.where(mask, slots, num_nodes)
  parents = jnp.where(mask, parents, 0)
  depth = tree.depth[rows, parents] + 1
  levels = jnp.arange(tree.prefix.shape[-1])
  prefix = jnp.where(levels == depth[..., None] - 1, codes[..., None], tree.prefix[rows, parents])
  edge = tree.children_log_probs[rows, parents, codes]

  def put(field, values):
    return field.at[rows, slots].set(values, mode='drop')

  return tree.replace(
      exists=put(tree.exists, True),
      parent=put(tree.parent, parents),
      depth=put(tree.depth, depth),
      code=put(tree.code, codes),
      prefix=put(tree.prefix, prefix),
      trie_node=put(tree.trie_node, trie_lib.step(trie, tree.trie_node[rows, parents], codes)),
      log_prob=put(tree.log_prob, edge),
      cum_log_prob=put(tree.cum_log_prob, tree.cum_log_prob[rows, parents] + edge),
      children_index=tree.children_index.at[rows, jnp.where(mask, parents, num_nodes), codes].set(
          slots, mode='drop'),
      num_nodes=tree.num_nodes + mask.sum(axis=1, dtype=jnp.int32)), slots


def _evaluate(tree: Tree, trie: trie_lib.Trie, expand_fn: ExpandFn, slots: jnp.ndarray,
              lam: float) -> Tree:
  """One expand_fn call on the nodes `slots` [B, M]: records V, H, G and child log-probs.

  Each real node is one forward; slots N (no node) are padding of the
  fixed-shape call, neither recorded nor counted.
  """
  rows, num_nodes = _rows(tree), tree.exists.shape[1]
  safe = jnp.minimum(slots, num_nodes - 1)
  log_probs, values = expand_fn(tree.prefix[rows, safe], tree.depth[rows, safe])
  valid = trie_lib.valid_codes(trie, tree.trie_node[rows, safe])
  entropy = _restricted_entropy(log_probs, valid)

  def put(field, new):
    return field.at[rows, slots].set(new, mode='drop')

  return tree.replace(
      evaluated=put(tree.evaluated, True),
      value=put(tree.value, values),
      entropy=put(tree.entropy, entropy),
      priority=put(tree.priority, values + lam * entropy),
      children_log_probs=put(tree.children_log_probs, jnp.where(valid, log_probs, -jnp.inf)),
      num_forwards=tree.num_forwards + jnp.sum(slots < num_nodes, axis=1, dtype=jnp.int32))


def _inherit_parent_value(tree: Tree, slots: jnp.ndarray) -> Tree:
  """Stage-1 leaves (no forward of their own): V = G = parent's V, H = 0."""
  rows, num_nodes = _rows(tree), tree.exists.shape[1]
  parent_value = tree.value[rows, tree.parent[rows, jnp.minimum(slots, num_nodes - 1)]]
  return tree.replace(value=tree.value.at[rows, slots].set(parent_value, mode='drop'),
                      priority=tree.priority.at[rows, slots].set(parent_value, mode='drop'))


def _backup(tree: Tree, slots: jnp.ndarray) -> Tree:
  """N += 1 on every node from the root down to each new node `slots` [B, M] (N = subtree size)."""
  rows, num_nodes = _rows(tree), tree.exists.shape[1]
  visits, node = tree.visits, slots
  for _ in range(tree.prefix.shape[-1] + 1):
    visits = visits.at[rows, node].add(1, mode='drop')
    parent = tree.parent[rows, jnp.minimum(node, num_nodes - 1)]
    node = jnp.where((node < num_nodes) & (parent != NO_NODE), parent, num_nodes)
  return tree.replace(visits=visits)


def _top_k_masked(scores: jnp.ndarray, mask: jnp.ndarray,
                  k: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Indices [..., k] of the k best masked scores (descending) and whether each is real."""
  size = scores.shape[-1]
  _, idx = jax.lax.top_k(jnp.where(mask, scores, -jnp.inf), min(k, size))
  ok = jnp.take_along_axis(mask, idx, axis=-1)
  pad = [(0, 0)] * (idx.ndim - 1) + [(0, k - idx.shape[-1])]
  return jnp.pad(idx, pad), jnp.pad(ok, pad)


def _stage1(tree: Tree, trie: trie_lib.Trie, expand_fn: ExpandFn, cfg: VedConfig) -> Tree:
  """Stage 1: constrained beam from the root to depth L (budgeted or per-frontier-node top-w)."""
  rows, num_nodes = _rows(tree), tree.exists.shape[1]
  num_levels, num_codes = trie.num_levels, trie.num_codes
  frontier = jnp.zeros((tree.exists.shape[0], 1), jnp.int32)
  tree = _evaluate(tree, trie, expand_fn, frontier, cfg.lam)
  for depth in range(1, num_levels + 1):
    safe = jnp.minimum(frontier, num_nodes - 1)
    scores = tree.cum_log_prob[rows, safe][..., None] + tree.children_log_probs[rows, safe]
    valid = ((frontier < num_nodes)[..., None]
             & trie_lib.valid_codes(trie, tree.trie_node[rows, safe]))
    if cfg.unbudgeted_stage1:
      codes, mask = _top_k_masked(scores, valid, cfg.width)
      parents = jnp.broadcast_to(frontier[..., None], codes.shape).reshape(codes.shape[0], -1)
      codes, mask = codes.reshape(parents.shape), mask.reshape(parents.shape)
    else:
      flat, mask = _top_k_masked(scores.reshape(scores.shape[0], -1),
                                 valid.reshape(valid.shape[0], -1), cfg.width)
      parents = jnp.take_along_axis(frontier, flat // num_codes, axis=1)
      codes = flat % num_codes
    tree, frontier = _create(tree, trie, parents, codes, mask)
    if depth < num_levels:
      tree = _evaluate(tree, trie, expand_fn, frontier, cfg.lam)
    else:
      tree = _inherit_parent_value(tree, frontier)
    tree = _backup(tree, frontier)
  return tree


def _select(tree: Tree, trie: trie_lib.Trie,
            beta: float) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Gated UCB descent on one user's tree: (node to widen, its free codes [K], whether any)."""
  num_levels = trie.num_levels
  has_child = tree.children_index >= 0
  free = trie_lib.valid_codes(trie, tree.trie_node) & ~has_child
  expandable = tree.evaluated & (tree.depth < num_levels) & jnp.any(free, axis=-1)
  at_depth = tree.exists[:, None] & (tree.depth[:, None] == jnp.arange(num_levels + 1))
  mean_g = (jnp.sum(jnp.where(at_depth, tree.priority[:, None], 0.0), axis=0)
            / jnp.maximum(jnp.sum(at_depth, axis=0), 1))[tree.depth]
  widenable = expandable & (tree.priority >= mean_g - _GATE_RTOL * (1.0 + jnp.abs(mean_g)))
  child = jnp.maximum(tree.children_index, 0)
  open_ = widenable
  for _ in range(num_levels):
    open_ = widenable | jnp.any(has_child & open_[child], axis=-1)
  scale = beta * jnp.sqrt(jnp.log(tree.visits[0] + 1.0))
  u_node = tree.priority + scale / jnp.sqrt(tree.visits + 1.0)
  u_new = tree.priority + scale / jnp.sqrt(jnp.sum(has_child, axis=-1) + 1.0)
  node, done = jnp.zeros((), jnp.int32), ~open_[0]
  for _ in range(num_levels):
    kids = child[node]
    u_kids = jnp.where(has_child[node] & open_[kids], u_node[kids], -jnp.inf)
    best = jnp.argmax(u_kids)
    stop = done | (widenable[node] & (u_new[node] >= u_kids[best]))
    node, done = jnp.where(stop, node, kids[best]), stop
  return node, free[node], open_[0]


def _search(tree: Tree, trie: trie_lib.Trie, expand_fn: ExpandFn, keys: jnp.ndarray,
            cfg: VedConfig) -> Tree:
  """Stages 2-4: select, gated expansion (one forward per new node), backup, while budget lasts."""
  total = budget(cfg, trie.num_levels)
  users = jnp.arange(tree.exists.shape[0])

  def sample_code(key, log_probs, free):
    """Gumbel-top-1 over the free codes: a draw from the policy restricted to them."""
    gumbel = jax.random.gumbel(key, log_probs.shape)
    return jnp.argmax(jnp.where(free, log_probs + gumbel, -jnp.inf)).astype(jnp.int32)

  def body(carry):
    step, _, tree = carry
    node, free, found = jax.vmap(_select, in_axes=(0, None, None))(tree, trie, cfg.beta)
    active = found & (tree.num_forwards < total)
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
    code = jax.vmap(sample_code)(step_keys, tree.children_log_probs[users, node], free)
    tree, slots = _create(tree, trie, node[:, None], code[:, None], active[:, None])
    tree = _evaluate(tree, trie, expand_fn, slots, cfg.lam)
    return step + 1, jnp.any(active), _backup(tree, slots)

  def cond(carry):
    step, any_active, _ = carry
    return any_active & (step < total)

  _, _, tree = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), jnp.array(True), tree))
  return tree


def _rank_leaves(tree: Tree, cfg: VedConfig) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Top-G depth-L leaves by the configured score (ties by the other): candidates, valid, scores."""
  batch_size, num_nodes, num_levels = tree.prefix.shape
  is_leaf = tree.exists & (tree.depth == num_levels)
  if cfg.leaf_ranking == 'value':
    primary, secondary = tree.value, tree.cum_log_prob
  else:
    primary, secondary = tree.cum_log_prob, tree.value
  index = jnp.broadcast_to(jnp.arange(num_nodes), (batch_size, num_nodes))
  *_, order = jax.lax.sort((~is_leaf, -primary, -secondary, index), dimension=1, num_keys=3)
  order = order[:, :cfg.group_size]
  pad = ((0, 0), (0, cfg.group_size - order.shape[1]))
  valid = jnp.pad(jnp.take_along_axis(is_leaf, order, axis=1), pad)
  order = jnp.pad(order, pad)
  prefixes = jnp.take_along_axis(tree.prefix, order[..., None], axis=1)
  candidates = jnp.where(valid[..., None], prefixes, -1)
  scores = jnp.where(valid, jnp.take_along_axis(primary, order, axis=1), -jnp.inf)
  return candidates, valid, scores


def ved(expand_fn: ExpandFn, trie: trie_lib.Trie, key: jnp.ndarray, cfg: VedConfig,
        batch_size: int) -> VedOutput:
  """Value-Guided Efficient Decoding for `batch_size` users under a static forward budget.

  Args:
    expand_fn: (prefix [B, W, L] int32, depth [B, W] int32) -> (log_probs
      [B, W, K] float32 over the level-`depth` code, values [B, W] float32);
      codes past `depth` are -1 padding. Called on depth-L prefixes too (for
      V only). Log-probs must be finite on trie-valid codes.
    trie: the SID trie (valid codes per prefix).
    key: PRNG key, consumed.
    cfg: static VedConfig.
    batch_size: B, users (each with an independent tree).

  Returns:
    VedOutput with the top-G leaves, their validity and scores, the tree and
    the forwards spent per user.
  """
  trie = jax.tree.map(jnp.asarray, trie)
  tree = _empty_tree(batch_size, num_tree_nodes(cfg, trie.num_levels), trie.num_levels,
                     trie.num_codes)
  tree = _stage1(tree, trie, expand_fn, cfg)
  tree = _search(tree, trie, expand_fn, jax.random.split(key, batch_size), cfg)
  candidates, valid, scores = _rank_leaves(tree, cfg)
  return VedOutput(candidates=candidates, valid=valid, scores=scores, tree=tree,
                   num_forwards=tree.num_forwards)
