"""Tests for vstar_jax.model.hf_policy: every policy function equals the teacher-forced pass of the
Qwen2 fixture on MiniOneRec's layout, and the searches run on it unchanged."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

import hf_fixture
from vstar_jax.decode import ved as ved_lib
from vstar_jax.model import causal_lm
from vstar_jax.model import hf_policy
from vstar_jax.model import policy
from vstar_jax.model import value_head
from vstar_jax.sid import trie as trie_lib

VED = ved_lib.VedConfig(width=3, multiplier=1, group_size=7)
NUM_USERS, NUM_CAND = 2, 7      # NUM_CAND = VED's node budget, so both share one reference shape


@functools.lru_cache(maxsize=None)
def _setup():
  """(params, cfg, prompts [2, P], candidates [2, 7, 3]) on the fixture's catalogue."""
  params, cfg, tok, codes = hf_fixture.qwen2_policy()
  prompts = hf_fixture.prompts(tok, codes, NUM_USERS, seed=1)
  cand = codes[np.random.default_rng(2).choice(len(codes), (NUM_USERS, NUM_CAND))]
  return params, cfg, prompts, cand


@functools.partial(hf_fixture.jit, static_argnums=1)
def _teacher_forced(params, cfg, prompts, cand):
  """The plain full pass on prompt ++ [t_0, t_1, t_2, tail...]: full-vocabulary log-probs
  [B, G, L + n, V] at suffix indices 0 .. L + n - 1, V [B, G, L + n] and the Q of every level."""
  batch, num_cand, num_levels = cand.shape
  tail = jnp.asarray(cfg.tail_token_ids[:-1])
  tail = jnp.broadcast_to(tail, (batch, num_cand, tail.shape[0]))
  response = jnp.concatenate([cfg.table()[jnp.arange(num_levels), cand], tail], axis=-1)
  tokens = jnp.concatenate([jnp.repeat(prompts[:, None], num_cand, axis=1), response], axis=-1)
  tokens = tokens.reshape(batch * num_cand, -1)
  hidden = causal_lm.forward(params, cfg.lm, tokens, tokens >= 0)[:, -(response.shape[-1] + 1):]
  hidden = hidden.reshape(batch, num_cand, -1, hidden.shape[-1])
  log_probs = jax.nn.log_softmax(causal_lm.logits(params, cfg.lm, hidden), axis=-1)
  values = value_head.ValueHead(cfg.lm.hidden_size).apply({'params': params['value_head']}, hidden)
  q = jnp.stack([value_head.QHead(num_levels, cfg.num_codes, cfg.lm.hidden_size).apply(
      {'params': params['q_head']}, hidden[:, :, level], level) for level in range(num_levels)], 2)
  return log_probs, values, q


@functools.lru_cache(maxsize=None)
def _reference():
  params, cfg, prompts, cand = _setup()
  return jax.tree.map(np.asarray, _teacher_forced(params, cfg, prompts, cand))


def _level_log_probs(cfg, log_probs, level):
  """Full-vocabulary log-probs [..., V] -> the level's codes [..., K] (-inf without a token)."""
  table = np.asarray(cfg.sid_token_ids)
  return np.where(table[level] >= 0, np.asarray(log_probs)[..., np.maximum(table[level], 0)], -np.inf)


@functools.partial(hf_fixture.jit, static_argnums=1)
def _candidates(params, cfg, prompts, cand, valid):
  return hf_policy.candidate_log_probs(params, policy.Candidates(prompts, cand, valid), cfg=cfg)


def test_candidate_log_probs_equal_the_full_pass():
  params, cfg, prompts, cand = _setup()
  valid = np.ones(cand.shape[:2], bool)
  valid[1, 5:] = False
  logp, values, q = _candidates(params, cfg, prompts, np.where(valid[..., None], cand, -1), valid)
  ref_lp, ref_v, ref_q = _reference()
  taken = np.stack([np.take_along_axis(_level_log_probs(cfg, ref_lp[:, :, l], l),
                                       cand[..., l, None], -1)[..., 0] for l in range(3)], -1)
  np.testing.assert_allclose(logp, np.where(valid[..., None], taken, 0), atol=1e-4, rtol=1e-5)
  np.testing.assert_allclose(values, np.where(valid[..., None], ref_v[:, :, :4], 0), atol=1e-5)
  q_taken = np.take_along_axis(np.asarray(ref_q), cand[..., None], -1)[..., 0]
  np.testing.assert_allclose(q, np.where(valid[..., None], q_taken, 0), atol=1e-5)
  assert np.all(np.asarray(logp)[valid] < 0) and np.abs(q_taken).max() > 0


@functools.partial(hf_fixture.jit, static_argnums=1)
def _beam_and_rank(params, cfg, prompts, cand, codes_1, parent_2, scores):
  """On one prefill: beam steps at levels 0 (one beam), 1 (4 beams from beam 0, codes_1) and 2
  (beams reordered by parent_2, fed cand's second codes); rank_with_tail of (cand, scores)."""
  prompt = hf_policy.prefill(params, cfg, prompts)
  state, step = hf_policy.beam_policy_from(params, cfg, prompt)
  zeros = jnp.zeros((prompts.shape[0], 1), jnp.int32)
  lp0, state = step(state, zeros, zeros, 0)
  lp1, state = step(state, jnp.zeros_like(codes_1), codes_1, 1)
  lp2, _ = step(state, parent_2, cand[:, :4, 1], 2)
  return (lp0, lp1, lp2), hf_policy.rank_with_tail(params, cfg, prompt, cand, scores)


@functools.lru_cache(maxsize=None)
def _beam_and_rank_outputs():
  """(sigma, scores, outputs of _beam_and_rank) on the setup, computed once."""
  params, cfg, prompts, cand = _setup()
  sigma = np.array([2, 0, 3, 1])
  scores = np.full(cand.shape[:2], -np.inf, np.float32)
  scores[:, :5] = -np.arange(5, dtype=np.float32)
  out = _beam_and_rank(params, cfg, prompts, cand, cand[:, sigma, 0],
                       np.tile(np.argsort(sigma), (2, 1)).astype(np.int32), scores)
  return sigma, scores, out


def test_beam_steps_with_reordered_caches_equal_the_full_pass():
  """Beam j holds candidate sigma(j)'s first code at level 1; at level 2 beam w copies the beam
  holding candidate w's first code and feeds its second: log-probs of the candidates' prefixes."""
  _, cfg, _, _ = _setup()
  sigma, _, ((lp0, lp1, lp2), _) = _beam_and_rank_outputs()
  ref_lp = _reference()[0]
  np.testing.assert_allclose(lp0[:, 0], _level_log_probs(cfg, ref_lp[:, 0, 0], 0), atol=1e-4)
  np.testing.assert_allclose(lp1, _level_log_probs(cfg, ref_lp[:, sigma, 1], 1), atol=1e-4)
  np.testing.assert_allclose(lp2, _level_log_probs(cfg, ref_lp[:, :4, 2], 2), atol=1e-4)
  assert np.isinf(np.asarray(lp0)).any() and np.isfinite(np.asarray(lp0)).any()


def test_rank_with_tail_adds_the_newline_and_eos_steps():
  """MiniOneRec's ranking: L code log-probs + log p("\\n") + log p(EOS), re-sorted; -inf stays last."""
  _, cfg, _, cand = _setup()
  _, scores, (_, (codes, total)) = _beam_and_rank_outputs()
  ref_lp = _reference()[0]
  tail = np.asarray(cfg.tail_token_ids)
  tail_lp = sum(ref_lp[:, :, 3 + j, tail[j]] for j in range(len(tail)))           # [B, G]
  want = np.where(np.isfinite(scores), scores + tail_lp, -np.inf)
  order = np.argsort(-want, axis=1, kind='stable')
  np.testing.assert_allclose(total, np.take_along_axis(want, order, 1), atol=1e-4)
  np.testing.assert_array_equal(codes[:, :5], np.take_along_axis(cand, order[..., None], 1)[:, :5])
  assert np.isinf(np.asarray(total)[:, 5:]).all()


def test_ved_runs_on_the_backbone_and_its_expansions_equal_the_full_pass():
  """decode.ved runs unchanged on ved_policy (one token per node on its path's cached keys): it
  spends its budget; every node's child log-probs, V and Q equal the teacher-forced pass on the
  node's prefix; its leaves are scored by the candidates' log-probs."""
  params, cfg, prompts, _ = _setup()
  codes = hf_fixture.catalogue()
  trie = trie_lib.build_trie(codes, 256)

  @functools.partial(hf_fixture.jit, static_argnums=1)
  def search(params, cfg, prompts, keys):
    root_fn, expand_fn = hf_policy.ved_policy(params, cfg, prompts)
    return ved_lib.ved(root_fn, expand_fn, trie, keys, VED)

  out = search(params, cfg, prompts, jax.random.split(jax.random.key(0), NUM_USERS))
  tree = jax.tree.map(np.asarray, out.tree)
  assert (out.num_forwards == ved_lib.budget(VED, 3)).all() and tree.exists.all()
  prefix = np.where(tree.prefix >= 0, tree.prefix, codes[0])    # any code past a node's depth
  ref_lp, ref_v, ref_q = jax.tree.map(np.asarray, _teacher_forced(params, cfg, prompts, prefix))
  at_depth = tree.depth[..., None, None]
  node_lp = np.take_along_axis(ref_lp, at_depth, axis=2)[:, :, 0]                # [B, N, V]
  slots = tree.child_code >= 0
  for depth in range(3):
    here = (tree.depth == depth)[..., None] & slots
    level = _level_log_probs(cfg, node_lp, depth)
    want = np.take_along_axis(level, np.maximum(tree.child_code, 0), -1)
    np.testing.assert_allclose(tree.child_log_prob[here], want[here], atol=1e-4)
  np.testing.assert_allclose(tree.value, np.take_along_axis(ref_v, at_depth[..., 0], 2)[..., 0],
                             atol=1e-5)
  node_q = np.take_along_axis(ref_q, np.minimum(at_depth, 2), axis=2)[:, :, 0]
  np.testing.assert_allclose(tree.child_value[slots],
                             np.take_along_axis(node_q, np.maximum(tree.child_code, 0), -1)[slots],
                             atol=1e-5)
  valid = np.asarray(out.valid)
  catalogue = {tuple(c) for c in codes.tolist()}
  assert valid[:, 0].all()
  assert all(tuple(c) in catalogue for c in np.asarray(out.candidates)[valid].tolist())
  logp, _, _ = _candidates(params, cfg, prompts, out.candidates, out.valid)
  np.testing.assert_allclose(np.asarray(out.scores)[valid], np.sum(logp, -1)[valid], atol=1e-4)


def test_sft_loss_is_the_mean_response_nll():
  """Loss = mean NLL of [t_a, t_b, t_c, "\\n", EOS] after the prompt (the first candidate as target);
  per-level accuracy is the argmax over the level's codes; gradients reach the embeddings."""
  params, cfg, prompts, cand = _setup()
  target = cand[:, 0]
  response = np.concatenate([np.asarray(cfg.sid_token_ids)[np.arange(3), target],
                             np.tile(cfg.tail_token_ids, (2, 1))], axis=1).astype(np.int32)
  (loss, metrics), grads = hf_fixture.jit(jax.value_and_grad(hf_policy.sft_loss, has_aux=True),
                                          static_argnums=1)(params, cfg, prompts, response)
  ref_lp = _reference()[0][:, 0]                                                     # [B, 5, V]
  nll = -np.take_along_axis(ref_lp, response[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, nll.mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics['nll_sid'], nll[:, :3].mean(), rtol=1e-5)
  for level in range(3):
    best = _level_log_probs(cfg, ref_lp[:, level], level).argmax(-1)
    np.testing.assert_allclose(metrics[f'acc_L{level + 1}'], np.mean(best == target[:, level]))
  assert np.abs(np.asarray(grads['embed_tokens']['embedding'])).sum() > 0
