"""The tiny Hugging Face checkpoints of tests/fixtures/hf (written by fixtures/make_hf_fixtures.py)."""

import functools
import json
import pathlib
import re

import jax
import numpy as np

from vstar_jax.data import sid_strings
from vstar_jax.model import hf_policy
from vstar_jax.model import sid_tokens

ROOT = pathlib.Path(__file__).resolve().parent / 'fixtures' / 'hf'
QWEN2 = ROOT / 'qwen2_sid'        # Industrial's SID tokens already in its tokenizer
LLAMA = ROOT / 'llama_base'       # no SID tokens; 40 embedding rows beyond its tokenizer
REFERENCES = ROOT / 'references'


# Test programs run once: compiled at LLVM -O0 they compile ~2x faster on CPU (same float semantics).
FAST_COMPILE = {'xla_backend_optimization_level': 0}


def jit(fun, static_argnums=()):
  """jax.jit for the tests' one-shot programs (FAST_COMPILE)."""
  return jax.jit(fun, static_argnums=static_argnums, compiler_options=FAST_COMPILE)


def reference(name: str):
  """A reference file: .npz as a dict of arrays, .json parsed."""
  path = REFERENCES / name
  if path.suffix == '.npz':
    return dict(np.load(path))
  return json.loads(path.read_text())


@functools.lru_cache(maxsize=None)
def industrial_token_codes() -> np.ndarray:
  """[256, 3] codes using exactly the SID tokens the Qwen2 fixture holds (Industrial's 48 + 256 + 256):
  extending a model with them adds the same tokens as Industrial's catalogue, without the data."""
  tok = sid_tokens.load_tokenizer(QWEN2)
  used = [[], [], []]
  for token in tok.tokenizer.get_added_tokens_decoder().values():
    match = re.fullmatch(r'<([abc])_(\d+)>', token.content)
    if match:
      used['abc'.index(match.group(1))].append(int(match.group(2)))
  width = max(len(u) for u in used)
  return np.stack([np.resize(sorted(u), width) for u in used], axis=1).astype(np.int32)


def catalogue(num_items: int = 300, seed: int = 0) -> np.ndarray:
  """[I, 3] distinct random SIDs over the Qwen2 fixture's tokens, a few first-level codes shared."""
  codes = industrial_token_codes()
  rng = np.random.default_rng(seed)
  items = np.stack([rng.choice(np.unique(codes[:, 0])[:12], num_items),
                    rng.choice(codes[:, 1], num_items), rng.choice(codes[:, 2], num_items)], axis=1)
  return np.unique(items, axis=0).astype(np.int32)


@functools.lru_cache(maxsize=None)
def qwen2_policy(dtype: str = 'float32'):
  """(params, HfPolicyConfig, SidTokenizer, item codes) of the Qwen2 fixture on catalogue()."""
  codes = catalogue()
  params, cfg, tok = hf_policy.load(QWEN2, codes, 256, jax.random.key(0), dtype)
  q_out = params['q_head']['out']
  q_out = dict(q_out, kernel=0.3 * jax.random.normal(jax.random.key(1), q_out['kernel'].shape))
  q_head = dict(params['q_head'], out=q_out)  # the Q head's output layer starts at zero
  return dict(params, q_head=q_head), cfg, tok, codes


def prompts(tok, codes: np.ndarray, num_users: int, seed: int = 0) -> np.ndarray:
  """[B, P] left-padded evaluation prompts of random histories (1 to 5 items) from codes."""
  rng = np.random.default_rng(seed)
  histories = [[sid_strings.format_sid(codes[i])
                for i in rng.choice(len(codes), rng.integers(1, 6))] for _ in range(num_users)]
  return sid_tokens.pad_left([sid_tokens.eval_prompt(tok, h) for h in histories])
