"""The batched VED search tree (paper Sec. 4.2): mctx-style node arrays and the ops that grow it.

One tree per user with a leading batch axis ([B, N] node fields, [B, N, K] child tables),
sized statically by the forward budget; every op is a masked gather / scatter / top_k, so a
search built from them is one fixed-shape jitted program. decode.ved runs the search.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.struct
import jax
import jax.numpy as jnp

from vstar_jax.sid import trie as trie_lib

NO_NODE = trie_lib.NO_NODE


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


def restricted_entropy(log_probs: jnp.ndarray, valid: jnp.ndarray) -> jnp.ndarray:
  """H(s) of the policy renormalised over the trie-valid codes (Eq. 12): [..., K] -> [...]."""
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


def expand(tree: Tree, trie: trie_lib.Trie, expand_fn: ExpandFn, parents: jnp.ndarray,
            codes: jnp.ndarray, mask: jnp.ndarray, lam: float) -> Tree:
  """Expands the children `codes` of `parents` ([B, M]) where `mask`: one forward each."""
  rows, num_nodes = batch_rows(tree), tree.exists.shape[1]
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
  """The k best masked (node, code) pairs of scores [B, N, K]: (nodes, codes, real) each [B, k]."""
  batch, num_nodes, num_codes = scores.shape
  flat = jnp.where(mask, scores, -jnp.inf).reshape(batch, -1)
  kept = min(k, flat.shape[1])
  best, index = jax.lax.top_k(flat, kept)
  pad = ((0, 0), (0, k - kept))
  best, index = jnp.pad(best, pad, constant_values=-jnp.inf), jnp.pad(index, pad)
  return index // num_codes, index % num_codes, best > -jnp.inf


def empty(root: Expansion, trie: trie_lib.Trie, num_nodes: int) -> Tree:
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


