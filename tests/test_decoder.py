"""Decoder: cached decoding equals full recomputation; padding and shape contracts."""


import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import decoder_fixture
from vstar_jax.model import attention
from vstar_jax.model import decoder
from vstar_jax.model import layout

CONFIGS = {
    'tied_L3': decoder.DecoderConfig(num_levels=3, num_codes=8, max_history=5, num_layers=2,
                                     d_model=32, num_heads=4, d_ff=64, dropout=0.1),
    'untied_L4': decoder.DecoderConfig(num_levels=4, num_codes=6, max_history=4, num_layers=3,
                                       d_model=24, num_heads=2, d_ff=48, dropout=0.1,
                                       tie_embeddings=False, item_hash_buckets=64),
    # Frozen item-feature input: half of the 64 possible SIDs have a feature row.
    'features_L3': decoder.DecoderConfig(num_levels=3, num_codes=4, max_history=5, num_layers=2,
                                         d_model=16, num_heads=2, d_ff=32, dropout=0.1,
                                         item_feature_keys=tuple(range(0, 64, 2)),
                                         item_feature_dim=5),
}
BATCH, WIDTH = 2, 4  # one shape for every test keeps the number of compilations small
TOL = dict(atol=1e-4, rtol=1e-4)

# Jitted once per config and shape: eager Flax dispatch is slow on a busy CPU.
forward_train = jax.jit(decoder.forward_train, static_argnums=1, static_argnames='train')
prefill = jax.jit(decoder.prefill, static_argnums=1)
decode_step = jax.jit(decoder.decode_step, static_argnums=(1, 5))
prefix_forward = jax.jit(decoder.prefix_forward, static_argnums=1)
node_forward = jax.jit(decoder.node_forward, static_argnums=1)
reorder_suffix_cache = jax.jit(attention.reorder_suffix_cache)


random_params = decoder_fixture.random_params


def random_histories(cfg, batch, seed, num_items=None):
  """[B, T, L] codes, left-padded with -1; row 0 is full, the others random lengths >= 1."""
  rng = np.random.default_rng(seed)
  num_items = num_items or cfg.max_history
  history = rng.integers(0, cfg.num_codes, (batch, num_items, cfg.num_levels)).astype(np.int32)
  lengths = rng.integers(1, num_items + 1, batch)
  lengths[0] = num_items
  for b, n in enumerate(lengths):
    history[b, :num_items - n] = -1
  return history


def random_codes(cfg, shape, seed):
  return np.random.default_rng(seed).integers(0, cfg.num_codes, shape + (cfg.num_levels,))


def reference(params, cfg, history, codes, with_q=False):
  """forward_train on every beam: [B, T, L], [B, W, L] -> log-probs [B, W, L, K], V [B, W, L+1]
  (and Q [B, W, L, K] with_q)."""
  batch, width = codes.shape[:2]
  log_probs, values, q = forward_train(params, cfg, np.repeat(history, width, axis=0),
                                       codes.reshape(batch * width, -1))
  out = (log_probs.reshape(batch, width, cfg.num_levels, -1), values.reshape(batch, width, -1))
  return out + (q.reshape(batch, width, cfg.num_levels, -1),) if with_q else out


@pytest.fixture(scope='module', params=sorted(CONFIGS))
def setup(request):
  """Both configs: cache equivalence and padding are checked for L=3 and L=4, tied and not."""
  cfg = CONFIGS[request.param]
  return cfg, random_params(cfg)


@pytest.fixture(scope='module')
def tied():
  cfg = CONFIGS['tied_L3']
  return cfg, random_params(cfg)


def test_shapes_and_normalisation(setup):
  cfg, params = setup
  history = random_histories(cfg, BATCH * WIDTH, seed=0)
  target = random_codes(cfg, (BATCH * WIDTH,), seed=1)
  log_probs, values, _ = forward_train(params, cfg, history, target)
  chex.assert_shape(log_probs, (BATCH * WIDTH, cfg.num_levels, cfg.num_codes))
  chex.assert_shape(values, (BATCH * WIDTH, cfg.num_levels + 1))
  chex.assert_trees_all_close(jnp.exp(log_probs).sum(-1), jnp.ones(log_probs.shape[:2]), atol=1e-5)
  assert float(log_probs.max() - log_probs.min()) > 1.0  # far from uniform: tests below can fail


def test_jit_matches_eager(tied):
  cfg, params = tied
  history = random_histories(cfg, BATCH * WIDTH, seed=2)
  target = random_codes(cfg, (BATCH * WIDTH,), seed=3)
  chex.assert_trees_all_close(decoder.forward_train(params, cfg, history, target),
                              forward_train(params, cfg, history, target), **TOL)


def test_teacher_forcing_is_causal(tied):
  """Level-l log-probs and V(prefix of length l) ignore target codes at levels >= l."""
  cfg, params = tied
  history = random_histories(cfg, BATCH * WIDTH, seed=4)
  target = random_codes(cfg, (BATCH * WIDTH,), seed=5)
  changed = target.copy()
  changed[:, -1] = (changed[:, -1] + 1) % cfg.num_codes
  lp_a, v_a, _ = forward_train(params, cfg, history, target)
  lp_b, v_b, _ = forward_train(params, cfg, history, changed)
  chex.assert_trees_all_close(lp_a, lp_b, **TOL)
  chex.assert_trees_all_close(v_a[:, :-1], v_b[:, :-1], **TOL)
  assert not np.allclose(v_a[:, -1], v_b[:, -1])


def test_decode_step_chain_equals_forward_train(setup):
  """KV-cached decoding with a shared prompt cache = full recomputation, per beam."""
  cfg, params = setup
  history = random_histories(cfg, BATCH, seed=6)
  codes = random_codes(cfg, (BATCH, WIDTH), seed=7)
  ref_lp, ref_v = reference(params, cfg, history, codes)
  prompt = prefill(params, cfg, history)
  # Level 0 runs on one beam per user, which is then fanned out to the W beams.
  cache = attention.init_suffix_cache(cfg, BATCH, 1)
  log_probs, values, cache = decode_step(params, cfg, prompt, cache,
                                         jnp.zeros((BATCH, 1), jnp.int32), 0)
  chex.assert_trees_all_close(log_probs[:, 0], ref_lp[:, 0, 0], **TOL)
  chex.assert_trees_all_close(values[:, 0], ref_v[:, 0, 0], **TOL)
  cache = reorder_suffix_cache(cache, jnp.zeros((BATCH, WIDTH), jnp.int32))
  for level in range(1, cfg.num_levels):
    log_probs, values, cache = decode_step(params, cfg, prompt, cache, codes[:, :, level - 1],
                                           level)
    chex.assert_trees_all_close(log_probs, ref_lp[:, :, level], **TOL)
    chex.assert_trees_all_close(values, ref_v[:, :, level], **TOL)


def test_reorder_suffix_cache_follows_parents(setup):
  """After reordering, beam w continues the prefix of beam parent[w]."""
  cfg, params = setup
  history = random_histories(cfg, BATCH, seed=8)
  codes = random_codes(cfg, (BATCH, WIDTH), seed=9)
  parent = np.array([[2, 2, 0, 3], [1, 0, 1, 1]])
  prompt = prefill(params, cfg, history)
  cache = reorder_suffix_cache(attention.init_suffix_cache(cfg, BATCH, 1),
                               jnp.zeros((BATCH, 1), jnp.int32))
  _, _, cache = decode_step(params, cfg, prompt, cache, jnp.zeros((BATCH, 1), jnp.int32), 0)
  cache = reorder_suffix_cache(cache, jnp.zeros((BATCH, WIDTH), jnp.int32))
  _, _, cache = decode_step(params, cfg, prompt, cache, codes[:, :, 0], 1)
  cache = reorder_suffix_cache(cache, jnp.asarray(parent))
  log_probs, values, _ = decode_step(params, cfg, prompt, cache, codes[:, :, 1], 2)
  moved = np.take_along_axis(codes, parent[..., None], axis=1)
  ref_lp, ref_v = reference(params, cfg, history,
                            np.concatenate([moved[:, :, :1], codes[:, :, 1:]], axis=-1))
  chex.assert_trees_all_close(log_probs, ref_lp[:, :, 2], **TOL)
  chex.assert_trees_all_close(values, ref_v[:, :, 2], **TOL)


def test_prefix_forward_equals_forward_train(setup):
  """One forward per tree node at every depth 0..L; codes past the depth are ignored."""
  cfg, params = setup
  history = random_histories(cfg, BATCH, seed=10)
  codes = random_codes(cfg, (BATCH, WIDTH), seed=11)
  depth = np.minimum(np.arange(WIDTH)[None] + np.arange(BATCH)[:, None] * (cfg.num_levels - 2),
                     cfg.num_levels)
  assert set(depth.ravel()) == set(range(cfg.num_levels + 1))
  noise = np.random.default_rng(12).integers(-1, cfg.num_codes, codes.shape)
  garbage = np.where(np.arange(cfg.num_levels) >= depth[..., None], noise, codes)
  log_probs, values, _ = prefix_forward(params, cfg, prefill(params, cfg, history), garbage, depth)
  ref_lp, ref_v = reference(params, cfg, history, codes)
  level = np.minimum(depth, cfg.num_levels - 1)
  expected_lp = np.take_along_axis(ref_lp, level[..., None, None], axis=2)[:, :, 0]
  inner = depth < cfg.num_levels
  chex.assert_trees_all_close(log_probs[inner], expected_lp[inner], **TOL)
  chex.assert_trees_all_close(values, np.take_along_axis(ref_v, depth[..., None], -1)[..., 0],
                              **TOL)


def test_node_forward_chain_equals_forward_train(setup):
  """VED's per-node suffix cache: one token per node on its parent's cache = full recomputation
  of the policy, V and Q at every depth 0..L-1 (slots past a node's depth hold garbage)."""
  cfg, params = setup
  history = random_histories(cfg, BATCH, seed=20)
  codes = random_codes(cfg, (BATCH, WIDTH), seed=21)
  prompt = prefill(params, cfg, history)
  ref_lp, ref_v, ref_q = reference(params, cfg, history, codes, with_q=True)
  shape = (cfg.num_layers, BATCH, WIDTH, cfg.num_levels, cfg.num_heads, cfg.head_dim)
  k = v = jnp.asarray(np.random.default_rng(22).normal(size=shape), jnp.float32)
  for position in range(cfg.num_levels):
    at = np.full((BATCH, WIDTH), position, np.int32)
    if position == 0:
      tokens, levels = np.full_like(at, layout.SEP), np.full_like(at, cfg.num_levels)
    else:
      tokens = layout.code_tokens(cfg, codes[..., position - 1], position - 1)
      levels = at - 1
    log_probs, values, q, new_k, new_v = node_forward(params, cfg, prompt, k, v, at, tokens,
                                                      levels)
    k, v = k.at[:, :, :, position].set(new_k), v.at[:, :, :, position].set(new_v)
    chex.assert_trees_all_close(log_probs, ref_lp[:, :, position], **TOL)
    chex.assert_trees_all_close(values, ref_v[:, :, position], **TOL)
    chex.assert_trees_all_close(q, ref_q[:, :, position], **TOL)


def test_left_padding_invariance(setup):
  """More left padding (a longer T of PAD items) leaves every output unchanged."""
  cfg, params = setup
  history = random_histories(cfg, BATCH, seed=13, num_items=cfg.max_history - 2)
  padded = np.concatenate([np.full((BATCH, 2, cfg.num_levels), -1, np.int32), history], axis=1)
  codes = random_codes(cfg, (BATCH, WIDTH), seed=14)
  chex.assert_trees_all_close(reference(params, cfg, history, codes),
                              reference(params, cfg, padded, codes), **TOL)
  depth = np.full((BATCH, WIDTH), 1)
  chex.assert_trees_all_close(
      prefix_forward(params, cfg, prefill(params, cfg, history), codes, depth),
      prefix_forward(params, cfg, prefill(params, cfg, padded), codes, depth), **TOL)


def test_history_content_matters(tied):
  """Guard for the padding test: changing a real item does change the outputs."""
  cfg, params = tied
  history = random_histories(cfg, BATCH * WIDTH, seed=15)
  changed = history.copy()
  changed[:, -1, 0] = (changed[:, -1, 0] + 1) % cfg.num_codes
  target = random_codes(cfg, (BATCH * WIDTH,), seed=16)
  assert not np.allclose(forward_train(params, cfg, history, target)[0],
                         forward_train(params, cfg, changed, target)[0], atol=1e-3)


def test_dropout_needs_rng_and_is_random(tied):
  cfg, params = tied
  history = random_histories(cfg, BATCH * WIDTH, seed=17)
  target = random_codes(cfg, (BATCH * WIDTH,), seed=18)
  with pytest.raises(ValueError, match='rng'):
    decoder.forward_train(params, cfg, history, target, train=True)
  a = forward_train(params, cfg, history, target, rng=jax.random.PRNGKey(0), train=True)
  b = forward_train(params, cfg, history, target, rng=jax.random.PRNGKey(1), train=True)
  assert not np.allclose(a[0], b[0])


def test_rejects_bad_shapes():
  cfg = CONFIGS['tied_L3']
  params = random_params(cfg)
  too_long = np.zeros((1, cfg.max_history + 1, cfg.num_levels), np.int32)
  with pytest.raises(ValueError, match='history shape'):
    decoder.prefill(params, cfg, too_long)
  with pytest.raises(ValueError, match='level'):
    decoder.decode_step(params, cfg, None, None, None, cfg.num_levels)
  with pytest.raises(ValueError, match='slots'):
    decoder.decode_step(params, cfg, None, attention.init_suffix_cache(cfg, 1, 1), None, 1)


def test_item_hashes_identify_items():
  cfg = CONFIGS['untied_L4']
  history = jnp.array([[[1, 2, 3, 4], [1, 2, 3, 5], [-1, -1, -1, -1], [1, 2, 3, 4]]])
  buckets = np.asarray(layout.item_hashes(cfg, history))   # [2, B, T]
  assert buckets.shape == (2, 1, 4)
  assert (buckets[:, 0, 2] == 0).all()                        # padded item: no embedding
  assert (buckets[:, 0, 0] == buckets[:, 0, 3]).all()         # same SID, same buckets
  assert (buckets[:, 0, 0] != buckets[:, 0, 1]).any()         # another SID differs somewhere
  assert ((buckets >= 0) & (buckets <= cfg.item_hash_buckets)).all()


def test_sid_keys_numpy_equals_jax_and_orders_lexicographically():
  codes = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0], [3, 3, 3], [-1, -1, -1]], np.int32)
  keys = layout.sid_keys(codes, 4)
  np.testing.assert_array_equal(keys, [1, 4, 16, 63, 0])
  np.testing.assert_array_equal(np.asarray(layout.sid_keys(jnp.asarray(codes), 4)), keys)
  big = np.array([[255, 255, 255, 255]])   # K**L == 2**32 still fits uint32
  assert int(layout.sid_keys(big, 256)[0]) == 2 ** 32 - 1


def test_item_feature_table_averages_items_sharing_a_sid():
  item_codes = np.array([[1, 0, 2], [0, 3, 1], [1, 0, 2]])
  features = np.array([[1., 0.], [0., 1.], [3., 2.]])
  keys, table = layout.item_feature_table(item_codes, 4, features)
  assert keys == (13, 18)                       # sorted: [0,3,1] -> 13, [1,0,2] -> 18
  np.testing.assert_allclose(table, [[0., 1.], [2., 1.]])
  with pytest.raises(ValueError, match='do not match 3 items'):
    layout.item_feature_table(item_codes, 4, features[:2])


def test_item_features_enter_only_through_listed_history_items():
  """A feature row changes the output iff a history item has that SID; PAD / unlisted SIDs add 0."""
  cfg = CONFIGS['features_L3']
  params = random_params(cfg)
  history = np.full((1, cfg.max_history, 3), -1, np.int32)
  history[0, -2:] = [[0, 0, 2], [0, 0, 3]]      # keys 2 (listed, row 1) and 3 (not listed)
  target = np.zeros((1, 3), np.int32)
  base, _, _ = forward_train(params, cfg, history, target)
  for row, changes in ((1, True), (0, False), (5, False)):
    table = params['item_text'].at[row].add(1.0)
    changed, _, _ = forward_train(dict(params, item_text=table), cfg, history, target)
    assert (not np.allclose(base, changed, atol=1e-6)) == changes, row
  # Frozen: no gradient reaches the table.
  grad = jax.grad(lambda p: forward_train(p, cfg, history, target)[0].sum())(params)
  assert float(jnp.abs(grad['item_text']).max()) == 0.0
  assert float(jnp.abs(grad['item_text_proj']['kernel']).max()) > 0.0


def test_init_params_fills_item_features_and_checks_shape():
  cfg = CONFIGS['features_L3']
  table = np.random.default_rng(0).standard_normal((32, 5)).astype(np.float32)
  params = decoder.init_params(cfg, jax.random.key(0), table)
  np.testing.assert_array_equal(params['item_text'], table)
  with pytest.raises(ValueError, match='expected'):
    decoder.init_params(cfg, jax.random.key(0), table[:5])
  with pytest.raises(ValueError, match='set together'):
    decoder.DecoderConfig(item_feature_keys=(1, 2))
