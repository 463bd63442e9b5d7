"""The batched VED search tree (paper Sec. 4.2): mctx-style node arrays and the ops that grow it.

One tree per user with a leading batch axis ([B, N] node fields, [B, N, F] child tables),
sized statically by the forward budget; every op is a masked gather / scatter / top_k, so a
search built from them is one fixed-shape jitted program. decode.ved runs the search.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

from vstar_jax.model import expansion
from vstar_jax.sid import trie as trie_lib

NO_NODE = trie_lib.NO_NODE
Expansion = expansion.Expansion  # what root_fn / expand_fn return (model.expansion)

# root_fn() -> the Expansion of every user's root (M = 1);
# expand_fn(path states [B, M, L, ...], code [B, M], parent depth [B, M]) -> the Expansion of
# the children parent.code, where path states[:, :, j] is the embedding of the parent's
# ancestor at depth j (j <= parent depth; later entries are unused).
RootFn = Callable[[], Expansion]
ExpandFn = Callable[[Any, jnp.ndarray, jnp.ndarray], Expansion]


def checked(out: Any, fn_name: str) -> Expansion:
  """`out` if it is an Expansion, else a TypeError naming the callback that returned it."""
  if not isinstance(out, Expansion):
    raise TypeError(f'{fn_name} must return a vstar_jax.model.expansion.Expansion, got '
                    f'{type(out).__name__}')
  return out


@flax.struct.dataclass
class Tree:
  """Batched VED search trees; node 0 is the root, nodes are numbered in expansion order.

  A node's children live in F child slots (F = the trie's largest fan-out, Trie.child_codes):
  slot j holds the node's j-th valid next code, so every per-pair table is [B, N, F] rather
  than [B, N, K] (Industrial: F = 95, K = 256) and a search step touches F/K of the memory.

  Attributes:
    exists: [B, N] bool, slot holds an expanded node.
    parent: [B, N] int32, parent node or -1.
    depth: [B, N] int32, prefix length (0 .. L-1).
    code: [B, N] int32, code on the edge from the parent, -1 at the root.
    prefix: [B, N, L] int32, the node's SID prefix, -1 past its depth.
    path: [B, N, L] int32, the node's ancestor at each depth 0 .. depth (itself last), -1 past.
    trie_node: [B, N] int32, the trie node of the prefix.
    cum_log_prob: [B, N] float32, sum of the edge log-probs from the root.
    value: [B, N] float32, V(s).
    entropy: [B, N] float32, H(s) over the trie-valid next codes (Eq. 12).
    priority: [B, N] float32, G(s) = V(s) + lam * H(s) (Eq. 11).
    visits: [B, N] int32, N(s): expanded nodes in s's subtree, s included.
    child_code: [B, N, F] int32, the code of each child slot, -1 where none.
    child_log_prob: [B, N, F] float32, log pi(c | s); -inf on empty child slots and nodes.
    child_value: [B, N, F] float32, Q(s, c).
    child_index: [B, N, F] int32, the expanded child's node or -1.
    embedding: the model state of every node's own last token ([B, N, ...] leaves).
    num_forwards: [B] int32, forwards spent (= expanded nodes).
  """
  exists: jnp.ndarray
  parent: jnp.ndarray
  depth: jnp.ndarray
  code: jnp.ndarray
  prefix: jnp.ndarray
  path: jnp.ndarray
  trie_node: jnp.ndarray
  cum_log_prob: jnp.ndarray
  value: jnp.ndarray
  entropy: jnp.ndarray
  priority: jnp.ndarray
  visits: jnp.ndarray
  child_code: jnp.ndarray
  child_log_prob: jnp.ndarray
  child_value: jnp.ndarray
  child_index: jnp.ndarray
  embedding: Any
  num_forwards: jnp.ndarray

  @property
  def num_levels(self) -> int:
    return self.prefix.shape[-1]

  def eligible(self) -> jnp.ndarray:
    """[B, N, F] bool: pairs (s, c) a selection rule may expand (s at depth <= L-2, c valid, new)."""
    shallow = self.exists & (self.depth < self.num_levels - 1)
    return shallow[..., None] & (self.child_log_prob > -jnp.inf) & (self.child_index < 0)

  def leaves(self) -> jnp.ndarray:
    """[B, N, F] bool: the candidate leaves, every valid child of an expanded depth-(L-1) node."""
    deepest = self.exists & (self.depth == self.num_levels - 1)
    return deepest[..., None] & (self.child_log_prob > -jnp.inf)


def restricted_entropy(log_probs: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
  """H(s) of the policy renormalised over the trie-valid codes (Eq. 12): [..., F] -> [...]."""
  masked = jnp.where(valid, log_probs, -jnp.inf)
  log_q = masked - jax.nn.logsumexp(masked, axis=-1, keepdims=True)
  return -jnp.sum(jnp.where(valid, jnp.exp(log_q) * log_q, 0.0), axis=-1)


def batch_rows(tree: Tree) -> jnp.ndarray:
  """[B, 1] batch index for gathers / scatters on [B, M] node indices."""
  return jnp.arange(tree.exists.shape[0])[:, None]


def record(tree: Tree, trie: trie_lib.Trie, slots: jnp.ndarray, out: Expansion, lam: float,
            mask: jnp.ndarray) -> Tree:
  """Writes the expansions `out` of the nodes `slots` [B, M] (where `mask`) into the tree."""
  rows, num_nodes = batch_rows(tree), tree.exists.shape[1]
  slots = jnp.where(mask, slots, num_nodes)  # num_nodes: out of range, dropped by every scatter
  codes = trie.child_codes[jnp.maximum(tree.trie_node[rows, jnp.minimum(slots, num_nodes - 1)],
                                       0)]                                      # [B, M, F]
  valid, safe_codes = codes >= 0, jnp.maximum(codes, 0)
  log_probs = jnp.where(valid, jnp.take_along_axis(out.log_probs, safe_codes, -1), -jnp.inf)
  entropy = restricted_entropy(log_probs, valid)

  def put(field, new):
    return field.at[rows, slots].set(new, mode='drop')

  return tree.replace(
      value=put(tree.value, out.value), entropy=put(tree.entropy, entropy),
      priority=put(tree.priority, out.value + lam * entropy),
      child_code=put(tree.child_code, codes), child_log_prob=put(tree.child_log_prob, log_probs),
      child_value=put(tree.child_value,
                      jnp.take_along_axis(out.child_values, safe_codes, -1)),
      embedding=jax.tree.map(put, tree.embedding, out.embedding),
      num_forwards=tree.num_forwards + jnp.sum(mask, axis=1, dtype=jnp.int32))


def new_slots(tree: Tree, mask: jnp.ndarray) -> jnp.ndarray:
  """Node slots [B, M] that expanding the pairs `mask` [B, M] fills (N, out of range, where not)."""
  slots = tree.num_forwards[:, None] + jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1
  return jnp.where(mask, slots, tree.exists.shape[1])


def expand(tree: Tree, trie: trie_lib.Trie, expand_fn: ExpandFn, parents: jnp.ndarray,
            child_slots: jnp.ndarray, mask: jnp.ndarray, lam: float) -> Tree:
  """Expands child slot `child_slots` of `parents` ([B, M]) where `mask`: one forward each."""
  rows, num_nodes = batch_rows(tree), tree.exists.shape[1]
  slots = new_slots(tree, mask)
  parents = jnp.where(mask, parents, 0)
  codes = tree.child_code[rows, parents, child_slots]
  depth = tree.depth[rows, parents] + 1
  levels = jnp.arange(tree.num_levels)
  at_depth = levels == depth[..., None]                                        # [B, M, L]
  prefix = jnp.where(levels == depth[..., None] - 1, codes[..., None], tree.prefix[rows, parents])
  path = tree.path[rows, parents]                                              # [B, M, L]

  def put(field, values):
    return field.at[rows, slots].set(values, mode='drop')

  grown = tree.replace(
      exists=put(tree.exists, True), parent=put(tree.parent, parents), depth=put(tree.depth, depth),
      code=put(tree.code, codes), prefix=put(tree.prefix, prefix),
      path=put(tree.path, jnp.where(at_depth, slots[..., None], path)),
      trie_node=put(tree.trie_node, trie_lib.step(trie, tree.trie_node[rows, parents], codes)),
      cum_log_prob=put(tree.cum_log_prob, tree.cum_log_prob[rows, parents]
                       + tree.child_log_prob[rows, parents, child_slots]),
      child_index=tree.child_index.at[rows, jnp.where(mask, parents, num_nodes), child_slots].set(
          slots, mode='drop'))
  path_states = jax.tree.map(lambda x: x[rows[..., None], jnp.maximum(path, 0)], tree.embedding)
  out = checked(expand_fn(path_states, codes, depth - 1), 'expand_fn')
  return backup(record(grown, trie, slots, out, lam, mask), slots)


def backup(tree: Tree, slots: jnp.ndarray) -> Tree:
  """N += 1 on every node from the root down to each new node `slots` [B, M] (Eq. 13's counts)."""
  rows, num_nodes = batch_rows(tree), tree.exists.shape[1]
  visits, node = tree.visits, slots
  for _ in range(tree.num_levels):
    visits = visits.at[rows, node].add(1, mode='drop')
    parent = tree.parent[rows, jnp.minimum(node, num_nodes - 1)]
    node = jnp.where((node < num_nodes) & (parent != NO_NODE), parent, num_nodes)
  return tree.replace(visits=visits)


def top_pairs(scores: jnp.ndarray, mask: jnp.ndarray, k: int):
  """The k best masked (node, child slot) pairs of scores [B, N, F]: (nodes, child slots, real)
  each [B, k]."""
  batch, num_nodes, num_slots = scores.shape
  flat = jnp.where(mask, scores, -jnp.inf).reshape(batch, -1)
  kept = min(k, flat.shape[1])
  best, index = jax.lax.top_k(flat, kept)
  pad = ((0, 0), (0, k - kept))
  best, index = jnp.pad(best, pad, constant_values=-jnp.inf), jnp.pad(index, pad)
  return index // num_slots, index % num_slots, best > -jnp.inf


def empty(root: Expansion, trie: trie_lib.Trie, num_nodes: int) -> Tree:
  """A tree holding the expanded root (its forward counted)."""
  batch, num_levels = root.log_probs.shape[0], trie.num_levels
  bn, bnk = (batch, num_nodes), (batch, num_nodes, trie.child_codes.shape[1])
  embedding = jax.tree.map(
      lambda x: jnp.zeros((batch, num_nodes) + x.shape[2:], x.dtype), root.embedding)
  tree = Tree(
      exists=jnp.zeros(bn, bool).at[:, 0].set(True), parent=jnp.full(bn, NO_NODE, jnp.int32),
      depth=jnp.zeros(bn, jnp.int32), code=jnp.full(bn, NO_NODE, jnp.int32),
      prefix=jnp.full(bn + (num_levels,), -1, jnp.int32),
      path=jnp.full(bn + (num_levels,), -1, jnp.int32).at[:, 0, 0].set(0),
      trie_node=jnp.full(bn, NO_NODE, jnp.int32).at[:, 0].set(0),
      cum_log_prob=jnp.zeros(bn, jnp.float32), value=jnp.zeros(bn, jnp.float32),
      entropy=jnp.zeros(bn, jnp.float32), priority=jnp.zeros(bn, jnp.float32),
      visits=jnp.zeros(bn, jnp.int32).at[:, 0].set(1),
      child_code=jnp.full(bnk, NO_NODE, jnp.int32),
      child_log_prob=jnp.full(bnk, -jnp.inf, jnp.float32),
      child_value=jnp.zeros(bnk, jnp.float32), child_index=jnp.full(bnk, NO_NODE, jnp.int32),
      embedding=embedding, num_forwards=jnp.zeros((batch,), jnp.int32))
  return tree


