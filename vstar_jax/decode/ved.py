"""Value-Guided Efficient Decoding (VED, paper Sec. 4.2, Eq. 10-14): a batched tree search.

One tree per user, stored mctx-style as arrays with a leading batch axis ([B, N] node
fields, [B, N, F] child tables, F the trie's largest fan-out) sized statically by the
forward budget; every step is a masked gather / scatter / top_k, so the whole search is one
jitted program whatever the data, and all users of a shard are searched together (no vmap
of one-user trees).

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
    [B, N, F] (node expanded, depth <= L-2, code valid, child not yet expanded); the top
    k pairs per user (static k, default w) are expanded in ONE batched [B, k] forward,
    the shape of a beam step; visit counts N are backed up along their paths. Iterations
    ~ (B - base) / k; the last one expands the (B - base) mod k pairs left.
  * Output: the candidate leaves ranked by cumulative log-prob, by Q, or by a mix; the
    top G with a validity mask where fewer exist (leaves are distinct trie paths: never
    a duplicate to pad a group).

The model is seen only through `root_fn` and `expand_fn` returning a model.expansion.Expansion
record (re-exported as ved_tree.Expansion; model.policy.ved_policy builds them for the decoder
with per-node suffix KV caches, so one expansion feeds one token).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional

import flax.struct
import jax
import jax.numpy as jnp

from vstar_jax.default_config import ConfigError
from vstar_jax.decode import selection
from vstar_jax.decode import ved_tree
from vstar_jax.sid import trie as trie_lib

Tree = ved_tree.Tree

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
    lookahead_weight: weight of the log-prob still to come in the 'lookahead' rule.
  """
  width: int = 8
  multiplier: float = 2.0
  lam: float = 0.1
  beta: float = 1.0
  group_size: int = 16
  selection: str = 'lookahead'
  leaf_ranking: str = 'logprob'
  mix: float = 1.0
  per_step: int = 16
  lookahead_weight: float = 0.5

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

  @classmethod
  def from_settings(cls, settings: Mapping, group_size: int,
                    multiplier: float | None = None) -> VedConfig:
    """From config.ved (a mapping of these fields but group_size), for G = group_size and, if
    given, another budget multiplier; an error names the --config.ved flag."""
    values = dict(settings, group_size=group_size)
    if multiplier is not None:
      values['multiplier'] = multiplier
    try:
      return cls(**values)
    except TypeError as e:
      raise ConfigError('ved', f'unknown VED setting ({e}); the settings are '
                        f'{[f.name for f in dataclasses.fields(cls)]}') from None
    except ValueError as e:
      raise ConfigError(f'ved.{getattr(e, "field", "")}'.rstrip('.'), str(e)) from None


def base_budget(num_levels: int, width: int) -> int:
  """Stage-1 cost: the root's forward plus w forwards at each depth 1..L-1."""
  return 1 + (num_levels - 1) * width


def budget(cfg: VedConfig, num_levels: int) -> int:
  """Forwards allowed per user: floor(m * base) (Eq. 10)."""
  return int(cfg.multiplier * base_budget(num_levels, cfg.width))


@flax.struct.dataclass
class VedOutput:
  """VED result per user.

  Attributes:
    candidates: [B, G, L] int32, distinct valid SIDs, best first; -1 rows where invalid.
    valid: [B, G] bool (fewer than G leaves leave the tail invalid).
    scores: [B, G] float32, the leaf-ranking score, -inf where invalid.
    tree: the search tree (decode.ved_tree.Tree).
    num_forwards: [B] int32, forwards spent (counted inside the kernel).
  """
  candidates: jnp.ndarray
  valid: jnp.ndarray
  scores: jnp.ndarray
  tree: Tree
  num_forwards: jnp.ndarray


def _stage1(tree: Tree, trie: trie_lib.Trie, expand_fn: ved_tree.ExpandFn,
            cfg: VedConfig) -> Tree:
  """Stage 1: constrained beam of width w from the root to depth L-1 (one forward per node)."""
  rows = ved_tree.batch_rows(tree)
  frontier = jnp.zeros((tree.exists.shape[0], 1), jnp.int32)
  alive = jnp.ones(frontier.shape, bool)
  for _ in range(1, tree.num_levels):
    scores = tree.cum_log_prob[rows, frontier][..., None] + tree.child_log_prob[rows, frontier]
    mask = alive[..., None] & (scores > -jnp.inf)
    index, child_slots, real = ved_tree.top_pairs(scores, mask, cfg.width)
    parents = jnp.take_along_axis(frontier, index, axis=1)
    slots = ved_tree.new_slots(tree, real)
    tree = ved_tree.expand(tree, trie, expand_fn, parents, child_slots, real, cfg.lam)
    frontier, alive = jnp.where(real, slots, 0), real
  return tree


# Past this many full-width steps the search runs as a lax.scan over blocks of this many
# unrolled steps: a fully unrolled graph grows with the budget (m = 40 at k = 2 is 98 steps:
# ~45 s to compile on CPU, and XLA has crashed compiling it), a scanned one does not.
MAX_UNROLLED_STEPS = 16


def _search(tree: Tree, trie: trie_lib.Trie, expand_fn: ved_tree.ExpandFn, keys: jnp.ndarray,
            cfg: VedConfig, select_fn) -> Tree:
  """Stages 2-4: score eligible pairs, expand the top k per user in one forward, back up.

  Up to MAX_UNROLLED_STEPS the ceil((budget - base) / k) iterations are unrolled (a static
  count): XLA then fuses across iterations, 1.5-2x faster on CPU than a while_loop; longer
  searches scan over the full-width steps, MAX_UNROLLED_STEPS unrolled per scan iteration.
  The steps' widths sum to budget - base (the last one expands the (budget - base) mod k
  pairs left) and stage 1 spends at most base, so no forward is ever computed past the
  budget; pairs past the eligible ones are masked (no forward is counted).
  """
  k = cfg.expansions_per_step
  left_after_stage1 = budget(cfg, trie.num_levels) - base_budget(trie.num_levels, cfg.width)
  full_steps, last_pairs = divmod(left_after_stage1, k)

  def step_fn(tree, step, pairs):
    eligible = tree.eligible()
    step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, step)
    scores = select_fn(tree, eligible, step_keys, cfg)
    parents, child_slots, real = ved_tree.top_pairs(scores, eligible, pairs)
    return ved_tree.expand(tree, trie, expand_fn, parents, child_slots, real, cfg.lam)

  if full_steps <= MAX_UNROLLED_STEPS:
    for step in range(full_steps):
      tree = step_fn(tree, step, k)
  else:
    tree, _ = jax.lax.scan(lambda t, step: (step_fn(t, step, k), None), tree,
                           jnp.arange(full_steps), unroll=MAX_UNROLLED_STEPS)
  if last_pairs:
    tree = step_fn(tree, full_steps, last_pairs)
  return tree


def leaf_scores(tree: Tree, cfg: VedConfig) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(ranking score, tie-break score) [B, N, F] of every candidate leaf, -inf elsewhere."""
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
  """Top-G candidate leaves by the leaf ranking: candidates [B, G, L] (-1 rows where invalid),
  valid [B, G], scores [B, G].

  'value' breaks ties (e.g. an untrained, constant Q) by log-prob with a full sort; the
  continuous log-prob and mix scores take one top_k (8x cheaper at m = 8; ties by index).
  """
  primary, secondary = (x.reshape(x.shape[0], -1) for x in leaf_scores(tree, cfg))
  if cfg.leaf_ranking == 'value':
    batch, size = primary.shape
    index = jnp.broadcast_to(jnp.arange(size), (batch, size))
    *_, order = jax.lax.sort((-primary, -secondary, index), dimension=1, num_keys=3)
    order = order[:, :cfg.group_size]
    pad = ((0, 0), (0, cfg.group_size - order.shape[1]))
    best = jnp.pad(jnp.take_along_axis(primary, order, axis=1), pad, constant_values=-jnp.inf)
    order = jnp.pad(order, pad)
  else:
    kept = min(cfg.group_size, primary.shape[1])
    best, order = jax.lax.top_k(primary, kept)
    pad = ((0, 0), (0, cfg.group_size - kept))
    best, order = jnp.pad(best, pad, constant_values=-jnp.inf), jnp.pad(order, pad)
  valid = best > -jnp.inf
  rows, num_slots = ved_tree.batch_rows(tree), tree.child_code.shape[-1]
  node, child_slot = order // num_slots, order % num_slots
  last_code = tree.child_code[rows, node, child_slot]                          # [B, G]
  is_last = jnp.arange(tree.num_levels) == tree.num_levels - 1
  cand = jnp.where(is_last, last_code[..., None], tree.prefix[rows, node])
  return jnp.where(valid[..., None], cand, -1), valid, best


def ved(root_fn: ved_tree.RootFn, expand_fn: ved_tree.ExpandFn, trie: trie_lib.Trie,
        keys: jnp.ndarray, cfg: VedConfig, select_fn: Optional[Callable] = None) -> VedOutput:
  """Value-Guided Efficient Decoding for B users under a static forward budget.

  Args:
    root_fn: () -> ved_tree.Expansion of every user's root (the empty prefix), M = 1.
    expand_fn: (parent embedding [B, M, ...], code [B, M], parent depth [B, M]) ->
      ved_tree.Expansion of the M children parent.code per user.
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
  root = ved_tree.checked(root_fn(), 'root_fn')
  num_nodes = budget(cfg, trie.num_levels)
  tree = ved_tree.empty(root, trie, num_nodes)
  root_slot = jnp.zeros((root.value.shape[0], 1), jnp.int32)
  tree = ved_tree.record(tree, trie, root_slot, root, cfg.lam, root_slot == 0)
  tree = _stage1(tree, trie, expand_fn, cfg)
  tree = _search(tree, trie, expand_fn, keys, cfg, select_fn)
  candidates, valid, scores = _rank_leaves(tree, cfg)
  return VedOutput(candidates=candidates, valid=valid, scores=scores, tree=tree,
                   num_forwards=tree.num_forwards)
