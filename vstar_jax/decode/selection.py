"""VED selection rules: which (node, code) pairs to expand next (paper Sec. 4.2, Eq. 11-14).

A rule is a pure function `rule(tree, eligible [B, N, F], keys [B], cfg) -> scores [B, N, F]`
(higher is expanded first); the kernel (decode.ved) masks ineligible pairs and expands the
top k per user, so a new rule is one function and one RULES entry, never a kernel edit.
For a pair (s, c) of an expanded node s and a valid, not yet expanded code c, the rules see
the policy prior pi(c | s), the cumulative log-prob of s.c, the child value Q(s, c) of the Q
head (the value of s.c read from s's own forward), V(s), H(s), G(s) and the visit counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_GATE_RTOL = 1e-6
_TIE_BREAK = 1e-3
# A gated-out parent's children come after every other pair (not never): once no pair under a
# passing parent is left, the budget is still spent, on the best gated-out ones.
GATE_PENALTY = 1e4


def per_depth_zscore(x: jnp.ndarray, mask: jnp.ndarray, depth: jnp.ndarray,
                     num_levels: int) -> jnp.ndarray:
  """x [B, N, F] standardised over the masked pairs of each (user, parent depth): one scale.

  Values of prefixes of different depths live on different scales (a depth-1 prefix
  averages over many more items than a depth-2 one); the paper compares priorities across
  the whole tree, so they are put on one scale first (docs/method.md, "VED").
  """
  onehot = (depth[..., None] == jnp.arange(num_levels)).astype(jnp.float32)   # [B, N, D]
  weight = mask.astype(jnp.float32)
  count = jnp.einsum('bnk,bnd->bd', weight, onehot)
  mean = jnp.einsum('bnk,bnd->bd', jnp.where(mask, x, 0.0), onehot) / jnp.maximum(count, 1.0)
  centred = x - jnp.einsum('bd,bnd->bn', mean, onehot)[..., None]
  var = jnp.einsum('bnk,bnd->bd', jnp.where(mask, centred ** 2, 0.0), onehot) / jnp.maximum(
      count, 1.0)
  std = jnp.einsum('bd,bnd->bn', jnp.sqrt(var), onehot)[..., None]
  return centred / (std + 1e-6)


def gate(tree) -> jnp.ndarray:
  """[B, N] bool, Eq. 14: G(s) >= the mean G of the tree's nodes at s's depth (the root passes)."""
  num_levels = tree.prefix.shape[-1]
  at_depth = tree.exists[..., None] & (tree.depth[..., None] == jnp.arange(num_levels))
  totals = jnp.sum(jnp.where(at_depth, tree.priority[..., None], 0.0), axis=1)
  mean_g = totals / jnp.maximum(jnp.sum(at_depth, axis=1), 1)          # [B, D]
  mean_here = jnp.take_along_axis(mean_g, tree.depth, axis=1)
  return tree.priority >= mean_here - _GATE_RTOL * (1.0 + jnp.abs(mean_here))


def prior_sample_tie_break(tree, keys: jnp.ndarray) -> jnp.ndarray:
  """[B, N, F] small Gumbel-perturbed log pi(c | s): among a parent's children it draws the new
  child from the policy (the paper samples it), without reordering distinct parents."""
  noise = jax.vmap(lambda key: jax.random.gumbel(key, tree.child_log_prob.shape[1:]))(keys)
  return _TIE_BREAK * jnp.where(tree.child_log_prob > -jnp.inf, tree.child_log_prob + noise, 0.0)


def child_priority(tree, lam: float) -> jnp.ndarray:
  """[B, N, F] G of each would-be child s.c before its forward: Q(s, c) + lambda * H(s) (Eq. 11)."""
  return tree.child_value + lam * tree.entropy[..., None]


def exploration_bonus(tree, beta: float) -> jnp.ndarray:
  """[B, N, 1] UCB term of Eq. 13 for a new child of s: beta sqrt(ln(N_root + 1) / (N(s) + 1))."""
  root_visits = tree.visits[:, :1].astype(jnp.float32)
  return (beta * jnp.sqrt(jnp.log(root_visits + 1.0) / (tree.visits + 1.0)))[..., None]


def ucb(tree, eligible, keys, cfg) -> jnp.ndarray:
  """The paper's gated UCB (Eq. 11, 13, 14) on pairs: z(G(s.c)) + bonus(s), gated parents last."""
  g = per_depth_zscore(child_priority(tree, cfg.lam), eligible, tree.depth, tree.prefix.shape[-1])
  score = g + exploration_bonus(tree, cfg.beta) + prior_sample_tie_break(tree, keys)
  return score - jnp.where(gate(tree), 0.0, GATE_PENALTY)[..., None]


def puct(tree, eligible, keys, cfg) -> jnp.ndarray:
  """PUCT-style prior term: z(G(s.c)) + beta * pi(c | s) * sqrt(N(s)) (N(s.c) = 0: new child)."""
  del keys
  g = per_depth_zscore(child_priority(tree, cfg.lam), eligible, tree.depth, tree.prefix.shape[-1])
  prior = jnp.exp(tree.child_log_prob - jax.nn.logsumexp(tree.child_log_prob, -1, keepdims=True))
  return g + cfg.beta * prior * jnp.sqrt(tree.visits.astype(jnp.float32))[..., None]


def best_first(tree, eligible, keys, cfg) -> jnp.ndarray:
  """Cumulative log-prob of s.c: expand the most probable unexpanded prefixes (uniform-cost
  search; log-probs only fall along a path, so a large budget finds the exact top leaves)."""
  del eligible, keys, cfg
  return tree.cum_log_prob[..., None] + tree.child_log_prob


def depth_drops(tree) -> jnp.ndarray:
  """[B, L] mean over the expanded nodes at each depth of their best next-code log-prob
  (0 where a depth has no expanded node): the tree's own estimate of one step's cost."""
  num_levels = tree.prefix.shape[-1]
  best = jnp.max(tree.child_log_prob, axis=-1)                                  # [B, N]
  seen = tree.exists & (best > -jnp.inf)
  at_depth = (seen[..., None] & (tree.depth[..., None] == jnp.arange(num_levels)))  # [B, N, L]
  total = jnp.sum(jnp.where(at_depth, best[..., None], 0.0), axis=1)
  return total / jnp.maximum(jnp.sum(at_depth, axis=1), 1)


def lookahead(tree, eligible, keys, cfg) -> jnp.ndarray:
  """A*-style best-first: log-prob of s.c plus cfg.lookahead_weight times the tree's estimate
  of the log-prob still to come below it, sum_{e > depth(s)} depth_drops[e], so a depth-1 and
  a depth-2 prefix are compared on one scale, the log-prob of the best whole SID they lead to
  (docs/method.md, "VED"). Weight 0 is best_first, which prefers shallow prefixes (log-probs
  only fall with depth) and spends forwards on depth-1 prefixes whose leaves never make the
  top G; weight 1 takes the estimate at face value (it is optimistic: the mean best step)."""
  del eligible, keys
  drops = cfg.lookahead_weight * depth_drops(tree)                              # [B, L]
  to_come = jnp.flip(jnp.cumsum(jnp.flip(drops, -1), -1), -1)                   # [B, L]
  to_come = jnp.concatenate([to_come[:, 1:], jnp.zeros_like(to_come[:, :1])], -1)
  # to_come[b, d] = sum_{e > d} drops[b, e]: a child of a depth-d node sits at depth d+1 and
  # still needs the steps below it, depth d+1 .. L-1.
  below = jnp.take_along_axis(to_come, tree.depth, axis=1)                      # [B, N]
  return tree.cum_log_prob[..., None] + tree.child_log_prob + below[..., None]


RULES = {'ucb': ucb, 'puct': puct, 'best_first': best_first, 'lookahead': lookahead}
