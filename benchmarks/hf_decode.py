r"""The Hugging Face backbone's speed: beam-50 decode users/s and SFT tokens/s, beside transformers.

A Qwen2.5-0.5B-shaped model (its published sizes: 24 layers, hidden 896, 14 query / 2 key-value
heads, MLP 4864, vocabulary 151,936, tied embeddings, q/k/v biases) with random weights (speed
does not depend on them) is written once as a checkpoint folder with the tiny test tokenizer
that holds Industrial's SID tokens (tests/fixtures/hf/qwen2_sid), so both sides read the same
weights and prompts (MiniOneRec's evaluation prompts of the first Industrial test rows). Times,
after a compiling / warm-up call:
  * vstar_jax: constrained beam search + MiniOneRec's tail ranking (decode.hf_beam), jitted;
  * transformers: `generate` with MiniOneRec's settings and mask-only processor
    (benchmarks/hf_transformers_beam.py), run by --torch_python in a subprocess;
  * vstar_jax SFT: one jitted step of MiniOneRec's SFT loss on training prompts.
Both decoders should return the same ranked SIDs up to float ties: `same_ranking` (every list
equal), and where they part, `ranking_agreement`'s fields (users with the same list / top-1 /
set, first differing rank, our score gap there against the largest score difference between the
two implementations; tests/test_hf_beam.py allows swaps within 2e-4 on the tiny model).

  python benchmarks/hf_decode.py --users=8 --torch_python=/path/with/torch/bin/python
prints one JSON object on its last line; `--size=tiny` runs the test checkpoint instead.
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import subprocess
import tempfile
import time

from absl import app, flags, logging
import jax
import numpy as np

from vstar_jax import default_config
from vstar_jax import parallel
from vstar_jax.data import amazon
from vstar_jax.data import sid_strings
from vstar_jax.decode import search
from vstar_jax.model import backbone
from vstar_jax.model import causal_lm
from vstar_jax.model import hf_checkpoint
from vstar_jax.model import sid_tokens
from vstar_jax.sid import trie as trie_lib
from vstar_jax.train import sft

REPO = pathlib.Path(__file__).resolve().parents[1]
TOKENIZER = REPO / 'tests' / 'fixtures' / 'hf' / 'qwen2_sid'
QWEN25_05B = causal_lm.LmConfig(
    model_type='qwen2', vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14,
    num_kv_heads=2, head_dim=64, intermediate_size=4864, rope_theta=1e6, rms_norm_eps=1e-6,
    attention_bias=True, tie_word_embeddings=True, max_position_embeddings=32768)

_SIZE = flags.DEFINE_enum('size', 'qwen2.5-0.5b', ['qwen2.5-0.5b', 'tiny'], 'Model shape.')
_CHECKPOINT = flags.DEFINE_string('checkpoint', '', 'Where the random checkpoint is written '
                                  '(reused when present); default under the temp folder.')
_DATA_DIR = flags.DEFINE_string('data_dir', '', 'Amazon data folder (default $VSTAR_DATA_DIR).')
_USERS = flags.DEFINE_integer('users', 8, 'Industrial test users decoded.')
_BEAMS = flags.DEFINE_integer('beams', 50, 'Beam width (MiniOneRec: 50).')
_BATCH = flags.DEFINE_integer('batch_size', 8, 'Users per decode call, both sides.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_SFT_BATCH = flags.DEFINE_integer('sft_batch', 8, 'SFT rows per step (0: skip SFT).')
_SFT_STEPS = flags.DEFINE_integer('sft_steps', 3, 'Timed SFT steps.')
_TORCH_PYTHON = flags.DEFINE_string('torch_python', '', 'A Python with torch + transformers for '
                                    'the reference side ("" : skip it).')


def checkpoint_dir() -> pathlib.Path:
  """A checkpoint folder of the chosen shape with random weights and the SID tokenizer."""
  if _SIZE.value == 'tiny':
    return TOKENIZER
  path = pathlib.Path(_CHECKPOINT.value or pathlib.Path(tempfile.gettempdir()) / 'vstar_qwen2.5-0.5b_random')
  if not (path / hf_checkpoint.WEIGHTS_FILE).is_file():
    logging.info('writing a random %s checkpoint to %s', _SIZE.value, path)
    params = jax.tree.map(np.asarray, causal_lm.init_params(QWEN25_05B, jax.random.key(0)))
    hf_checkpoint.export(params, QWEN25_05B, sid_tokens.load_tokenizer(TOKENIZER), path)
  return path


def peak_rss_mib() -> float:
  """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited over exec)."""
  for line in pathlib.Path('/proc/self/status').read_text().splitlines():
    if line.startswith('VmHWM:'):
      return int(line.split()[1]) / 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv):
  del argv
  path = checkpoint_dir()
  dataset = amazon.load_dataset('industrial', _DATA_DIR.value or None)
  config = default_config.base_config()
  config.model.backbone, config.model.hf_path, config.model.dtype = 'hf', str(path), _DTYPE.value
  cfg = backbone.model_config(config, dataset)
  params = parallel.replicate(backbone.pretrained_params(cfg, dataset.item_codes, jax.random.key(0)),
                              parallel.make_mesh())
  trie = trie_lib.build_trie(dataset.item_codes, dataset.num_codes)
  prompts = backbone.inputs(cfg, dataset, 'test', 'eval')[:_USERS.value]
  batch = _BATCH.value
  search.beam_search_split(params, cfg, trie, prompts[:batch], _BEAMS.value, batch)  # compile
  start = time.perf_counter()
  codes, scores = search.beam_search_split(params, cfg, trie, prompts, _BEAMS.value, batch)
  wall = time.perf_counter() - start
  ours = [[sid_strings.format_sid(c) if c[0] >= 0 else '' for c in row] for row in codes.tolist()]
  result = {'model': _SIZE.value, 'checkpoint': str(path), 'dtype': _DTYPE.value,
            'beams': _BEAMS.value, 'users': len(prompts), 'batch': batch,
            'prompt_tokens': int(prompts.shape[1]), 'vocab_size': cfg.lm.vocab_size,
            'jax_users_per_s': len(prompts) / wall, 'jax_wall_s': wall,
            'jax_peak_rss_mib': peak_rss_mib(), 'device': jax.devices()[0].platform,
            'load_average': os.getloadavg()}
  logging.info('vstar_jax: %.3f users/s', result['jax_users_per_s'])
  if _SFT_BATCH.value:
    result.update(sft_speed(cfg, params, dataset))
  if _TORCH_PYTHON.value:
    theirs = transformers_side(path, prompts, dataset)
    result.update({'transformers_users_per_s': theirs['users_per_s'],
                   'transformers_wall_s': theirs['wall_s'],
                   'transformers_peak_rss_mib': theirs['peak_rss_mib'],
                   'transformers_threads': theirs['threads'],
                   'jax_over_transformers': result['jax_users_per_s'] / theirs['users_per_s'],
                   'same_ranking': ours == theirs['predict'],
                   **ranking_agreement(ours, np.asarray(scores).tolist(), theirs['predict'],
                                       theirs['scores'])})
  print(json.dumps(result))


def ranking_agreement(ours: list[list[str]], our_scores: list[list[float]],
                      theirs: list[list[str]], their_scores: list[list[float]]) -> dict:
  """Where two ranked SID lists per user part: users with the same list / top-1 / set, the first
  differing rank per user, our score gap between the two SIDs placed there (a near-tie if it is
  below the two implementations' score difference), and the largest score difference over the
  SIDs both lists hold."""
  first, gaps, diffs = [], [], [0.0]
  for user, (mine, other) in enumerate(zip(ours, theirs)):
    score = dict(zip(mine, our_scores[user]))
    diffs += [abs(score[sid] - s) for sid, s in zip(other, their_scores[user]) if sid in score]
    rank = next((r for r, (a, b) in enumerate(zip(mine, other)) if a != b), None)
    first.append(rank)
    if rank is not None and other[rank] in score:
      gaps.append(abs(score[mine[rank]] - score[other[rank]]))
  return {'users_same_ranking': sum(a == b for a, b in zip(ours, theirs)),
          'users_same_top1': sum(a[:1] == b[:1] for a, b in zip(ours, theirs)),
          'users_same_set': sum(set(a) == set(b) for a, b in zip(ours, theirs)),
          'first_difference_rank': first, 'score_gap_at_first_difference': gaps,
          'max_shared_score_diff': max(diffs)}


def sft_speed(cfg, params, dataset) -> dict:
  """Tokens/s of the jitted SFT step (MiniOneRec's loss on training prompts + responses)."""
  config = default_config.base_config()
  history, target = backbone.training_rows(cfg, dataset, ('train',), config.sft.tasks)
  size = _SFT_BATCH.value
  plan = sft.Schedule(len(history), size, len(history) // size, 1000)
  optimizer = sft.make_optimizer(config.sft, plan)
  mesh = parallel.make_mesh()
  keys = jax.random.split(jax.random.key(0))
  state = parallel.replicate(sft.initial_state(cfg, optimizer, keys[0], keys[1], 0.0,
                                               init_params=params), mesh)
  step = sft.make_train_step(cfg, optimizer, 0.0, mesh=mesh)
  rows = [np.arange(i * size, (i + 1) * size) for i in range(_SFT_STEPS.value + 1)]
  state, metrics = step(state, *parallel.shard_batch((history[rows[0]], target[rows[0]]), mesh))
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for r in rows[1:]:
    state, metrics = step(state, *parallel.shard_batch((history[r], target[r]), mesh))
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / _SFT_STEPS.value
  tokens = size * (history.shape[1] + target.shape[1])
  return {'sft_batch': size, 'sft_step_s': seconds, 'sft_tokens_per_s': tokens / seconds,
          'sft_peak_rss_mib': peak_rss_mib()}


def transformers_side(path: pathlib.Path, prompts: np.ndarray, dataset) -> dict:
  """benchmarks/hf_transformers_beam.py on the same checkpoint and prompts (its last JSON line)."""
  with tempfile.NamedTemporaryFile('w', suffix='.json', delete=False) as f:
    json.dump({'prompts': [[int(t) for t in row if t >= 0] for row in prompts],
               'sids': sorted(set(sid_strings.format_sids(dataset.item_codes)))}, f)
  proc = subprocess.run([_TORCH_PYTHON.value, str(REPO / 'benchmarks' / 'hf_transformers_beam.py'),
                         f'--checkpoint={path}', f'--inputs={f.name}', f'--num_beams={_BEAMS.value}',
                         f'--batch_size={_BATCH.value}', f'--dtype={_DTYPE.value}'],
                        capture_output=True, text=True, check=False)
  os.unlink(f.name)
  if proc.returncode:
    raise RuntimeError(f'the transformers side failed: {proc.stderr[-2000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == '__main__':
  app.run(main)
