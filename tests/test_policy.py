"""Tests for vstar_jax.model.policy: candidate scoring equals teacher forcing."""

from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

import decoder_fixture
from vstar_jax.data import synthetic
from vstar_jax.decode import search
from vstar_jax.decode import ved as ved_lib
from vstar_jax.model import decoder
from vstar_jax.model import expansion
from vstar_jax.model import policy
from vstar_jax.sid import trie as trie_lib

CFG = decoder.DecoderConfig(num_levels=3, num_codes=8, max_history=10, num_layers=1, d_model=32,
                            num_heads=2, d_ff=64, dropout=0.0, item_hash_buckets=64)


def test_candidate_log_probs_equal_teacher_forcing():
  data = synthetic.make_dataset(num_items=120, num_users=150, num_codes=8, seq_len=8)
  params = decoder_fixture.random_params(CFG)
  rng = np.random.default_rng(1)
  cand = data.item_codes[rng.choice(data.num_items, (4, 8))]
  valid = rng.random((4, 8)) < 0.8
  cand = np.where(valid[..., None], cand, -1)
  history = data.history_codes('train')[:4]
  logp, values, q = jax.jit(lambda p, b: policy.candidate_log_probs(p, b, cfg=CFG))(
      params, policy.Candidates(history=history, cand=cand, valid=valid))
  flat = np.maximum(cand, 0).reshape(32, 3)
  ref_lp, ref_v, ref_q = jax.jit(decoder.forward_train, static_argnums=1)(
      params, CFG, np.repeat(history, 8, axis=0), flat)
  ref_lp = np.take_along_axis(np.asarray(ref_lp), flat[..., None], -1)[..., 0].reshape(4, 8, 3)
  ref_q = np.take_along_axis(np.asarray(ref_q), flat[..., None], -1)[..., 0].reshape(4, 8, 3)
  ref_v = np.asarray(ref_v).reshape(4, 8, 4)
  np.testing.assert_allclose(logp, np.where(valid[..., None], ref_lp, 0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(values, np.where(valid[..., None], ref_v, 0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(q, np.where(valid[..., None], ref_q, 0), rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(logp)[valid] < 0)


def test_ved_policy_expansions_equal_the_prefix_pass():
  """root_fn / expand_fn (cached, one token per node) give the prefix pass's log-probs, V and Q."""
  data = synthetic.make_dataset(num_items=120, num_users=150, num_codes=8, seq_len=8)
  params = decoder_fixture.random_params(CFG)
  history = data.history_codes('train')[:3]
  codes = data.item_codes[np.random.default_rng(2).choice(data.num_items, (3, 4))]
  prompt = decoder.prefill(params, CFG, history)
  root_fn, expand_fn = policy.ved_policy(params, CFG, history)

  def check(out, prefix, depth):
    assert isinstance(out, expansion.Expansion)
    want = decoder.prefix_forward(params, CFG, prompt, prefix, np.full(prefix.shape[:2], depth))
    for got, ref in zip((out.log_probs, out.value, out.child_values), want):
      np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)

  out = root_fn()
  check(out, np.zeros((3, 1, 3), np.int32), 0)
  path = [jax.tree.map(lambda x: jnp.repeat(x, 4, axis=1), out.embedding)]  # own-token states
  for depth in range(1, 3):
    states = path + [jax.tree.map(jnp.zeros_like, path[0])] * (3 - len(path))
    path_states = jax.tree.map(lambda *xs: jnp.stack(xs, axis=2), *states)   # [B, M, L, ...]
    out = expand_fn(path_states, codes[..., depth - 1], np.full((3, 4), depth - 1, np.int32))
    check(out, codes, depth)
    path.append(out.embedding)


def test_ved_search_on_the_decoder_scores_leaves_as_teacher_forcing_and_m1_is_beam():
  """End to end through the per-node KV path: VED's leaf log-probs equal teacher-forced sums,
  its m = 1 search equals beam search of width w, and the tree is dropped unless asked."""
  data = synthetic.make_dataset(num_items=120, num_users=150, num_codes=8, seq_len=8)
  params = decoder_fixture.random_params(CFG)
  trie = trie_lib.build_trie(data.item_codes, 8)
  history = data.history_codes('train')[:4]
  keys = search.user_keys(jax.random.key(0), jnp.arange(4))
  vcfg = ved_lib.VedConfig(width=3, multiplier=3, selection='lookahead', per_step=4, group_size=6)
  out = search.ved_search(params, CFG, trie, history, keys, vcfg)
  kept = search.ved_search(params, CFG, trie, history, keys, vcfg, keep_tree=True)
  assert out.tree is None and kept.tree is not None
  np.testing.assert_array_equal(out.candidates, kept.candidates)
  assert (out.num_forwards == ved_lib.budget(vcfg, 3)).all()
  logp, _, _ = policy.candidate_log_probs(
      params, policy.Candidates(history=history, cand=out.candidates, valid=out.valid), cfg=CFG)
  np.testing.assert_allclose(np.where(out.valid, out.scores, 0), np.sum(logp, -1), rtol=1e-4,
                             atol=1e-4)
  search.ved_search.clear_cache()
  with mock.patch.object(ved_lib, 'MAX_UNROLLED_STEPS', 1):        # stage 2 as a lax.scan
    scanned = search.ved_search(params, CFG, trie, history, keys, vcfg)
  np.testing.assert_array_equal(scanned.candidates, out.candidates)
  np.testing.assert_allclose(scanned.scores, out.scores, rtol=1e-5, atol=1e-5)
  search.ved_search.clear_cache()
  m1 = ved_lib.VedConfig(width=3, multiplier=1, lam=0.0, beta=0.0, group_size=3)
  codes, scores = search.beam_search(params, CFG, trie, history, 3)
  ved_m1 = search.ved_search(params, CFG, trie, history, keys, m1)
  np.testing.assert_array_equal(ved_m1.candidates, codes)
  np.testing.assert_allclose(ved_m1.scores, scores, rtol=1e-5, atol=1e-5)
