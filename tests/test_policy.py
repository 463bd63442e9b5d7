"""Tests for vstar_jax.model.policy: candidate scoring equals teacher forcing."""

import jax
import numpy as np

import decoder_fixture
from vstar_jax.data import synthetic
from vstar_jax.model import decoder
from vstar_jax.model import policy

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
  logp, values = jax.jit(lambda p, b: policy.candidate_log_probs(p, b, cfg=CFG))(
      params, {'history': history, 'cand': cand, 'valid': valid})
  flat = np.maximum(cand, 0).reshape(32, 3)
  ref_lp, ref_v = jax.jit(decoder.forward_train, static_argnums=1)(
      params, CFG, np.repeat(history, 8, axis=0), flat)
  ref_lp = np.take_along_axis(np.asarray(ref_lp), flat[..., None], -1)[..., 0].reshape(4, 8, 3)
  ref_v = np.asarray(ref_v).reshape(4, 8, 4)
  np.testing.assert_allclose(logp, np.where(valid[..., None], ref_lp, 0), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(values, np.where(valid[..., None], ref_v, 0), rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(logp)[valid] < 0)
