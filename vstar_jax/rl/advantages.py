"""Group (GRPO) and sibling (Sibling-GRPO) advantages over a candidate group.

Fixed-shape array code: the sibling structure of the G candidates is read from
pairwise prefix-equality masks [B, G, G] (G is small), one level at a time, so no
sorting, dicts or data-dependent control flow are needed inside jit.
"""

from __future__ import annotations

import jax.numpy as jnp

EPS = 1e-4


def group_advantages(rewards: jnp.ndarray, valid: jnp.ndarray, eps: float = EPS) -> jnp.ndarray:
  """GRPO advantage: rewards z-scored within each group over valid candidates.

  Matches TRL's GRPO (used by MiniOneRec): (r - mean) / (std + eps) with the unbiased
  (n-1) standard deviation. Invalid candidates get 0, and so does every candidate of a
  group whose valid rewards are all equal (or that has fewer than two valid ones).

  Args:
    rewards: [B, G] float.
    valid: [B, G] bool.
    eps: added to the standard deviation.

  Returns:
    [B, G] float32.
  """
  rewards = rewards.astype(jnp.float32)
  count = jnp.sum(valid, axis=-1, keepdims=True)
  mean = jnp.sum(jnp.where(valid, rewards, 0.0), -1, keepdims=True) / jnp.maximum(count, 1)
  sq_dev = jnp.where(valid, (rewards - mean) ** 2, 0.0)
  std = jnp.sqrt(jnp.sum(sq_dev, -1, keepdims=True) / jnp.maximum(count - 1, 1))
  spread = (jnp.max(jnp.where(valid, rewards, -jnp.inf), -1, keepdims=True)
            - jnp.min(jnp.where(valid, rewards, jnp.inf), -1, keepdims=True))
  informative = (count >= 2) & (spread > 0)
  return jnp.where(valid & informative, (rewards - mean) / (std + eps), 0.0)


def sibling_advantages(cand: jnp.ndarray, rewards: jnp.ndarray, valid: jnp.ndarray,
                       eps: float = EPS) -> jnp.ndarray:
  """Sibling node advantage A(h, v) of each candidate's token at each depth (Sec. 1.2).

  For depth l and parent prefix h = y_<l, the sibling set S(h) holds the distinct codes v
  at depth l among valid candidates with prefix h. The node score R(h, v) is the mean
  reward of the candidates through (h, v), and
    A(h, v) = (R(h, v) - mu_h) / (sigma_h + eps),
  with mu_h, sigma_h the mean and population standard deviation over the distinct nodes
  of S(h) (each node counts once however many candidates pass through it: S(h) is the
  whole set of siblings, not a sample). Entries are 0 where |S(h)| < 2, where all nodes
  of S(h) score the same, and for invalid candidates.

  Args:
    cand: [B, G, L] int32 candidate SIDs.
    rewards: [B, G] float.
    valid: [B, G] bool.
    eps: added to sigma_h.

  Returns:
    [B, G, L] float32, adv[b, g, l] = A(y_<l, y_l) for candidate g.
  """
  rewards = rewards.astype(jnp.float32)
  num_cands, num_levels = cand.shape[1], cand.shape[2]
  pair_valid = valid[:, :, None] & valid[:, None, :]
  index = jnp.arange(num_cands)
  earlier = index[None, :] < index[:, None]
  same_prefix = jnp.ones_like(pair_valid)
  per_level = []
  for level in range(num_levels):
    same_parent = same_prefix & pair_valid
    same_prefix = same_prefix & (cand[:, :, None, level] == cand[:, None, :, level])
    same_node = same_prefix & pair_valid
    node_count = jnp.sum(same_node, axis=-1)
    node_score = (jnp.einsum('bgh,bh->bg', same_node.astype(jnp.float32), rewards)
                  / jnp.maximum(node_count, 1))
    first_of_node = valid & ~jnp.any(same_node & earlier, axis=-1)
    sibling = same_parent & first_of_node[:, None, :]
    num_siblings = jnp.sum(sibling, axis=-1)
    other_score = jnp.broadcast_to(node_score[:, None, :], sibling.shape)
    mu = jnp.sum(jnp.where(sibling, other_score, 0.0), -1) / jnp.maximum(num_siblings, 1)
    var = (jnp.sum(jnp.where(sibling, (other_score - mu[..., None]) ** 2, 0.0), -1)
           / jnp.maximum(num_siblings, 1))
    spread = (jnp.max(jnp.where(sibling, other_score, -jnp.inf), -1)
              - jnp.min(jnp.where(sibling, other_score, jnp.inf), -1))
    informative = valid & (num_siblings >= 2) & (spread > 0)
    per_level.append(jnp.where(informative, (node_score - mu) / (jnp.sqrt(var) + eps), 0.0))
  return jnp.stack(per_level, axis=-1)


def blend(global_adv: jnp.ndarray, sibling_adv: jnp.ndarray, alpha: float) -> jnp.ndarray:
  """Per-token mix alpha * group advantage + (1 - alpha) * sibling advantage: -> [B, G, L].

  Args:
    global_adv: [B, G] group advantage, broadcast to every token.
    sibling_adv: [B, G, L] sibling advantage per token.
    alpha: weight of the group advantage.
  """
  return alpha * global_adv[..., None] + (1.0 - alpha) * sibling_adv
