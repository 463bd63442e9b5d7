"""Constrained beam search: exact top-k by brute force, validity, distinctness, one compilation."""


import chex
import jax
import numpy as np
import pytest

from vstar_jax.decode import search
import decoder_fixture
from vstar_jax.model import decoder
from vstar_jax.sid import trie as trie_lib

CFG = decoder.DecoderConfig(num_levels=3, num_codes=6, max_history=4, num_layers=2, d_model=32,
                            num_heads=4, d_ff=64, dropout=0.0)
BATCH = 3
BEAMS = 12

forward_train = jax.jit(decoder.forward_train, static_argnums=1)


random_params = decoder_fixture.random_params


def catalogue(num_items, num_first, num_second, seed):
  """[I, L] distinct SIDs with first codes < num_first and second codes < num_second."""
  rng = np.random.default_rng(seed)
  sids = set()
  while len(sids) < num_items:
    sids.add((int(rng.integers(num_first)), int(rng.integers(num_second)),
              int(rng.integers(CFG.num_codes))))
  return np.array(sorted(sids), np.int32)


def histories(seed):
  rng = np.random.default_rng(seed)
  history = rng.integers(0, CFG.num_codes, (BATCH, CFG.max_history, CFG.num_levels))
  history[1, :2] = -1
  history[2, :3] = -1
  return history.astype(np.int32)


def sid_scores(params, history, items):
  """Brute force: sum of teacher-forced log-probs of every SID in items [I, L] -> [B, I]."""
  num_items = items.shape[0]
  targets = np.tile(items, (history.shape[0], 1))
  log_probs, _, _ = forward_train(params, CFG, np.repeat(history, num_items, axis=0), targets)
  picked = np.take_along_axis(np.asarray(log_probs), targets[..., None], axis=-1)
  return picked[..., 0].sum(-1).reshape(history.shape[0], num_items)


def reference_beam_search(params, history, items, num_beams):
  """Textbook beam search in Python over the trie's prefixes, scored by forward_train."""
  results = []
  for b in range(history.shape[0]):
    beams = [((), 0.0)]
    for level in range(CFG.num_levels):
      children = sorted({tuple(s[:level + 1]) for s in items.tolist()
                         if any(tuple(s[:level]) == p for p, _ in beams)})
      padded = np.zeros((len(items), CFG.num_levels), np.int32)  # one shape: one compilation
      padded[:len(children), :level + 1] = children
      log_probs, _, _ = forward_train(params, CFG, np.repeat(history[b:b + 1], len(items), 0),
                                   padded)
      parent_score = dict(beams)
      scored = [(c, parent_score[c[:-1]] + float(log_probs[i, level, c[-1]]))
                for i, c in enumerate(children)]
      beams = sorted(scored, key=lambda x: -x[1])[:num_beams]
    results.append(beams)
  return results


# Few catalogue and beam shapes, so few compilations. In EXHAUSTIVE every depth-1 and
# depth-2 level holds <= BEAMS prefixes (beam search is exact); PRUNED has more.
EXHAUSTIVE = catalogue(30, num_first=3, num_second=4, seed=0)
PRUNED = catalogue(40, num_first=4, num_second=6, seed=2)


@pytest.fixture(scope='module')
def params():
  return random_params(CFG)


def test_exact_top_k_by_brute_force(params):
  """With every depth-1/2 prefix fitting in the beam, beam search is exact top-W."""
  items = EXHAUSTIVE
  trie = trie_lib.build_trie(items, CFG.num_codes)
  num_beams = BEAMS
  assert np.bincount(trie.depth)[1:CFG.num_levels].max() <= num_beams  # nothing is pruned
  history = histories(seed=1)
  codes, scores = search.beam_search(params, CFG, trie, history, num_beams)
  brute = sid_scores(params, history, items)
  order = np.argsort(-brute, axis=1)[:, :num_beams]
  assert np.all(np.diff(np.sort(brute, axis=1), axis=1) > 1e-4)  # no ties: the order is defined
  np.testing.assert_array_equal(np.asarray(codes), items[order])
  np.testing.assert_allclose(scores, np.take_along_axis(brute, order, axis=1), atol=1e-4)


def test_matches_reference_beam_search_when_pruning(params):
  """A narrow beam prunes prefixes exactly as textbook beam search does."""
  items = PRUNED
  trie = trie_lib.build_trie(items, CFG.num_codes)
  num_beams = BEAMS
  assert np.bincount(trie.depth)[2] > num_beams
  history = histories(seed=3)
  codes, scores = search.beam_search(params, CFG, trie, history, num_beams)
  for b, expected in enumerate(reference_beam_search(params, history, items, num_beams)):
    np.testing.assert_array_equal(np.asarray(codes[b]), np.array([c for c, _ in expected]))
    np.testing.assert_allclose(scores[b], [s for _, s in expected], atol=1e-4)


def test_valid_distinct_sorted_and_consistent(params):
  """All returned SIDs are real items, distinct, sorted, and scored by their log-probs."""
  items = PRUNED
  trie = trie_lib.build_trie(items, CFG.num_codes)
  num_beams = BEAMS
  history = histories(seed=5)
  codes, scores = search.beam_search(params, CFG, trie, history, num_beams)
  chex.assert_shape(codes, (BATCH, num_beams, CFG.num_levels))
  chex.assert_shape(scores, (BATCH, num_beams))
  assert bool(trie_lib.is_valid_sid(trie, codes).all())
  for b in range(BATCH):
    assert len({tuple(c) for c in np.asarray(codes[b]).tolist()}) == num_beams
  assert np.all(np.diff(np.asarray(scores), axis=1) <= 0)
  brute = sid_scores(params, history, items)
  index = {tuple(s): i for i, s in enumerate(items.tolist())}
  rows = np.array([[index[tuple(c)] for c in np.asarray(codes[b]).tolist()] for b in range(BATCH)])
  np.testing.assert_allclose(scores, np.take_along_axis(brute, rows, axis=1), atol=1e-4)


def test_fewer_items_than_beams_marks_the_tail(params):
  """Only 5 SIDs exist: they come first, in order; the tail is -inf / -1, never duplicates."""
  items = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 0], [4, 5, 5], [5, 0, 1]], np.int32)
  trie = trie_lib.build_trie(items, CFG.num_codes)
  num_beams = 8
  history = histories(seed=6)
  codes, scores = search.beam_search(params, CFG, trie, history, num_beams)
  brute = sid_scores(params, history, items)
  order = np.argsort(-brute, axis=1)
  np.testing.assert_array_equal(np.asarray(codes[:, :5]), items[order])
  np.testing.assert_allclose(scores[:, :5], np.take_along_axis(brute, order, axis=1), atol=1e-4)
  assert np.all(np.asarray(scores[:, 5:]) == -np.inf)
  assert np.all(np.asarray(codes[:, 5:]) == -1)


def test_left_padding_does_not_change_results(params):
  trie = trie_lib.build_trie(EXHAUSTIVE, CFG.num_codes)
  history = histories(seed=8)[:, 1:]
  padded = np.concatenate([np.full((BATCH, 1, CFG.num_levels), -1, np.int32), history], axis=1)
  short = search.beam_search(params, CFG, trie, history, BEAMS)
  long = search.beam_search(params, CFG, trie, padded, BEAMS)
  np.testing.assert_array_equal(np.asarray(short[0]), np.asarray(long[0]))
  np.testing.assert_allclose(short[1], long[1], atol=1e-4)


def test_compiles_once_per_shape(params, monkeypatch):
  """Equal (B, W) shapes reuse one compilation, whatever the params, trie or history values."""
  traces = []
  prefill = decoder.prefill
  monkeypatch.setattr(decoder, 'prefill', lambda *a: traces.append(1) or prefill(*a))
  trie = trie_lib.build_trie(PRUNED, CFG.num_codes)
  for seed in range(3):
    other_params = random_params(CFG, seed=seed)
    search.beam_search(other_params, CFG, trie, histories(seed)[:2], 7)
  assert len(traces) == 1
  search.beam_search(params, CFG, trie, histories(0), 7)
  assert len(traces) == 2


def test_split_helper_pads_and_keeps_row_order(params):
  trie = trie_lib.build_trie(PRUNED, CFG.num_codes)
  rows = np.concatenate([histories(seed) for seed in range(3)])[:7]
  codes, scores = search.beam_search_split(params, CFG, trie, rows, BEAMS, batch_size=BATCH)
  assert isinstance(codes, np.ndarray) and codes.shape == (7, BEAMS, CFG.num_levels)
  for row in range(7):
    one_codes, one_scores = search.beam_search(params, CFG, trie,
                                             np.repeat(rows[row:row + 1], BATCH, 0), BEAMS)
    np.testing.assert_array_equal(codes[row], np.asarray(one_codes[0]))
    np.testing.assert_allclose(scores[row], one_scores[0], atol=1e-4)


def test_rejects_a_trie_of_another_shape(params):
  trie = trie_lib.build_trie(np.array([[0, 1, 2, 3]], np.int32), CFG.num_codes)
  with pytest.raises(ValueError, match='trie has L=4'):
    search.beam_search(params, CFG, trie, histories(0), BEAMS)
