"""Prefix trie over semantic IDs as dense padded tables, usable inside jit.

Nodes are numbered breadth-first: node 0 is the root (empty prefix), then every
distinct depth-1 prefix, then depth-2 prefixes, ..., then the depth-L leaves.
`children[n, k]` is the node reached from node `n` by code `k`, or -1, so the
valid-code mask at any prefix is one gather (`children[node] >= 0`) and
stepping down the trie is another. This is the fixed-shape form constrained beam
search and VED need: no Python dicts inside jit.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.struct
import jax.numpy as jnp
import numpy as np

NO_NODE = -1


@flax.struct.dataclass
class Trie:
  """Dense trie tables (a pytree; the two ints are static).

  Attributes:
    children: [N, K] int32, child node id per code or -1.
    depth: [N] int32, prefix length of each node (root 0, leaves L).
    prefix: [N, L] int32, the codes of each node's prefix, -1 past its depth.
    leaf_items: [N, C] int32, item ids whose SID ends at this node, -1 padded
      (C = largest collision group; only depth-L nodes hold items).
    child_codes: [N, F] int32, each node's valid next codes ascending, -1 padded (F = the
      largest fan-out, often far below K: VED's child tables are [.., F], not [.., K]).
    num_levels: L, codes per SID.
    num_codes: K, codebook size per level.
  """
  children: jnp.ndarray
  depth: jnp.ndarray
  prefix: jnp.ndarray
  leaf_items: jnp.ndarray
  child_codes: jnp.ndarray
  num_levels: int = flax.struct.field(pytree_node=False)
  num_codes: int = flax.struct.field(pytree_node=False)

  @property
  def num_nodes(self) -> int:
    return int(self.children.shape[0])


def build_trie(item_codes: np.ndarray, num_codes: int) -> Trie:
  """Builds the trie of every item's SID.

  Args:
    item_codes: [I, L] int, item id -> its L codes (each in [0, num_codes)).
    num_codes: K, codebook size per level.

  Returns:
    The dense Trie (numpy-backed; becomes device arrays when passed to jit).
  """
  item_codes = np.asarray(item_codes)
  if item_codes.ndim != 2 or item_codes.shape[0] == 0:
    raise ValueError(f'item_codes must be a non-empty [I, L] array, got shape {item_codes.shape}')
  if item_codes.min() < 0 or item_codes.max() >= num_codes:
    raise ValueError(f'item codes must lie in [0, {num_codes}); got range '
                     f'[{item_codes.min()}, {item_codes.max()}]')
  num_items, num_levels = item_codes.shape
  node_of_prefix: dict[tuple[int, ...], int] = {(): 0}
  prefixes: list[tuple[int, ...]] = [()]
  for level in range(1, num_levels + 1):
    for p in sorted({tuple(int(c) for c in row[:level]) for row in item_codes}):
      node_of_prefix[p] = len(prefixes)
      prefixes.append(p)
  num_nodes = len(prefixes)
  children = np.full((num_nodes, num_codes), NO_NODE, np.int32)
  depth = np.zeros((num_nodes,), np.int32)
  prefix = np.full((num_nodes, num_levels), -1, np.int32)
  for node, p in enumerate(prefixes):
    depth[node] = len(p)
    prefix[node, :len(p)] = p
    if p:
      children[node_of_prefix[p[:-1]], p[-1]] = node
  groups: dict[int, list[int]] = {}
  for item in range(num_items):
    groups.setdefault(node_of_prefix[tuple(int(c) for c in item_codes[item])], []).append(item)
  width = max(len(g) for g in groups.values())
  leaf_items = np.full((num_nodes, width), -1, np.int32)
  for node, items in groups.items():
    leaf_items[node, :len(items)] = items
  fanout = max(int((children >= 0).sum(axis=1).max()), 1)
  order = np.argsort(children < 0, axis=1, kind='stable')[:, :fanout]   # valid codes first
  child_codes = np.where(np.take_along_axis(children, order, axis=1) >= 0, order,
                         NO_NODE).astype(np.int32)
  return Trie(children=children, depth=depth, prefix=prefix, leaf_items=leaf_items,
              child_codes=child_codes, num_levels=num_levels, num_codes=num_codes)


def valid_codes(trie: Trie, node: jnp.ndarray) -> jnp.ndarray:
  """Mask of codes that extend `node` to a real prefix: node [...] -> [..., K] bool."""
  safe = jnp.maximum(node, 0)
  return (trie.children[safe] >= 0) & (node >= 0)[..., None]


def step(trie: Trie, node: jnp.ndarray, code: jnp.ndarray) -> jnp.ndarray:
  """Child of `node` along `code` (both [...] int32), -1 if invalid or node is -1."""
  child = trie.children[jnp.maximum(node, 0), jnp.clip(code, 0, trie.num_codes - 1)]
  return jnp.where((node >= 0) & (code >= 0) & (code < trie.num_codes), child, NO_NODE)


def lookup(trie: Trie, codes: jnp.ndarray) -> jnp.ndarray:
  """Node of a full SID: codes [..., L] int32 -> [...] int32 (-1 if not an item's SID)."""
  node = jnp.zeros(codes.shape[:-1], jnp.int32)
  for level in range(codes.shape[-1]):
    node = step(trie, node, codes[..., level])
  return node


def is_valid_sid(trie: Trie, codes: jnp.ndarray) -> jnp.ndarray:
  """Whether each SID [..., L] names a real item: -> [...] bool."""
  node = lookup(trie, codes)
  return (node >= 0) & (trie.depth[jnp.maximum(node, 0)] == trie.num_levels)


def collision_groups(item_codes: np.ndarray) -> list[list[int]]:
  """Groups (sorted item ids) of two or more items sharing one SID, sorted."""
  groups: dict[tuple[int, ...], list[int]] = {}
  for item, row in enumerate(np.asarray(item_codes)):
    groups.setdefault(tuple(int(c) for c in row), []).append(item)
  return sorted(g for g in groups.values() if len(g) > 1)


@dataclasses.dataclass(frozen=True)
class LevelUsage:
  """How many distinct prefixes exist per level (codebook utilisation)."""
  distinct_prefixes: Sequence[int]
  distinct_codes: Sequence[int]


def level_usage(item_codes: np.ndarray) -> LevelUsage:
  item_codes = np.asarray(item_codes)
  num_levels = item_codes.shape[1]
  return LevelUsage(
      distinct_prefixes=[len({tuple(r[:l + 1]) for r in item_codes.tolist()}) for l in range(num_levels)],
      distinct_codes=[len(np.unique(item_codes[:, l])) for l in range(num_levels)])
